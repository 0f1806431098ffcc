//! `inpaint-worker submit`: publishes one job from the command line (uploading local image and
//! mask files first when given paths), and optionally waits for its result. It declares the
//! jobs topology first (idempotently, with the worker's arguments), so it works whether or not a
//! worker has started.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use futures::StreamExt;
use inpaint_job::{InpaintJob, InpaintResult, JobId};
use inpaint_queue::lapin::BasicProperties;
use inpaint_queue::lapin::options::{BasicAckOptions, QueueDeclareOptions};
use inpaint_queue::lapin::types::FieldTable;
use inpaint_storage::{ObjectRef, PutRequest};

use crate::Settings;

/// What to submit.
#[derive(Clone, Debug, Default)]
pub struct SubmitRequest {
    /// A job file (JSON); None: a minimal job is built from the other fields.
    pub job_file: Option<PathBuf>,
    /// The image: `s3://bucket/key`, or a local file uploaded to `upload_bucket`.
    pub image: Option<String>,
    /// The mask: `s3://bucket/key`, or a local file.
    pub mask: Option<String>,
    /// The prompt, replacing the job file's.
    pub prompt: Option<String>,
    /// Where local files are uploaded; default: the first readable bucket.
    pub upload_bucket: Option<String>,
    /// The output bucket when the job file names none; default: the first writable bucket.
    pub output_bucket: Option<String>,
    /// Wait this long for the result (None: do not wait).
    pub wait: Option<Duration>,
}

fn content_type(path: &Path) -> &'static str {
    match path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("webp") => "image/webp",
        _ => "image/png",
    }
}

/// Publishes the job; returns its id and, when asked to wait, the result.
pub async fn submit(
    settings: &Settings,
    request: &SubmitRequest,
) -> anyhow::Result<(JobId, Option<InpaintResult>)> {
    let mut job: serde_json::Value = match &request.job_file {
        Some(path) => serde_json::from_slice(
            &std::fs::read(path).with_context(|| format!("reading {}", path.display()))?,
        )
        .with_context(|| format!("{} is not JSON", path.display()))?,
        None => serde_json::json!({"schema_version": 1, "prompt": ""}),
    };
    let object = job
        .as_object_mut()
        .context("the job must be a JSON object")?;
    let job_id = match object.get("job_id").and_then(|v| v.as_str()) {
        Some(id) => id.parse::<JobId>().context("job_id is not a UUID")?,
        None => {
            let id = JobId::new_random();
            object.insert("job_id".into(), id.to_string().into());
            id
        }
    };
    if let Some(prompt) = &request.prompt {
        object.insert("prompt".into(), prompt.clone().into());
    }
    if !object.contains_key("output") {
        let bucket = request
            .output_bucket
            .clone()
            .or_else(|| settings.allow.write_buckets.first().cloned())
            .context("no output bucket: pass --output-bucket")?;
        object.insert("output".into(), serde_json::json!({ "bucket": bucket }));
    }
    let storage = settings.storage.build()?;
    for (field, given) in [("image", &request.image), ("mask", &request.mask)] {
        let Some(given) = given else { continue };
        let reference = if given.starts_with("s3://") {
            given.clone()
        } else {
            let path = Path::new(given);
            let bytes =
                std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            let bucket = request
                .upload_bucket
                .clone()
                .or_else(|| settings.allow.read_buckets.first().cloned())
                .context("no upload bucket: pass --upload-bucket")?;
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or(field);
            let object = ObjectRef::new(bucket, format!("uploads/{job_id}/{field}-{name}"))?;
            let put = PutRequest {
                content_type: Some(content_type(path).into()),
                metadata: vec![],
            };
            storage.put(&object, Bytes::from(bytes), &put).await?;
            tracing::info!(%object, "uploaded {field}");
            object.to_string()
        };
        object.insert(field.into(), reference.into());
    }
    let body = serde_json::to_vec(&job)?;
    InpaintJob::from_json(&body).context("the job is not valid")?;

    let broker = settings.broker.connect().await?;
    let publisher = broker.publisher().await?;
    // A producer must not depend on a worker having started first: declare the jobs topology
    // exactly as the worker does (same names and arguments, so it is a no-op when it exists),
    // else the publish is unroutable (NO_ROUTE) on a broker no worker has touched yet.
    crate::topology::declare(
        publisher.channel(),
        &settings.topology,
        settings.retry.attempt_cap(),
    )
    .await
    .with_context(|| {
        format!(
            "declaring the jobs topology (queue {:?}) before publishing; a PRECONDITION_FAILED \
             here means the queue exists with other arguments than [topology] and [retry] say",
            settings.topology.jobs_queue
        )
    })?;
    // Both timestamps, so the worker's queue-wait metric has millisecond resolution.
    let now = chrono::Utc::now();
    let mut headers = FieldTable::default();
    headers.insert(
        crate::topology::TIMESTAMP_MS_HEADER.into(),
        inpaint_queue::lapin::types::AMQPValue::LongLongInt(now.timestamp_millis()),
    );
    let mut properties = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_message_id(job_id.to_string().into())
        .with_timestamp(u64::try_from(now.timestamp()).unwrap_or(0))
        .with_headers(headers);
    let mut consumer = None;
    if request.wait.is_some() {
        let queue = publisher
            .channel()
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        let name = queue.name().to_string();
        consumer = Some(broker.consume(&name, "submit", 8).await?);
        properties = properties
            .with_reply_to(name.into())
            .with_correlation_id(job_id.to_string().into());
    }
    publisher
        .publish("", &settings.topology.jobs_queue, &body, properties)
        .await?;
    tracing::info!(%job_id, queue = %settings.topology.jobs_queue, "job published");
    let (Some(mut consumer), Some(wait)) = (consumer, request.wait) else {
        let _ = broker.close().await;
        return Ok((job_id, None));
    };
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let delivery = tokio::time::timeout_at(deadline, consumer.next())
            .await
            .context("no result before the wait ran out")?
            .context("the reply consumer ended")??;
        delivery.acker.ack(BasicAckOptions::default()).await?;
        // Progress events share the reply queue; the result is the message with a status.
        if let Ok(result) = InpaintResult::from_json(&delivery.data) {
            let _ = broker.close().await;
            return Ok((job_id, Some(result)));
        }
        if deadline <= tokio::time::Instant::now() {
            bail!("no result before the wait ran out");
        }
    }
}
