//! What the end-to-end worker tests share: a [`World`] (one test's own topology, a client
//! connection, the object store) and in-process [`Worker`]s with the pass-through engine.
#![allow(dead_code, reason = "each test binary uses a different part of it")]

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use inpaint_e2e::{START_SERVICES, broker_config, bucket, s3_config};
use inpaint_job::{InpaintResult, JobId};
use inpaint_queue::lapin::options::{BasicAckOptions, QueueDeclareOptions};
use inpaint_queue::lapin::types::FieldTable;
use inpaint_queue::lapin::{BasicProperties, Consumer};
use inpaint_queue::{Broker, Publisher};
use inpaint_storage::{ObjectRef, PutRequest, StorageConfig};
use inpaint_worker::inference::{InferenceThread, PassThrough};
use inpaint_worker::metrics::Metrics;
use inpaint_worker::settings::{
    AllowConfig, ChainConfig, EMBEDDED_TINY, EngineBackend, EngineConfig, HttpConfig, RetryConfig,
};
use inpaint_worker::store::ObjectStorage;
use inpaint_worker::topology::{self, TopologyConfig};
use inpaint_worker::{Parts, Settings, WorkerError};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const WAIT: Duration = Duration::from_secs(60);

/// One test's world: its topology, a connection for the test's own publishing and consuming,
/// and the object store.
pub struct World {
    pub settings: Settings,
    pub broker: Broker,
    pub publisher: Publisher,
    pub results: Consumer,
    pub storage: Arc<inpaint_storage::Storage>,
    pub prefix: String,
    /// The bucket inputs and outputs go to.
    pub bucket: String,
}

pub fn base_settings(prefix: &str, storage: StorageConfig, bucket: String) -> Settings {
    Settings {
        broker: broker_config(),
        topology: TopologyConfig {
            queue_expires_ms: 300_000,
            ..TopologyConfig::with_prefix(prefix)
        },
        storage,
        allow: AllowConfig {
            read_buckets: vec![bucket.clone()],
            write_buckets: vec![bucket],
            ..AllowConfig::default()
        },
        chain: ChainConfig {
            stages: Vec::new(),
            allow_unsafe_chain: true,
        },
        retry: RetryConfig {
            max_attempts: 3,
            // Storage outages bounded by attempts too, as the tests past max_attempts expect.
            max_outage_attempts: 3,
            base_delay_ms: 200,
            max_delay_ms: 1_000,
            ..RetryConfig::default()
        },
        http: HttpConfig {
            bind: String::new(),
        },
        // engine.model has no default; tests that switch to the real engine run the tiny model.
        engine: EngineConfig {
            model: EMBEDDED_TINY.into(),
            ..EngineConfig::default()
        },
        ..Settings::default()
    }
}

impl World {
    pub async fn new() -> Self {
        Self::with(|_| {}).await
    }

    pub async fn with(adjust: impl FnOnce(&mut Settings)) -> Self {
        Self::with_store(s3_config(), bucket(), adjust).await
    }

    /// A world whose objects live in `storage` (another S3 endpoint), bucket `bucket`.
    pub async fn with_store(
        storage: StorageConfig,
        bucket: String,
        adjust: impl FnOnce(&mut Settings),
    ) -> Self {
        let prefix = format!("e2e-{}", uuid::Uuid::new_v4().simple());
        let mut settings = base_settings(&prefix, storage.clone(), bucket.clone());
        settings.engine.backend = EngineBackend::PassThrough;
        adjust(&mut settings);
        let broker = match settings.broker.connect().await {
            Ok(b) => b,
            Err(e) => panic!("RabbitMQ unreachable ({e}); {START_SERVICES}"),
        };
        let channel = broker.channel().await.expect("channel");
        topology::declare(&channel, &settings.topology, settings.retry.max_attempts)
            .await
            .expect("declare topology");
        let results = broker
            .consume(&settings.topology.results_queue, "e2e-results", 100)
            .await
            .expect("consume results");
        let publisher = broker.publisher().await.expect("publisher");
        let storage = Arc::new(storage.build().expect("storage"));
        Self {
            settings,
            broker,
            publisher,
            results,
            storage,
            prefix,
            bucket,
        }
    }

    pub fn object(&self, name: &str) -> ObjectRef {
        ObjectRef::new(self.bucket.clone(), format!("{}/{name}", self.prefix)).expect("ref")
    }

    pub async fn put(&self, name: &str, bytes: Vec<u8>) -> ObjectRef {
        let object = self.object(name);
        let request = PutRequest {
            content_type: Some("image/png".into()),
            metadata: vec![],
        };
        self.storage
            .put(&object, Bytes::from(bytes), &request)
            .await
            .unwrap_or_else(|e| panic!("Garage unreachable ({e}); {START_SERVICES}"));
        object
    }

    /// Uploads a 96×64 image and its mask; returns their references.
    pub async fn inputs(&self) -> (ObjectRef, ObjectRef) {
        let image = image::RgbImage::from_fn(96, 64, |x, y| {
            image::Rgb([(x * 2) as u8, (y * 3) as u8, 90])
        });
        let mask = image::RgbImage::from_fn(96, 64, |x, _| {
            if x > 48 {
                image::Rgb([255, 255, 255])
            } else {
                image::Rgb([0, 0, 0])
            }
        });
        (
            self.put("in/image.png", png(&image)).await,
            self.put("in/mask.png", png(&mask)).await,
        )
    }

    pub fn job(&self, image: &ObjectRef, mask: &ObjectRef) -> serde_json::Value {
        serde_json::json!({
            "schema_version": 1,
            "job_id": JobId::new_random().to_string(),
            "image": image.to_string(),
            "mask": mask.to_string(),
            "prompt": "a red bicycle",
            "params": {"num_inference_steps": 2},
            "output": {"bucket": self.bucket, "prefix": format!("{}/out", self.prefix)},
        })
    }

    pub async fn publish_bytes(&self, body: &[u8], properties: BasicProperties) {
        self.publisher
            .publish(
                "",
                &self.settings.topology.jobs_queue,
                body,
                properties.with_delivery_mode(2),
            )
            .await
            .expect("publish job");
    }

    pub async fn publish(&self, job: &serde_json::Value) {
        self.publish_bytes(
            &serde_json::to_vec(job).expect("json"),
            BasicProperties::default(),
        )
        .await;
    }

    /// An exclusive, server-named queue for progress events and replies, and its consumer.
    pub async fn reply_queue(&self) -> (String, Consumer) {
        let channel = self.broker.channel().await.expect("channel");
        let reply = channel
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("reply queue");
        let name = reply.name().to_string();
        let consumer = self
            .broker
            .consume(&name, "e2e-replies", 100)
            .await
            .expect("consume replies");
        (name, consumer)
    }

    pub async fn next_result(&mut self) -> InpaintResult {
        self.next_result_within(WAIT).await
    }

    pub async fn next_result_within(&mut self, wait: Duration) -> InpaintResult {
        let delivery = tokio::time::timeout(wait, self.results.next())
            .await
            .expect("a result in time")
            .expect("results consumer open")
            .expect("delivery");
        delivery
            .acker
            .ack(BasicAckOptions::default())
            .await
            .expect("ack result");
        InpaintResult::from_json(&delivery.data).expect("a result message")
    }

    /// Ready messages in a queue (passive declare).
    pub async fn count(&self, queue: &str) -> u32 {
        let channel = self.broker.channel().await.expect("channel");
        channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("queue exists")
            .message_count()
    }

    pub async fn wait_for_count(&self, queue: &str, expected: u32) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let n = self.count(queue).await;
            if n == expected {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{queue} holds {n}, expected {expected}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn start(&self, engine: PassThrough) -> Worker {
        self.start_with(
            engine,
            Arc::clone(&self.storage) as Arc<dyn ObjectStorage>,
            self.settings.clone(),
        )
        .await
    }

    pub async fn start_with(
        &self,
        engine: PassThrough,
        storage: Arc<dyn ObjectStorage>,
        settings: Settings,
    ) -> Worker {
        let calls = Arc::clone(&engine.calls);
        let inference = InferenceThread::spawn(move || Ok(Box::new(engine) as Box<_>))
            .await
            .expect("engine");
        let parts = Parts {
            storage,
            inference,
            chain: Arc::new(inpaint_stages::build_chain(&settings.chain.stages).expect("chain")),
            metrics: Arc::new(Metrics::default()),
        };
        Worker::spawn(settings, parts, calls)
    }
}

pub struct Worker {
    pub stop: Option<oneshot::Sender<()>>,
    pub task: JoinHandle<Result<(), WorkerError>>,
    pub calls: Arc<AtomicUsize>,
    pub metrics: Arc<Metrics>,
}

impl Worker {
    pub fn spawn(settings: Settings, parts: Parts, calls: Arc<AtomicUsize>) -> Self {
        let (stop, stopped) = oneshot::channel::<()>();
        let metrics = Arc::clone(&parts.metrics);
        let task = tokio::spawn(inpaint_worker::run_with(settings, parts, async {
            let _ = stopped.await;
        }));
        Self {
            stop: Some(stop),
            task,
            calls,
            metrics,
        }
    }

    /// Waits until the engine has been called: a job is in inference.
    pub async fn wait_until_inference_started(&self) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while self.calls.load(std::sync::atomic::Ordering::SeqCst) == 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the job never started"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(30), &mut self.task)
            .await
            .expect("worker stops within the grace period")
            .expect("worker task")
            .expect("clean shutdown");
    }
}

pub fn png(image: &image::RgbImage) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    image
        .write_to(&mut out, image::ImageFormat::Png)
        .expect("png");
    out.into_inner()
}

pub fn job_id(job: &serde_json::Value) -> JobId {
    job["job_id"].as_str().expect("id").parse().expect("uuid")
}

pub async fn assert_outputs_exist(world: &World, result: &InpaintResult) {
    for output in &result.outputs {
        let stored = world
            .storage
            .get(&output.uri, None)
            .await
            .expect("output exists");
        assert_eq!(stored.content_type.as_deref(), Some("image/png"));
        let sha = inpaint_worker::inference::hex(&sha2_digest(&stored.bytes));
        assert_eq!(sha, output.sha256, "sha256 of {}", output.uri);
    }
}

pub fn sha2_digest(bytes: &[u8]) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).to_vec()
}
