// Command producer submits one inpainting job to inpaint-worker and waits for its result
// (Go: amqp091-go and minio-go, both from Debian's packages).
//
//	go run . -image image.png -mask mask.png -prompt "a blue hot-air balloon"
//
// Environment: AMQP_URL, S3_ENDPOINT, S3_REGION, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
// BUCKET, IMAGE, MASK, STEPS. Exit status 0 when the job succeeded and its outputs match their sha256.
package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
	amqp "github.com/rabbitmq/amqp091-go"
)

// jobsQueue is the worker's [topology] jobs_queue; the workers declare it.
const jobsQueue = "inpaint.jobs"

// Result is the part of an InpaintResult (schemas/inpaint-result.v1.schema.json) read here;
// unknown fields are ignored, as the contract asks.
type Result struct {
	JobID   string `json:"job_id"`
	Status  string `json:"status"`
	Attempt int    `json:"attempt"`
	Outputs []struct {
		URI    string `json:"uri"`
		Index  int    `json:"index"`
		SHA256 string `json:"sha256"`
	} `json:"outputs"`
	Error *struct {
		Code      string `json:"code"`
		Message   string `json:"message"`
		Retryable bool   `json:"retryable"`
	} `json:"error"`
	Block *struct {
		Stage    string `json:"stage"`
		Category string `json:"category"`
		Reason   string `json:"reason"`
	} `json:"block"`
}

func env(name, fallback string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return fallback
}

func main() {
	log.SetPrefix("[producer-go] ")
	log.SetFlags(0)
	image := flag.String("image", env("IMAGE", "ops/samples/image.png"), "input image")
	mask := flag.String("mask", env("MASK", "ops/samples/mask.png"), "mask (white = repaint)")
	prompt := flag.String("prompt", "a blue hot-air balloon over a hill", "prompt")
	bucket := flag.String("bucket", env("BUCKET", "inpaint"), "bucket for inputs and outputs")
	steps := flag.Int("steps", 4, "denoising steps (env STEPS)")
	timeout := flag.Duration("timeout", 10*time.Minute, "how long to wait for the result")
	flag.Parse()
	if v, err := strconv.Atoi(os.Getenv("STEPS")); err == nil {
		*steps = v
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	if err := run(ctx, *image, *mask, *prompt, *bucket, *steps); err != nil {
		log.Fatal(err)
	}
}

func s3Client() (*minio.Client, error) {
	endpoint, err := url.Parse(env("S3_ENDPOINT", "http://127.0.0.1:3900"))
	if err != nil {
		return nil, err
	}
	return minio.New(endpoint.Host, &minio.Options{
		Creds:        credentials.NewStaticV4(os.Getenv("AWS_ACCESS_KEY_ID"), os.Getenv("AWS_SECRET_ACCESS_KEY"), ""),
		Secure:       endpoint.Scheme == "https",
		Region:       env("S3_REGION", "garage"),
		BucketLookup: minio.BucketLookupPath,
	})
}

func upload(ctx context.Context, s3 *minio.Client, bucket, key, file string) error {
	data, err := os.ReadFile(file)
	if err != nil {
		return err
	}
	_, err = s3.PutObject(ctx, bucket, key, bytes.NewReader(data), int64(len(data)),
		minio.PutObjectOptions{ContentType: "image/png"})
	return err
}

// waitForJobsQueue waits until a worker has declared the jobs queue (a failed passive declare
// closes the channel, so each try opens a new one).
func waitForJobsQueue(ctx context.Context, conn *amqp.Connection) (*amqp.Channel, error) {
	for {
		ch, err := conn.Channel()
		if err != nil {
			return nil, err
		}
		if _, err = ch.QueueDeclarePassive(jobsQueue, true, false, false, false, nil); err == nil {
			return ch, nil
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("queue %s not declared (is a worker running?): %w", jobsQueue, err)
		case <-time.After(time.Second):
		}
	}
}

func run(ctx context.Context, image, mask, prompt, bucket string, steps int) error {
	s3, err := s3Client()
	if err != nil {
		return err
	}
	jobID := uuid.NewString()
	prefix := "uploads/" + jobID
	if err := upload(ctx, s3, bucket, prefix+"/image.png", image); err != nil {
		return fmt.Errorf("uploading the image: %w", err)
	}
	if err := upload(ctx, s3, bucket, prefix+"/mask.png", mask); err != nil {
		return fmt.Errorf("uploading the mask: %w", err)
	}

	conn, err := amqp.Dial(env("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f"))
	if err != nil {
		return err
	}
	defer conn.Close()
	ch, err := waitForJobsQueue(ctx, conn)
	if err != nil {
		return err
	}
	// Our reply queue: server-named, exclusive, deleted with the connection.
	reply, err := ch.QueueDeclare("", false, true, true, false, nil)
	if err != nil {
		return err
	}
	deliveries, err := ch.Consume(reply.Name, "", false, true, false, false, nil)
	if err != nil {
		return err
	}
	if err := ch.Confirm(false); err != nil {
		return err
	}

	job := map[string]any{
		"schema_version":  1,
		"job_id":          jobID,
		"image":           fmt.Sprintf("s3://%s/%s/image.png", bucket, prefix),
		"mask":            fmt.Sprintf("s3://%s/%s/mask.png", bucket, prefix),
		"prompt":          prompt,
		"negative_prompt": "blurry",
		"params":          map[string]any{"num_inference_steps": steps, "guidance_scale": 7.5, "seed": 42, "scheduler": "dpmpp_2m"},
		"output":          map[string]any{"bucket": bucket, "prefix": "outputs"},
		"metadata":        map[string]string{"producer": "go"},
	}
	body, err := json.Marshal(job)
	if err != nil {
		return err
	}
	confirm, err := ch.PublishWithDeferredConfirmWithContext(ctx, "", jobsQueue, true, false, amqp.Publishing{
		ContentType:   "application/json",
		DeliveryMode:  amqp.Persistent,
		CorrelationId: jobID,
		ReplyTo:       reply.Name,
		Headers:       amqp.Table{"timestamp_in_ms": time.Now().UnixMilli()},
		Body:          body,
	})
	if err != nil {
		return err
	}
	if !confirm.Wait() {
		return errors.New("the broker refused the job (nack)")
	}
	log.Printf("published %s, waiting on %s", jobID, reply.Name)

	for {
		select {
		case <-ctx.Done():
			return fmt.Errorf("no result for %s: %w", jobID, ctx.Err())
		case d, ok := <-deliveries:
			if !ok {
				return errors.New("the broker closed the reply queue")
			}
			_ = d.Ack(false)
			var result Result
			if err := json.Unmarshal(d.Body, &result); err != nil || result.Status == "" || d.CorrelationId != jobID {
				continue // a progress event, or not ours
			}
			return handle(ctx, s3, result)
		}
	}
}

// handle reports a result; for `succeeded` it downloads every output and checks its sha256.
func handle(ctx context.Context, s3 *minio.Client, r Result) error {
	switch r.Status {
	case "succeeded":
		for _, out := range r.Outputs {
			bucket, key, _ := strings.Cut(strings.TrimPrefix(out.URI, "s3://"), "/")
			obj, err := s3.GetObject(ctx, bucket, key, minio.GetObjectOptions{})
			if err != nil {
				return err
			}
			data, err := io.ReadAll(obj)
			if err != nil {
				return fmt.Errorf("downloading %s: %w", out.URI, err)
			}
			sum := sha256.Sum256(data)
			if hex.EncodeToString(sum[:]) != out.SHA256 {
				return fmt.Errorf("%s does not match its sha256", out.URI)
			}
		}
		log.Printf("%s: succeeded, %d output(s) downloaded and verified", r.JobID, len(r.Outputs))
		fmt.Printf("result %s %s attempt %d\n", r.JobID, r.Status, r.Attempt)
		return nil
	case "blocked":
		return fmt.Errorf("%s: blocked by %s (%s): %s", r.JobID, r.Block.Stage, r.Block.Category, r.Block.Reason)
	case "failed":
		// The worker used its own retries already; Retryable says whether publishing again later may help.
		return fmt.Errorf("%s: failed: %s (retryable %t): %s", r.JobID, r.Error.Code, r.Error.Retryable, r.Error.Message)
	case "rejected", "expired", "cancelled":
		return fmt.Errorf("%s: %s: %s: %s", r.JobID, r.Status, r.Error.Code, r.Error.Message)
	default: // an unknown status counts as failed (schemas/README.md)
		return fmt.Errorf("%s: unknown status %q, treated as failed", r.JobID, r.Status)
	}
}
