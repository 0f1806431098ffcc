// Submit one inpainting job to inpaint-worker and wait for its result (Node: amqplib + AWS SDK v3).
//
//   node producer.mjs --image image.png --mask mask.png --prompt "a blue hot-air balloon"
//
// Environment: AMQP_URL, S3_ENDPOINT, S3_REGION, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, BUCKET,
// IMAGE, MASK, STEPS. Exit status 0 when the job succeeded and its outputs match their sha256.
import { createHash, randomUUID } from "node:crypto";
import { readFile } from "node:fs/promises";
import { parseArgs } from "node:util";
import amqp from "amqplib";
import { GetObjectCommand, PutObjectCommand, S3Client } from "@aws-sdk/client-s3";

const JOBS_QUEUE = "inpaint.jobs"; // [topology] jobs_queue; declared by the workers
const log = (...args) => console.error("[producer-node]", ...args);

const { values: opts } = parseArgs({
  options: {
    image: { type: "string", default: process.env.IMAGE ?? "ops/samples/image.png" },
    mask: { type: "string", default: process.env.MASK ?? "ops/samples/mask.png" },
    prompt: { type: "string", default: "a blue hot-air balloon over a hill" },
    bucket: { type: "string", default: process.env.BUCKET ?? "inpaint" },
    steps: { type: "string", default: process.env.STEPS ?? "4" },
    timeout: { type: "string", default: "600" },
  },
});

const s3 = new S3Client({
  endpoint: process.env.S3_ENDPOINT ?? "http://127.0.0.1:3900",
  region: process.env.S3_REGION ?? "garage",
  forcePathStyle: true, // S3-compatible stores such as Garage and MinIO
  requestChecksumCalculation: "WHEN_REQUIRED",
  responseChecksumValidation: "WHEN_REQUIRED",
});

// The workers declare the jobs queue (quorum, delivery limit, dead-lettering): wait for it. A failed
// passive check closes the channel, so each try uses a new one.
async function waitForJobsQueue(connection, deadline) {
  for (;;) {
    const channel = await connection.createChannel();
    channel.on("error", () => {});
    try {
      await channel.checkQueue(JOBS_QUEUE);
      return channel.close();
    } catch (err) {
      if (Date.now() > deadline) throw new Error(`queue ${JOBS_QUEUE} not declared (is a worker running?): ${err.message}`);
      await new Promise((resolve) => setTimeout(resolve, 1000));
    }
  }
}

// Reports a result; for `succeeded` downloads every output and checks its sha256. Returns success.
async function handle(result) {
  const { job_id: jobId, status, error = {}, block = {} } = result;
  switch (status) {
    case "succeeded":
      for (const output of result.outputs) {
        const [bucket, ...key] = output.uri.slice("s3://".length).split("/");
        const object = await s3.send(new GetObjectCommand({ Bucket: bucket, Key: key.join("/") }));
        const body = Buffer.from(await object.Body.transformToByteArray());
        if (createHash("sha256").update(body).digest("hex") !== output.sha256) {
          log(`${output.uri} does not match its sha256`);
          return false;
        }
      }
      log(`${jobId}: succeeded, ${result.outputs.length} output(s) downloaded and verified`);
      return true;
    case "blocked":
      log(`${jobId}: blocked by ${block.stage} (${block.category}): ${block.reason}`);
      return false;
    case "failed": // the worker used its own retries; `retryable`: publishing again later may help
      log(`${jobId}: failed: ${error.code} (retryable: ${error.retryable}): ${error.message}`);
      return false;
    case "rejected":
    case "expired":
    case "cancelled":
      log(`${jobId}: ${status}: ${error.code}: ${error.message}`);
      return false;
    default: // an unknown status counts as failed (schemas/README.md)
      log(`${jobId}: unknown status ${status}, treated as failed`);
      return false;
  }
}

async function main() {
  const deadline = Date.now() + Number(opts.timeout) * 1000;
  const jobId = randomUUID();
  const prefix = `uploads/${jobId}`;
  for (const [name, file] of [["image", opts.image], ["mask", opts.mask]]) {
    await s3.send(new PutObjectCommand({
      Bucket: opts.bucket, Key: `${prefix}/${name}.png`, Body: await readFile(file), ContentType: "image/png",
    }));
  }

  const connection = await amqp.connect(process.env.AMQP_URL ?? "amqp://guest:guest@127.0.0.1:5672/%2f");
  try {
    await waitForJobsQueue(connection, deadline);
    const channel = await connection.createConfirmChannel();
    // Our reply queue: server-named, exclusive, deleted with the connection.
    const { queue: replyTo } = await channel.assertQueue("", { exclusive: true, autoDelete: true });
    const result = new Promise((resolve) => {
      channel.consume(replyTo, (message) => {
        channel.ack(message);
        const body = JSON.parse(message.content.toString());
        // Progress events have no status; results carry our job id as correlation id.
        if (body.status && message.properties.correlationId === jobId) resolve(body);
      });
    });

    const job = {
      schema_version: 1,
      job_id: jobId,
      image: `s3://${opts.bucket}/${prefix}/image.png`,
      mask: `s3://${opts.bucket}/${prefix}/mask.png`,
      prompt: opts.prompt,
      negative_prompt: "blurry",
      params: { num_inference_steps: Number(opts.steps), guidance_scale: 7.5, seed: 42, scheduler: "dpmpp_2m" },
      output: { bucket: opts.bucket, prefix: "outputs" },
      metadata: { producer: "node" },
    };
    channel.sendToQueue(JOBS_QUEUE, Buffer.from(JSON.stringify(job)), {
      contentType: "application/json",
      persistent: true,
      correlationId: jobId,
      replyTo,
      mandatory: true,
      headers: { timestamp_in_ms: Date.now() },
    });
    await channel.waitForConfirms(); // rejects if the broker refused the job
    log(`published ${jobId}, waiting on ${replyTo}`);

    const timeout = new Promise((_, reject) =>
      setTimeout(() => reject(new Error(`no result for ${jobId}`)), Math.max(0, deadline - Date.now())).unref());
    const message = await Promise.race([result, timeout]);
    console.log(`result ${jobId} ${message.status} attempt ${message.attempt}`);
    process.exitCode = (await handle(message)) ? 0 : 2;
  } finally {
    await connection.close();
  }
}

main().catch((err) => {
  log(err.message);
  process.exitCode = 1;
});
