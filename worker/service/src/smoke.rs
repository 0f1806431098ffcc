//! `inpaint-worker smoke`: one job-shaped round trip through the broker, the object store and
//! libtorch. It proves the plumbing a deployment needs, not the model: the "inference" is a
//! horizontal flip computed by libtorch.

use std::io::Cursor;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use futures::StreamExt;
use image::{ImageFormat, RgbImage};
use inpaint_engine::{DeviceSpec, image_tensor};
use inpaint_queue::BrokerConfig;
use inpaint_queue::lapin::BasicProperties;
use inpaint_queue::lapin::options::{BasicAckOptions, QueueDeclareOptions};
use inpaint_queue::lapin::types::FieldTable;
use inpaint_storage::{ObjectRef, PutRequest, StorageConfig};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// What the smoke run talks to.
#[derive(Clone, Debug)]
pub struct SmokeSettings {
    /// The broker.
    pub broker: BrokerConfig,
    /// The object store.
    pub storage: StorageConfig,
    /// Bucket for the input and output objects (keys under `smoke/<job id>/`).
    pub bucket: String,
    /// Where the libtorch step runs.
    pub device: DeviceSpec,
}

/// What the smoke run did.
#[derive(Clone, Debug, Serialize)]
pub struct SmokeReport {
    /// The job id used for the round trip.
    pub job_id: Uuid,
    /// The input object it wrote and read back.
    pub input: String,
    /// The output object it wrote.
    pub output: String,
    /// The device libtorch ran on.
    pub device: String,
    /// Milliseconds from start to acknowledgement.
    pub elapsed_ms: u128,
}

#[derive(Serialize, Deserialize)]
struct SmokeJob {
    job_id: Uuid,
    image: ObjectRef,
    output: ObjectRef,
}

fn png_bytes(image: &RgbImage) -> anyhow::Result<Bytes> {
    let mut out = Cursor::new(Vec::new());
    image.write_to(&mut out, ImageFormat::Png)?;
    Ok(Bytes::from(out.into_inner()))
}

/// Runs the round trip: put an image in the store, publish a job naming it (confirmed), consume
/// the job (manual ack), fetch the image, transform it with libtorch, put the result, and only
/// then acknowledge the delivery.
pub async fn run_smoke(settings: &SmokeSettings) -> anyhow::Result<SmokeReport> {
    let started = Instant::now();
    let device = settings.device.resolve()?;
    let storage = settings.storage.build()?;
    let broker = settings.broker.connect().await?;
    let job_id = Uuid::new_v4();
    let input = ObjectRef::new(&settings.bucket, format!("smoke/{job_id}/input.png"))?;
    let output = ObjectRef::new(&settings.bucket, format!("smoke/{job_id}/output.png"))?;

    let image = RgbImage::from_fn(64, 48, |x, y| {
        image::Rgb([(x * 4) as u8, (y * 5) as u8, 128])
    });
    let png = PutRequest {
        content_type: Some("image/png".into()),
        metadata: vec![],
    };
    storage
        .put(&input, png_bytes(&image)?, &png)
        .await
        .context("writing the input image")?;

    // A server-named, exclusive queue: the smoke run never touches real job queues.
    let publisher = broker.publisher().await?;
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
        .await
        .context("declaring the smoke queue")?;
    let queue_name = queue.name().to_string();
    let job = SmokeJob {
        job_id,
        image: input.clone(),
        output: output.clone(),
    };
    let properties = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_message_id(job_id.to_string().into());
    publisher
        .publish("", &queue_name, &serde_json::to_vec(&job)?, properties)
        .await?;

    let mut consumer = broker.consume(&queue_name, "smoke", 1).await?;
    let delivery = tokio::time::timeout(Duration::from_secs(30), consumer.next())
        .await
        .context("no delivery within 30 s")?
        .context("consumer ended")??;
    let received: SmokeJob = serde_json::from_slice(&delivery.data)?;
    if received.job_id != job_id {
        bail!("received job {} instead of {job_id}", received.job_id);
    }

    let fetched = storage.get(&received.image, Some(10 << 20)).await?;
    let decoded = image::load_from_memory(&fetched.bytes)?.to_rgb8();
    // The "inference": a horizontal flip by libtorch on the resolved device.
    let flipped = tokio::task::spawn_blocking(move || -> anyhow::Result<RgbImage> {
        let tensor = image_tensor::rgb_to_tensor(&decoded, device)?;
        let mut images = image_tensor::tensor_to_rgb(&tensor.f_flip([3])?)?;
        images.pop().context("libtorch returned no image")
    })
    .await??;
    let expected = image::imageops::flip_horizontal(&image);
    if flipped != expected {
        bail!("libtorch flip does not match the CPU flip");
    }
    storage
        .put(&received.output, png_bytes(&flipped)?, &png)
        .await?;
    delivery.acker.ack(BasicAckOptions::default()).await?;
    broker.close().await?;

    Ok(SmokeReport {
        job_id,
        input: input.to_string(),
        output: output.to_string(),
        device: format!("{device:?}"),
        elapsed_ms: started.elapsed().as_millis(),
    })
}
