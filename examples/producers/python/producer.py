#!/usr/bin/env python3
"""Submit inpainting jobs to inpaint-worker and wait for their results (Python: pika + boto3).

One job (the README's main job):
    python producer.py --image image.png --mask mask.png --prompt "a blue hot-air balloon"
A batch, checking that every job gets exactly one terminal result (what CI runs):
    python producer.py --count 30 --steps 20 --settle 10
A job the prompt policy blocks, to see the failure path:
    python producer.py --prompt "nudify this photo" --expect blocked

Environment: AMQP_URL, S3_ENDPOINT, S3_REGION, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, BUCKET,
IMAGE, MASK, STEPS (defaults for the flags). Exit status 0 when every job succeeded with its outputs.
"""
import argparse
import hashlib
import json
import os
import sys
import time
import uuid

import boto3
import pika
from botocore.config import Config

JOBS_QUEUE = "inpaint.jobs"  # [topology] jobs_queue; declared by the workers
TERMINAL = {"succeeded", "failed", "rejected", "blocked", "expired", "cancelled"}


def log(*args):
    print("[producer-python]", *args, file=sys.stderr, flush=True)


def s3_client():
    return boto3.client(
        "s3",
        endpoint_url=os.environ.get("S3_ENDPOINT", "http://127.0.0.1:3900"),
        region_name=os.environ.get("S3_REGION", "garage"),
        # Path-style addressing and checksums only where required: what S3-compatible stores
        # such as Garage and MinIO expect.
        config=Config(
            s3={"addressing_style": "path"},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        ),
    )


def wait_for_jobs_queue(channel, timeout):
    """The workers declare the topology (quorum queue, delivery limit, dead-lettering); wait
    for it rather than declaring it with arguments that could differ from theirs."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            channel.queue_declare(JOBS_QUEUE, passive=True)
            return channel
        except pika.exceptions.ChannelClosedByBroker:
            if time.monotonic() > deadline:
                raise SystemExit(f"queue {JOBS_QUEUE} not declared within {timeout} s: is a worker running?")
            time.sleep(1)
            channel = channel.connection.channel()


def make_job(bucket, image_key, mask_key, prompt, steps, seed):
    return {
        "schema_version": 1,
        "job_id": str(uuid.uuid4()),
        "image": f"s3://{bucket}/{image_key}",
        "mask": f"s3://{bucket}/{mask_key}",
        "prompt": prompt,
        "negative_prompt": "blurry",
        "params": {"num_inference_steps": steps, "guidance_scale": 7.5, "seed": seed, "scheduler": "dpmpp_2m"},
        "output": {"bucket": bucket, "prefix": "outputs", "format": {"type": "png"}},
        "metadata": {"producer": "python"},
    }


def check_result(s3, result, out_dir):
    """Prints the outcome; for `succeeded` downloads every output and checks its sha256."""
    status = result.get("status")
    job_id = result.get("job_id")
    if status == "succeeded":
        for output in result["outputs"]:
            bucket, key = output["uri"][len("s3://"):].split("/", 1)
            body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
            if hashlib.sha256(body).hexdigest() != output["sha256"]:
                log(f"{job_id}: {output['uri']} does not match its sha256")
                return False
            if out_dir:
                path = os.path.join(out_dir, f"{job_id}-{output['index']}.png")
                with open(path, "wb") as f:
                    f.write(body)
        log(f"{job_id}: succeeded, {len(result['outputs'])} output(s) downloaded and verified")
        return True
    error = result.get("error") or {}
    if status == "blocked":
        block = result.get("block") or {}
        log(f"{job_id}: blocked by {block.get('stage')} ({block.get('category')}): {block.get('reason')}")
    elif status == "failed":
        # The worker has used its own retries; `retryable` says whether publishing again later may help.
        log(f"{job_id}: failed: {error.get('code')} (retryable: {error.get('retryable')}): {error.get('message')}")
    elif status in ("rejected", "expired", "cancelled"):
        log(f"{job_id}: {status}: {error.get('code')}: {error.get('message')}")
    else:  # an unknown status is treated as failed (schemas/README.md)
        log(f"{job_id}: unknown status {status!r}, treated as failed")
    return False


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--image", default=os.environ.get("IMAGE", "ops/samples/image.png"))
    p.add_argument("--mask", default=os.environ.get("MASK", "ops/samples/mask.png"))
    p.add_argument("--prompt", default="a blue hot-air balloon over a hill")
    p.add_argument("--bucket", default=os.environ.get("BUCKET", "inpaint"))
    p.add_argument("--steps", type=int, default=int(os.environ.get("STEPS", "4")))
    p.add_argument("--count", type=int, default=1, help="jobs to publish")
    p.add_argument("--timeout", type=float, default=600, help="seconds to wait for all results")
    p.add_argument("--settle", type=float, default=0, help="seconds to keep listening for duplicate results")
    p.add_argument("--out-dir", default=os.environ.get("OUT_DIR", ""))
    p.add_argument("--summary", default="", help="write {job_id: [statuses]} here as JSON")
    p.add_argument("--expect", default="succeeded", help="the status every job should end with (e.g. blocked)")
    args = p.parse_args()

    s3 = s3_client()
    upload = f"uploads/{uuid.uuid4()}"
    with open(args.image, "rb") as f:
        s3.put_object(Bucket=args.bucket, Key=f"{upload}/image.png", Body=f.read(), ContentType="image/png")
    with open(args.mask, "rb") as f:
        s3.put_object(Bucket=args.bucket, Key=f"{upload}/mask.png", Body=f.read(), ContentType="image/png")

    connection = pika.BlockingConnection(pika.URLParameters(os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")))
    channel = wait_for_jobs_queue(connection.channel(), timeout=120)
    # Our own reply queue: server-named, exclusive, gone with the connection.
    reply_to = channel.queue_declare("", exclusive=True, auto_delete=True).method.queue
    channel.confirm_delivery()  # basic_publish raises if the broker does not take the message

    jobs = [make_job(args.bucket, f"{upload}/image.png", f"{upload}/mask.png", args.prompt, args.steps, 42 + i)
            for i in range(args.count)]
    for job in jobs:
        channel.basic_publish(
            exchange="",
            routing_key=JOBS_QUEUE,
            body=json.dumps(job).encode(),
            properties=pika.BasicProperties(
                content_type="application/json",
                delivery_mode=pika.DeliveryMode.Persistent,
                correlation_id=job["job_id"],
                reply_to=reply_to,
                headers={"timestamp_in_ms": int(time.time() * 1000)},
            ),
            mandatory=True,
        )
    log(f"published {len(jobs)} job(s), waiting on {reply_to}")

    pending = {job["job_id"] for job in jobs}
    results = {job["job_id"]: [] for job in jobs}
    ok = True
    deadline = time.monotonic() + args.timeout
    settle_until = None
    for method, props, body in channel.consume(reply_to, inactivity_timeout=1):
        now = time.monotonic()
        if method is not None:
            channel.basic_ack(method.delivery_tag)
            message = json.loads(body)
            job_id = message.get("job_id") or props.correlation_id
            if "status" not in message or job_id not in results:
                continue  # a progress event, or not ours
            results[job_id].append(message["status"])
            if message["status"] not in TERMINAL:
                log(f"{job_id}: unknown status {message['status']!r}")
            ok = (check_result(s3, message, args.out_dir) == (args.expect == "succeeded")) and ok
            ok = ok and message["status"] == args.expect
            pending.discard(job_id)
            print(f"result {len(jobs) - len(pending)}/{len(jobs)} {job_id} {message['status']} attempt {message.get('attempt')}", flush=True)
        if not pending and settle_until is None:
            settle_until = now + args.settle
        if settle_until is not None and now >= settle_until:
            break
        if now > deadline:
            log(f"timed out with {len(pending)} job(s) without a result")
            break
    channel.cancel()
    connection.close()

    duplicates = {j: s for j, s in results.items() if len(s) > 1}
    missing = [j for j, s in results.items() if not s]
    if args.summary:
        with open(args.summary, "w") as f:
            json.dump(results, f, indent=1)
    log(f"{len(jobs)} job(s): {len(jobs) - len(missing)} with a result, {len(missing)} without, {len(duplicates)} with more than one")
    if duplicates:
        log(f"more than one terminal result: {duplicates}")
    return 0 if ok and not missing and not duplicates else 2


if __name__ == "__main__":
    sys.exit(main())
