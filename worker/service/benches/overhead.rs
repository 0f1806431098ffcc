//! Worker overhead benchmark: `cargo bench -p inpaint-worker --bench overhead [-- JOBS]`.
//!
//! Runs the worker in-process with the pass-through engine against the local RabbitMQ and
//! Garage (`ops/dev/services.sh up`; the same `INPAINT_TEST_*` overrides as the end-to-end
//! tests) on 512×512 PNG jobs, and prints what the worker costs around inference: two GETs,
//! two decodes, the encode, the PUT, the manifest, the result publish with its confirm and the
//! ack (publish and ack only in the worker's histograms: they follow the final result). The
//! idempotency check (a manifest GET) runs concurrently with the two input GETs. Three phases, each with a fresh worker on one topology of its own (unique names,
//! deleted at the end, with `x-expires` as a safety net):
//!
//! 1. `serial`: one job at a time (publish, wait for its result). End-to-end latency here is
//!    the whole per-job overhead as a client sees it (pass-through inference is a copy).
//! 2. `backlog`: JOBS jobs published at once, worker at `in_flight = 2`: jobs/s.
//! 3. `overlap`: a pass-through engine that sleeps 200 ms per job stands in for inference; at
//!    `in_flight = 1` and `in_flight = 2`. Ideal is 1 / 0.2 s = 5 jobs/s: the closer
//!    `in_flight = 2` gets, the more of the next job's I/O hides behind the current inference.
//!
//! Stage figures come from the result's `timings_ms` (whole milliseconds, per job) and from the
//! worker's own histograms (`Metrics`, microsecond sums: means). The goal the worker issue sets:
//! ≤ 25 ms overhead per 512×512 job at p50, the overhead being the worker's own work (two GETs,
//! decodes, encode, PUT, publish, ack): the summary's first line, from the result's `total`
//! (message received → result final) minus inference, plus the mean publish and ack. The line
//! after it adds what a client also sees: its own confirmed publish and two broker hops. Default 200 jobs; every wait is bounded, so a run
//! stops by itself.
#![allow(
    clippy::print_stdout,
    reason = "a benchmark with `harness = false`: its report is its output"
)]

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use futures::StreamExt;
use inpaint_job::{InpaintResult, JobId, JobStatus};
use inpaint_queue::lapin::options::{BasicAckOptions, ExchangeDeleteOptions, QueueDeleteOptions};
use inpaint_queue::lapin::{BasicProperties, Consumer};
use inpaint_queue::{Broker, BrokerConfig, Publisher};
use inpaint_storage::{ObjectRef, PutRequest, S3Config, Storage, StorageConfig};
use inpaint_worker::inference::{InferenceThread, PassThrough};
use inpaint_worker::metrics::Metrics;
use inpaint_worker::settings::{AllowConfig, ChainConfig, EngineBackend, HttpConfig, RetryConfig};
use inpaint_worker::store::ObjectStorage;
use inpaint_worker::topology::{self, TopologyConfig};
use inpaint_worker::{Parts, Settings};
use tokio::sync::oneshot;

const DEFAULT_JOBS: usize = 200;
const SIDE: u32 = 512;
/// The stand-in for one GPU inference in the overlap phase.
const INFERENCE: Duration = Duration::from_millis(200);
/// Longest wait for any one result.
const RESULT_WAIT: Duration = Duration::from_secs(30);
/// Longest a phase may take before the bench gives up on it.
const PHASE_LIMIT: Duration = Duration::from_secs(180);
/// Stages in the result's `timings_ms`, in pipeline order.
const STAGES: [&str; 8] = [
    "download",
    "decode",
    "plugins_before",
    "inference",
    "plugins_after",
    "upload",
    "manifest",
    "total",
];

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

/// The development services, as the end-to-end tests find them (`tests/src/lib.rs`).
fn broker_config() -> BrokerConfig {
    BrokerConfig {
        url: env_or(
            "INPAINT_TEST_AMQP_URL",
            "amqp://guest:guest@127.0.0.1:5672/%2f",
        ),
        connection_name: "inpaint-bench-overhead".into(),
    }
}

fn s3_config() -> S3Config {
    S3Config {
        endpoint: Some(env_or("INPAINT_TEST_S3_ENDPOINT", "http://127.0.0.1:3900")),
        region: Some(env_or("INPAINT_TEST_S3_REGION", "garage")),
        path_style: true,
        allow_http: true,
        access_key_id: Some(env_or(
            "INPAINT_TEST_S3_ACCESS_KEY_ID",
            "GK1a2b3c4d5e6f708192a3b4c5",
        )),
        secret_access_key: Some(env_or(
            "INPAINT_TEST_S3_SECRET_ACCESS_KEY",
            "5ecf2a9e0b7d4c3f8a6e1d2c9b0a7f6e5d4c3b2a1f0e9d8c7b6a5f4e3d2c1b0a",
        )),
        ..S3Config::default()
    }
}

fn bucket() -> String {
    env_or("INPAINT_TEST_S3_BUCKET", "inpaint-dev")
}

const START_SERVICES: &str = "start the services with `ops/dev/services.sh up`";

fn settings(prefix: &str, in_flight: usize) -> Settings {
    let bucket = bucket();
    let mut settings = Settings {
        broker: broker_config(),
        topology: TopologyConfig {
            queue_expires_ms: 600_000,
            ..TopologyConfig::with_prefix(prefix)
        },
        storage: StorageConfig::S3(s3_config()),
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
            max_attempts: 2,
            base_delay_ms: 200,
            max_delay_ms: 1_000,
            ..RetryConfig::default()
        },
        http: HttpConfig {
            bind: String::new(),
        },
        ..Settings::default()
    };
    settings.engine.backend = EngineBackend::PassThrough;
    settings.concurrency.in_flight = in_flight;
    settings
}

/// A photo-like 512×512 input: smooth gradients plus grain, so PNG cannot squeeze it to
/// nothing (about the size of a real photograph's PNG).
fn inputs() -> (Vec<u8>, Vec<u8>) {
    let mut state = 0x9E37_79B9_7F4A_7C15_u64;
    let mut noise = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 59) as u8
    };
    let image = image::RgbImage::from_fn(SIDE, SIDE, |x, y| {
        let base = [(x / 2) as u8, (y / 2) as u8, ((x + y) / 4) as u8];
        image::Rgb(base.map(|c| c.wrapping_add(noise())))
    });
    let mask = image::GrayImage::from_fn(SIDE, SIDE, |x, y| {
        let (dx, dy) = (x as i64 - 256, y as i64 - 256);
        image::Luma([if dx * dx + dy * dy < 120 * 120 {
            255
        } else {
            0
        }])
    });
    let png = |img: &dyn Fn(&mut std::io::Cursor<Vec<u8>>) -> image::ImageResult<()>| {
        let mut out = std::io::Cursor::new(Vec::new());
        img(&mut out).map(|()| out.into_inner())
    };
    let image = png(&|out| image.write_to(out, image::ImageFormat::Png)).unwrap_or_default();
    let mask = png(&|out| mask.write_to(out, image::ImageFormat::Png)).unwrap_or_default();
    (image, mask)
}

/// The benchmark's world: one topology, a client connection, the inputs in S3.
struct World {
    prefix: String,
    broker: Broker,
    publisher: Publisher,
    results: Consumer,
    storage: Arc<Storage>,
    image: ObjectRef,
    mask: ObjectRef,
}

impl World {
    async fn new() -> Result<Self> {
        let prefix = format!("bench-{}", uuid::Uuid::new_v4().simple());
        let settings = settings(&prefix, 1);
        let broker = settings
            .broker
            .connect()
            .await
            .with_context(|| format!("RabbitMQ unreachable; {START_SERVICES}"))?;
        let channel = broker.channel().await?;
        topology::declare(&channel, &settings.topology, settings.retry.max_attempts).await?;
        let results = broker
            .consume(&settings.topology.results_queue, "bench-results", 500)
            .await?;
        let publisher = broker.publisher().await?;
        let storage = Arc::new(settings.storage.build()?);
        let (image_png, mask_png) = inputs();
        let put = |name: &str, bytes: Vec<u8>| {
            let storage = Arc::clone(&storage);
            let object = ObjectRef::new(bucket(), format!("{prefix}/in/{name}"));
            async move {
                let object = object?;
                let request = PutRequest {
                    content_type: Some("image/png".into()),
                    metadata: vec![],
                };
                storage
                    .put(&object, Bytes::from(bytes), &request)
                    .await
                    .with_context(|| format!("Garage unreachable; {START_SERVICES}"))?;
                anyhow::Ok(object)
            }
        };
        println!(
            "inputs: 512x512 image PNG {} KiB, mask PNG {} KiB",
            image_png.len() / 1024,
            mask_png.len() / 1024
        );
        let image = put("image.png", image_png).await?;
        let mask = put("mask.png", mask_png).await?;
        Ok(Self {
            prefix,
            broker,
            publisher,
            results,
            storage,
            image,
            mask,
        })
    }

    fn job(&self, id: JobId) -> Vec<u8> {
        let job = serde_json::json!({
            "schema_version": 1,
            "job_id": id.to_string(),
            "image": self.image.to_string(),
            "mask": self.mask.to_string(),
            "prompt": "a red bicycle",
            "params": {"num_inference_steps": 1},
            "output": {"bucket": bucket(), "prefix": format!("{}/out", self.prefix)},
        });
        serde_json::to_vec(&job).unwrap_or_default()
    }

    async fn publish(&self, id: JobId) -> Result<()> {
        let jobs_queue = settings(&self.prefix, 1).topology.jobs_queue;
        self.publisher
            .publish(
                "",
                &jobs_queue,
                &self.job(id),
                BasicProperties::default().with_delivery_mode(2),
            )
            .await?;
        Ok(())
    }

    async fn next_result(&mut self) -> Result<InpaintResult> {
        let delivery = tokio::time::timeout(RESULT_WAIT, self.results.next())
            .await
            .context("no result within 30 s")?
            .context("results consumer closed")??;
        delivery.acker.ack(BasicAckOptions::default()).await?;
        Ok(InpaintResult::from_json(&delivery.data)?)
    }

    /// Starts a worker on this world's topology.
    async fn worker(&self, engine: PassThrough, in_flight: usize) -> Result<Worker> {
        let settings = settings(&self.prefix, in_flight);
        let inference = InferenceThread::spawn(move || Ok(Box::new(engine) as Box<_>)).await?;
        let metrics = Arc::new(Metrics::default());
        let parts = Parts {
            storage: Arc::clone(&self.storage) as Arc<dyn ObjectStorage>,
            inference,
            chain: Arc::new(inpaint_stages::build_chain(&settings.chain.stages)?),
            metrics: Arc::clone(&metrics),
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(inpaint_worker::run_with(settings, parts, async {
            let _ = stopped.await;
        }));
        Ok(Worker {
            stop,
            task,
            metrics,
        })
    }

    /// Deletes the topology (queues, then exchanges) and every object under the prefix.
    async fn clean_up(self) -> Result<()> {
        let t = settings(&self.prefix, 1).topology;
        let channel = self.broker.channel().await?;
        let mut queues = vec![
            t.jobs_queue.clone(),
            t.dead_letter_queue.clone(),
            t.results_queue.clone(),
        ];
        queues.extend((1..4).map(|a| t.delay_queue_for(a)));
        for queue in &queues {
            // A queue that is not there (fewer delay queues) closes the channel; use a fresh
            // one per deletion.
            let channel = self.broker.channel().await?;
            let _ = channel
                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
        for exchange in [
            &t.dead_letter_exchange,
            &t.results_exchange,
            &t.cancel_exchange,
        ] {
            channel
                .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
                .await?;
        }
        let _ = self.broker.close().await;

        let s3 = s3_config();
        let mut builder = object_store::aws::AmazonS3Builder::new()
            .with_bucket_name(bucket())
            .with_virtual_hosted_style_request(false)
            .with_allow_http(true);
        if let Some(endpoint) = &s3.endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        if let Some(region) = &s3.region {
            builder = builder.with_region(region);
        }
        if let (Some(id), Some(secret)) = (&s3.access_key_id, &s3.secret_access_key) {
            builder = builder
                .with_access_key_id(id)
                .with_secret_access_key(secret);
        }
        let client = builder.build()?;
        let prefix = object_store::path::Path::from(self.prefix.as_str());
        let locations = object_store::ObjectStore::list(&client, Some(&prefix))
            .map(|meta| meta.map(|m| m.location))
            .boxed();
        let deleted = object_store::ObjectStore::delete_stream(&client, locations)
            .fold(0_usize, |n, r| async move { n + usize::from(r.is_ok()) })
            .await;
        println!(
            "cleaned up: {} queues, 3 exchanges, {deleted} objects under s3://{}/{}",
            queues.len(),
            bucket(),
            self.prefix
        );
        Ok(())
    }
}

struct Worker {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), inpaint_worker::WorkerError>>,
    metrics: Arc<Metrics>,
}

impl Worker {
    /// Stops the worker; returns its metrics text.
    async fn shutdown(self) -> Result<String> {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(60), self.task)
            .await
            .context("worker did not stop within 60 s")???;
        Ok(self.metrics.render())
    }
}

/// What one phase measured.
struct Phase {
    name: String,
    jobs: usize,
    wall: Duration,
    /// Publish (before the confirm) to result received, per job.
    latency_ms: Vec<f64>,
    /// Per stage, the result's `timings_ms`.
    stages: BTreeMap<String, Vec<f64>>,
    /// Per job: every stage except inference.
    overhead_ms: Vec<f64>,
    /// Per job: end-to-end latency minus the inference stage.
    e2e_minus_inference_ms: Vec<f64>,
    /// Per job: the worker's `total` (message received → result final) minus inference.
    worker_minus_inference_ms: Vec<f64>,
    /// Means from the worker's histograms, in ms: `job` (delivery to settlement) and stages.
    metric_means: BTreeMap<String, f64>,
    failures: usize,
}

impl Phase {
    fn new(name: &str) -> Self {
        Self {
            name: name.into(),
            jobs: 0,
            wall: Duration::ZERO,
            latency_ms: Vec::new(),
            stages: BTreeMap::new(),
            overhead_ms: Vec::new(),
            e2e_minus_inference_ms: Vec::new(),
            worker_minus_inference_ms: Vec::new(),
            metric_means: BTreeMap::new(),
            failures: 0,
        }
    }

    fn record(&mut self, result: &InpaintResult, latency: Duration) {
        let latency = latency.as_secs_f64() * 1e3;
        if result.status != JobStatus::Succeeded {
            self.failures += 1;
            if self.failures <= 3 {
                println!("  job failed: {:?} {:?}", result.status, result.error);
            }
            return;
        }
        self.jobs += 1;
        self.latency_ms.push(latency);
        let mut overhead = 0.0;
        for (stage, ms) in &result.timings_ms {
            let ms = *ms as f64;
            self.stages.entry(stage.clone()).or_default().push(ms);
            if stage != "inference" && stage != "total" {
                overhead += ms;
            }
        }
        self.overhead_ms.push(overhead);
        let inference = result.timings_ms.get("inference").copied().unwrap_or(0) as f64;
        self.e2e_minus_inference_ms.push(latency - inference);
        if let Some(total) = result.timings_ms.get("total") {
            self.worker_minus_inference_ms
                .push(*total as f64 - inference);
        }
    }

    fn jobs_per_s(&self) -> f64 {
        self.jobs as f64 / self.wall.as_secs_f64().max(1e-9)
    }

    /// Pulls the means out of the worker's Prometheus text.
    fn metrics(&mut self, text: &str) {
        let mut sums: HashMap<String, (f64, f64)> = HashMap::new();
        for line in text.lines() {
            let Some((key, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.parse::<f64>() else {
                continue;
            };
            let (name, which) = if let Some(k) = key.strip_suffix("_sum") {
                (k, 0)
            } else if let Some(k) = key.strip_suffix("_count") {
                (k, 1)
            } else if let Some(k) = key.strip_prefix("inpaint_stage_seconds_sum") {
                (k, 0)
            } else if let Some(k) = key.strip_prefix("inpaint_stage_seconds_count") {
                (k, 1)
            } else {
                continue;
            };
            let name = match name {
                "inpaint_job_seconds" => "job (delivery→settled)".to_owned(),
                other => match other.split('"').nth(1) {
                    Some(stage) if other.contains("stage=") => stage.to_owned(),
                    _ => continue,
                },
            };
            let entry = sums.entry(name).or_default();
            if which == 0 {
                entry.0 = value;
            } else {
                entry.1 = value;
            }
        }
        for (name, (sum, count)) in sums {
            if count > 0.0 {
                self.metric_means.insert(name, sum / count * 1e3);
            }
        }
    }
}

fn percentile(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// One job at a time: publish, wait for its result.
async fn serial(world: &mut World, name: &str, jobs: usize, engine: PassThrough) -> Result<Phase> {
    let worker = world.worker(engine, 2).await?;
    let mut phase = Phase::new(name);
    let started = Instant::now();
    for _ in 0..jobs {
        if started.elapsed() > PHASE_LIMIT {
            println!(
                "  {name}: phase time limit reached after {} jobs",
                phase.jobs
            );
            break;
        }
        let id = JobId::new_random();
        let t = Instant::now();
        world.publish(id).await?;
        let result = world.next_result().await?;
        if result.job_id != Some(id) {
            bail!("unexpected result for {:?}", result.job_id);
        }
        phase.record(&result, t.elapsed());
    }
    phase.wall = started.elapsed();
    phase.metrics(&worker.shutdown().await?);
    Ok(phase)
}

/// Every job published at once (confirms pipelined); results collected as they come.
async fn backlog(
    world: &mut World,
    name: &str,
    jobs: usize,
    engine: PassThrough,
    in_flight: usize,
) -> Result<Phase> {
    let worker = world.worker(engine, in_flight).await?;
    let mut phase = Phase::new(name);
    let jobs_queue = settings(&world.prefix, 1).topology.jobs_queue;
    let bodies: Vec<(JobId, Vec<u8>)> = (0..jobs)
        .map(|_| {
            let id = JobId::new_random();
            (id, world.job(id))
        })
        .collect();
    let sent: Mutex<HashMap<JobId, Instant>> = Mutex::new(HashMap::new());
    let started = Instant::now();
    let World {
        publisher, results, ..
    } = world;
    let publisher: &Publisher = publisher;
    let publish_all = futures::stream::iter(&bodies)
        .map(|(id, body)| {
            let (sent, jobs_queue) = (&sent, &jobs_queue);
            async move {
                sent.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(*id, Instant::now());
                publisher
                    .publish(
                        "",
                        jobs_queue,
                        body,
                        BasicProperties::default().with_delivery_mode(2),
                    )
                    .await
            }
        })
        .buffer_unordered(32)
        .fold(
            Ok(()),
            |acc: Result<(), inpaint_queue::QueueError>, r| async move { acc.and(r) },
        );
    let collect = async {
        let mut got = Vec::with_capacity(jobs);
        while got.len() < jobs {
            if started.elapsed() > PHASE_LIMIT {
                println!(
                    "  {name}: phase time limit reached after {} jobs",
                    got.len()
                );
                break;
            }
            let delivery = tokio::time::timeout(RESULT_WAIT, results.next())
                .await
                .context("no result within 30 s")?
                .context("results consumer closed")??;
            let at = Instant::now();
            delivery.acker.ack(BasicAckOptions::default()).await?;
            got.push((InpaintResult::from_json(&delivery.data)?, at));
        }
        anyhow::Ok((got, started.elapsed()))
    };
    let (published, collected) = tokio::join!(publish_all, collect);
    published?;
    let (got, wall) = collected?;
    phase.wall = wall;
    let sent = sent.into_inner().unwrap_or_else(|p| p.into_inner());
    for (result, at) in got {
        let Some(t) = result.job_id.and_then(|id| sent.get(&id)) else {
            bail!("unexpected result for {:?}", result.job_id);
        };
        phase.record(&result, at.duration_since(*t));
    }
    phase.metrics(&worker.shutdown().await?);
    Ok(phase)
}

/// Where the download and upload stages go, measured from the bench itself with the worker's
/// own functions: the two GETs (concurrent, as the runner does), the two decodes, the encode.
async fn breakdown(world: &World, samples: usize) -> Result<()> {
    let mut gets = Vec::new();
    let mut decodes = Vec::new();
    let mut encodes = Vec::new();
    for _ in 0..samples {
        let t = Instant::now();
        let (image, mask) = futures::try_join!(
            world.storage.get(&world.image, None),
            world.storage.get(&world.mask, None)
        )?;
        gets.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        let rgb = inpaint_worker::images::decode_rgb(&image.bytes, "image", u64::MAX)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        inpaint_worker::images::decode_rgb(&mask.bytes, "mask", u64::MAX)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        decodes.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        inpaint_worker::images::encode(
            &rgb,
            inpaint_job::OutputFormat::Png {},
            &Default::default(),
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        encodes.push(t.elapsed().as_secs_f64() * 1e3);
    }
    println!();
    println!("breakdown, measured by the bench ({samples} samples, no worker running)");
    println!("  {:<26} {:>9} {:>9}", "ms", "p50", "p99");
    for (label, values) in [
        ("2 GETs (concurrent)", &gets),
        ("decode image + mask", &decodes),
        ("encode PNG 512x512", &encodes),
    ] {
        println!(
            "  {label:<26} {:>9.1} {:>9.1}",
            percentile(values, 50.0),
            percentile(values, 99.0)
        );
    }
    Ok(())
}

fn print_phase(phase: &Phase) {
    let row = |label: &str, values: &[f64]| {
        println!(
            "  {label:<26} {:>9.1} {:>9.1}",
            percentile(values, 50.0),
            percentile(values, 99.0)
        );
    };
    println!();
    println!(
        "{}: {} jobs ({} failed), wall {:.2} s, {:.1} jobs/s",
        phase.name,
        phase.jobs,
        phase.failures,
        phase.wall.as_secs_f64(),
        phase.jobs_per_s()
    );
    println!("  {:<26} {:>9} {:>9}", "ms", "p50", "p99");
    row("end-to-end latency", &phase.latency_ms);
    row("e2e − inference", &phase.e2e_minus_inference_ms);
    row("worker total − inference", &phase.worker_minus_inference_ms);
    row("stages w/o inference", &phase.overhead_ms);
    for stage in STAGES {
        if let Some(values) = phase.stages.get(stage) {
            row(&format!("stage {stage}"), values);
        }
    }
    if !phase.metric_means.is_empty() {
        let means: Vec<String> = phase
            .metric_means
            .iter()
            .map(|(k, v)| format!("{k} {v:.2}"))
            .collect();
        println!("  worker histogram means (ms): {}", means.join(", "));
    }
}

fn main() -> Result<()> {
    let jobs = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .map(|a| a.parse::<usize>().context("JOBS must be a number"))
        .transpose()?
        .unwrap_or(DEFAULT_JOBS)
        .max(1);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut world = World::new().await?;
        let outcome = run(&mut world, jobs).await;
        let cleaned = world.clean_up().await;
        outcome.and(cleaned)
    })
}

async fn run(world: &mut World, jobs: usize) -> Result<()> {
    println!(
        "worker overhead, pass-through engine, 512x512 PNG in/out, {} CPUs, topology {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        world.prefix
    );
    // Warm-up: connections, S3 client, allocator.
    let warm = serial(world, "warm-up", 5.min(jobs), PassThrough::default()).await?;
    if warm.jobs == 0 {
        bail!("warm-up produced no successful job");
    }

    breakdown(world, 30).await?;

    let serial_phase = serial(
        world,
        "serial (1 outstanding)",
        jobs,
        PassThrough::default(),
    )
    .await?;
    print_phase(&serial_phase);
    let backlog_phase = backlog(
        world,
        "backlog (all queued, in_flight 2)",
        jobs,
        PassThrough::default(),
        2,
    )
    .await?;
    print_phase(&backlog_phase);

    let overlap_jobs = (jobs / 5).clamp(5, 40);
    let sleeping = || PassThrough {
        step_delay: INFERENCE,
        ..PassThrough::default()
    };
    let one = backlog(
        world,
        "overlap, 200 ms inference, in_flight 1",
        overlap_jobs,
        sleeping(),
        1,
    )
    .await?;
    print_phase(&one);
    let two = backlog(
        world,
        "overlap, 200 ms inference, in_flight 2",
        overlap_jobs,
        sleeping(),
        2,
    )
    .await?;
    print_phase(&two);

    let ideal = 1.0 / INFERENCE.as_secs_f64();
    let p50 = percentile(&serial_phase.e2e_minus_inference_ms, 50.0);
    println!();
    // The worker's own overhead per job: message received → result final, minus inference,
    // plus the result's publish (with its confirm) and the ack, which follow `total` and are
    // only in the worker's histograms (means).
    let after_total = ["publish", "ack"]
        .iter()
        .map(|stage| {
            serial_phase
                .metric_means
                .get(*stage)
                .copied()
                .unwrap_or(f64::NAN)
        })
        .sum::<f64>();
    let worker_p50 = percentile(&serial_phase.worker_minus_inference_ms, 50.0) + after_total;
    let worker_p99 = percentile(&serial_phase.worker_minus_inference_ms, 99.0) + after_total;
    println!("summary");
    println!(
        "  worker overhead per job (serial: received → result final − inference, + mean publish \
         and ack {after_total:.1} ms): p50 {worker_p50:.1} ms, p99 {worker_p99:.1} ms — goal \
         ≤ 25 ms p50: {}",
        if worker_p50 <= 25.0 { "met" } else { "NOT met" }
    );
    println!(
        "  as a client sees it (serial, publish → result received − inference, broker hops \
         included): p50 {p50:.1} ms, p99 {:.1} ms",
        percentile(&serial_phase.e2e_minus_inference_ms, 99.0),
    );
    println!(
        "  throughput, no inference: {:.1} jobs/s (in_flight 2)",
        backlog_phase.jobs_per_s()
    );
    println!(
        "  overlap: ideal {ideal:.2} jobs/s; in_flight 1 {:.2} jobs/s ({:.0}%), in_flight 2 {:.2} jobs/s ({:.0}%)",
        one.jobs_per_s(),
        100.0 * one.jobs_per_s() / ideal,
        two.jobs_per_s(),
        100.0 * two.jobs_per_s() / ideal
    );
    Ok(())
}
