//! The job loop: consume deliveries, run each job (parse, expiry, allow-lists, idempotency,
//! download, plugin chain, inference, upload), publish its result with publisher confirms and
//! only then acknowledge, as [`crate::error::action_for`] decides. Reconnects with backoff when
//! the broker goes away; drains in-flight work on shutdown.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::Utc;
use futures::StreamExt;
use inpaint_job::{
    BlockInfo, ErrorCode, InpaintJob, InpaintResult, JobId, JobStatus, ModelInfo, OutputImage,
    ProgressEvent, SafetyReport, WatermarkInfo, WorkerInfo,
};
use inpaint_plugin_api::{BlockRecord, Chain, JobContext};
use inpaint_queue::lapin::message::Delivery;
use inpaint_queue::lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
};
use inpaint_queue::lapin::types::{AMQPValue, FieldTable};
use inpaint_queue::lapin::{Acker, BasicProperties};
use inpaint_queue::{Publisher, QueueError};
use inpaint_storage::{ObjectRef, PutRequest};
use sha2::{Digest, Sha256};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::cancel::Cancellations;
use crate::error::{Action, JobFailure, action_for};
use crate::gpu::GpuMemory;
use crate::images;
use crate::inference::{InferenceRequest, InferenceThread, PassThrough, TchEngine, hex};
use crate::metrics::Metrics;
use crate::settings::{EngineBackend, Settings};
use crate::store::ObjectStorage;
use crate::topology::{
    self, ATTEMPT_HEADER, DELIVERY_COUNT_HEADER, ERROR_HEADER, TIMESTAMP_MS_HEADER,
};

/// The licence written into every output's metadata.
pub const LICENCE: &str = "CreativeML OpenRAIL-M";
/// Header on result messages with the same list.
pub const UNSAFE_CHAIN_HEADER: &str = "x-inpaint-unsafe-chain";
/// Name of the per-job manifest written next to the outputs (the stored result, for
/// idempotent redeliveries).
pub const MANIFEST_NAME: &str = "result.json";
/// Fewest milliseconds between two progress events of one job.
pub const PROGRESS_INTERVAL: Duration = Duration::from_millis(250);

/// Why the worker could not run.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The configuration is unusable.
    #[error(transparent)]
    Settings(#[from] crate::settings::SettingsError),
    /// The object store could not be built.
    #[error(transparent)]
    Storage(#[from] inpaint_storage::StorageError),
    /// The engine could not be loaded.
    #[error("engine: {0}")]
    Engine(#[from] crate::inference::InferenceError),
    /// The plugin chain could not be built.
    #[error("plugin chain: {0}")]
    Chain(#[from] inpaint_plugin_api::StageError),
    /// The broker failed.
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// The HTTP endpoint could not start.
    #[error("http endpoint: {0}")]
    Http(#[from] std::io::Error),
}

/// The running pieces a worker is made of. [`Parts::build`] makes them from settings; tests
/// and benchmarks make their own (a pass-through engine, a fault-injecting store).
#[derive(Clone)]
pub struct Parts {
    /// Where inputs come from and outputs go.
    pub storage: Arc<dyn ObjectStorage>,
    /// The inference thread.
    pub inference: InferenceThread,
    /// The plugin chain.
    pub chain: Arc<Chain>,
    /// Counters and histograms.
    pub metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Parts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Parts")
            .field("model", self.inference.model())
            .field("chain", &self.chain)
            .finish_non_exhaustive()
    }
}

impl Parts {
    /// Builds the store, loads the engine on its thread and builds the chain.
    pub async fn build(settings: &Settings) -> Result<Self, WorkerError> {
        let storage = Arc::new(settings.storage.build()?);
        let engine = settings.engine.clone();
        let inference = match engine.backend {
            EngineBackend::Tch => {
                InferenceThread::spawn(move || {
                    TchEngine::load(&engine)
                        .map(|e| Box::new(e) as Box<dyn crate::inference::Inference>)
                })
                .await?
            }
            EngineBackend::PassThrough => {
                InferenceThread::spawn(|| Ok(Box::new(PassThrough::default()) as Box<_>)).await?
            }
        };
        let chain = Arc::new(inpaint_stages::build_chain(&settings.chain.stages)?);
        let metrics = Arc::new(Metrics::default());
        if engine_on_cuda(settings) {
            match GpuMemory::open() {
                Ok(gpu) => {
                    let _ = metrics.gpu.set(gpu);
                }
                Err(reason) => {
                    tracing::warn!(%reason, "NVML unavailable: /metrics reports no GPU memory")
                }
            }
        }
        Ok(Self {
            storage,
            inference,
            chain,
            metrics,
        })
    }
}

/// Whether the libtorch engine runs on a GPU here (what `auto` resolves to included).
fn engine_on_cuda(settings: &Settings) -> bool {
    settings.engine.backend == EngineBackend::Tch
        && matches!(
            settings.engine.device.resolve(),
            Ok(inpaint_engine::tch::Device::Cuda(_))
        )
}

/// Runs the worker until `shutdown` completes: builds its parts from `settings`, then
/// [`run_with`].
pub async fn run(
    settings: Settings,
    shutdown: impl Future<Output = ()>,
) -> Result<(), WorkerError> {
    settings.validate()?;
    // Credentials before the model: a real model takes a while to load, bad keys do not.
    let signer = images::Signer::build(&settings)?;
    let parts = Parts::build(&settings).await?;
    serve(settings, parts, signer, shutdown).await
}

struct Shared {
    settings: Settings,
    parts: Parts,
    signer: images::Signer,
    cancels: Cancellations,
    worker: WorkerInfo,
    unsafe_chain: Vec<String>,
    in_flight: Semaphore,
    draining: watch::Receiver<bool>,
    ready: AtomicBool,
}

/// Runs the worker with the given parts until `shutdown` completes, then drains: stops
/// consuming, lets in-flight jobs finish within the grace period and releases the rest to the
/// queue. Returns Ok after a clean shutdown; broker failures are retried, not returned.
pub async fn run_with(
    settings: Settings,
    parts: Parts,
    shutdown: impl Future<Output = ()>,
) -> Result<(), WorkerError> {
    settings.validate()?;
    // Here rather than in `Parts`, which tests and benchmarks build field by field: every
    // worker signs as its settings say, and bad credentials stop it before the first delivery.
    let signer = images::Signer::build(&settings)?;
    serve(settings, parts, signer, shutdown).await
}

/// [`run_with`] on validated settings and a built signer.
async fn serve(
    settings: Settings,
    parts: Parts,
    signer: images::Signer,
    shutdown: impl Future<Output = ()>,
) -> Result<(), WorkerError> {
    let warnings = settings.chain_warnings();
    for warning in &warnings {
        tracing::warn!("{warning}");
    }
    let unsafe_chain: Vec<String> = inpaint_stages::REQUIRED_STAGE_KINDS
        .iter()
        .filter(|kind| {
            !settings
                .chain
                .stages
                .iter()
                .any(|s| s.kind_name() == **kind)
        })
        .map(|kind| (*kind).to_owned())
        .collect();
    let (drain_tx, drain_rx) = watch::channel(false);
    let shared = Arc::new(Shared {
        in_flight: Semaphore::new(settings.concurrency.in_flight),
        cancels: Cancellations::default(),
        worker: worker_info(),
        unsafe_chain,
        draining: drain_rx,
        ready: AtomicBool::new(false),
        settings,
        parts,
        signer,
    });
    let http = if shared.settings.http.bind.is_empty() {
        None
    } else {
        let listener = tokio::net::TcpListener::bind(&shared.settings.http.bind).await?;
        let metrics = Arc::clone(&shared.parts.metrics);
        let health = Arc::clone(&shared);
        Some(tokio::spawn(crate::http::serve(
            listener,
            metrics,
            move || health.ready.load(Ordering::SeqCst),
        )))
    };
    tracing::info!(
        model = %shared.parts.inference.model().id,
        jobs_queue = %shared.settings.topology.jobs_queue,
        c2pa = shared.signer.is_signing(),
        "worker starting"
    );
    let mut shutdown = std::pin::pin!(shutdown);
    let mut backoff = Duration::from_millis(200);
    loop {
        let started = Instant::now();
        match session(&shared, shutdown.as_mut(), &drain_tx).await {
            Ok(()) => break,
            Err(e) => {
                shared.ready.store(false, Ordering::SeqCst);
                if started.elapsed() > Duration::from_secs(30) {
                    backoff = Duration::from_millis(200);
                }
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "broker session ended; reconnecting");
                tokio::select! {
                    () = shutdown.as_mut() => break,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
    if let Some(http) = http {
        http.abort();
    }
    tracing::info!("worker stopped");
    Ok(())
}

struct Running {
    acker: Acker,
    stop: Arc<AtomicBool>,
}

/// One broker connection's life: declare, consume, dispatch. Ok(()) after a clean shutdown.
async fn session(
    shared: &Arc<Shared>,
    mut shutdown: Pin<&mut impl Future<Output = ()>>,
    drain: &watch::Sender<bool>,
) -> Result<(), QueueError> {
    let settings = &shared.settings;
    let broker = settings.broker.connect().await?;
    let control = broker.channel().await?;
    topology::declare(&control, &settings.topology, settings.retry.max_attempts).await?;
    let publisher = Arc::new(broker.publisher().await?);
    let cancel_queue = topology::declare_cancel_queue(&control, &settings.topology).await?;
    let mut cancels = broker.consume(&cancel_queue, "cancel", 64).await?;

    let jobs_channel = broker.channel().await?;
    jobs_channel
        .basic_qos(settings.concurrency.prefetch, BasicQosOptions::default())
        .await
        .map_err(|source| QueueError::Amqp {
            operation: "setting the prefetch count",
            source,
        })?;
    let mut jobs = jobs_channel
        .basic_consume(
            settings.topology.jobs_queue.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|source| QueueError::Amqp {
            operation: "starting the jobs consumer",
            source,
        })?;
    let consumer_tag = jobs.tag().to_string();
    shared.ready.store(true, Ordering::SeqCst);
    tracing::info!(queue = %settings.topology.jobs_queue, "consuming jobs");

    let mut tasks: JoinSet<()> = JoinSet::new();
    let mut running: HashMap<tokio::task::Id, Running> = HashMap::new();
    let outcome = loop {
        tokio::select! {
            () = shutdown.as_mut() => break Ok(()),
            Some(reaped) = tasks.join_next_with_id() => {
                match reaped {
                    Ok((id, ())) => { running.remove(&id); }
                    Err(e) => {
                        // A task that ended without settling its delivery (a panic) releases it.
                        tracing::error!(error = %e, "job task failed; its delivery returns to the queue");
                        if let Some(run) = running.remove(&e.id()) {
                            let _ = run.acker.nack(BasicNackOptions { requeue: true, ..Default::default() }).await;
                        }
                    }
                }
            }
            cancel = cancels.next() => match cancel {
                Some(Ok(delivery)) => {
                    match inpaint_job::CancelRequest::from_json(&delivery.data) {
                        Ok(request) => {
                            tracing::info!(job_id = %request.job_id, "cancel request");
                            shared.cancels.cancel(request.job_id);
                        }
                        Err(e) => tracing::warn!(error = %e, "ignoring an unreadable cancel request"),
                    }
                    let _ = delivery.acker.ack(BasicAckOptions::default()).await;
                }
                Some(Err(source)) => break Err(QueueError::Amqp { operation: "receiving cancel requests", source }),
                None => break Err(QueueError::Config("the cancel consumer ended".into())),
            },
            delivery = jobs.next() => match delivery {
                Some(Ok(delivery)) => {
                    let stop = Arc::new(AtomicBool::new(false));
                    let acker = delivery.acker.clone();
                    let task = tasks.spawn(handle(Arc::clone(shared), Arc::clone(&publisher), delivery, Arc::clone(&stop)));
                    running.insert(task.id(), Running { acker, stop });
                }
                Some(Err(source)) => break Err(QueueError::Amqp { operation: "receiving jobs", source }),
                None => break Err(QueueError::Config("the jobs consumer ended (queue deleted or connection lost)".into())),
            },
        }
    };
    shared.ready.store(false, Ordering::SeqCst);
    match outcome {
        Ok(()) => {
            tracing::info!(in_flight = running.len(), "shutting down: no new jobs");
            let _ = drain.send(true);
            let _ = jobs_channel
                .basic_cancel(consumer_tag.as_str().into(), BasicCancelOptions::default())
                .await;
            let grace = tokio::time::sleep(settings.grace());
            tokio::pin!(grace);
            loop {
                tokio::select! {
                    reaped = tasks.join_next_with_id() => match reaped {
                        Some(Ok((id, ()))) => { running.remove(&id); }
                        Some(Err(e)) => {
                            if let Some(run) = running.remove(&e.id()) {
                                let _ = run.acker.nack(BasicNackOptions { requeue: true, ..Default::default() }).await;
                            }
                        }
                        None => break,
                    },
                    () = &mut grace => {
                        tracing::warn!(unfinished = running.len(), "grace period over: releasing unfinished jobs to the queue");
                        tasks.abort_all();
                        for (_, run) in running.drain() {
                            run.stop.store(true, Ordering::SeqCst);
                            let _ = run.acker.nack(BasicNackOptions { requeue: true, ..Default::default() }).await;
                        }
                        break;
                    }
                }
            }
            let _ = broker.close().await;
            Ok(())
        }
        Err(e) => {
            // Deliveries of this connection cannot be settled any more: stop their work; the
            // broker requeues them.
            tasks.abort_all();
            for (_, run) in running.drain() {
                run.stop.store(true, Ordering::SeqCst);
            }
            let _ = broker.close().await;
            Err(e)
        }
    }
}

/// The attempt number of a delivery: the retry header (1 when absent) plus the quorum queue's
/// count of earlier deliveries of this copy.
pub fn attempt_of(properties: &BasicProperties) -> u32 {
    let headers = properties.headers().as_ref();
    let retries = topology::header_u32(headers, ATTEMPT_HEADER)
        .unwrap_or(1)
        .max(1);
    let redeliveries = topology::header_u32(headers, DELIVERY_COUNT_HEADER).unwrap_or(0);
    retries.saturating_add(redeliveries)
}

/// How long a job waited between its producer and this pick-up: from the `timestamp_in_ms`
/// header, else the AMQP `timestamp` property (whole seconds); `None` when the producer set
/// neither. A producer clock ahead of ours counts as no wait.
pub fn queue_wait(properties: &BasicProperties, now_ms: i64) -> Option<Duration> {
    let sent_ms = topology::header_i64(properties.headers().as_ref(), TIMESTAMP_MS_HEADER)
        .or_else(|| {
            properties
                .timestamp()
                .and_then(|seconds| i64::try_from(seconds).ok()?.checked_mul(1_000))
        })?;
    let waited = now_ms.saturating_sub(sent_ms).max(0);
    Some(Duration::from_millis(u64::try_from(waited).unwrap_or(0)))
}

/// Handles one delivery from start to settlement.
async fn handle(
    shared: Arc<Shared>,
    publisher: Arc<Publisher>,
    delivery: Delivery,
    stop: Arc<AtomicBool>,
) {
    let attempt = attempt_of(&delivery.properties);
    if let Some(waited) = queue_wait(&delivery.properties, Utc::now().timestamp_millis()) {
        shared
            .parts
            .metrics
            .queue_wait_seconds
            .observe(waited.as_secs_f64());
    }
    let job = InpaintJob::from_json(&delivery.data);
    let job_id = match &job {
        Ok(job) => Some(job.job_id),
        Err(_) => inpaint_job::peek_job_id(&delivery.data),
    };
    let span = tracing::info_span!(
        "job",
        job_id = job_id.map(|id| id.to_string()).unwrap_or_default(),
        attempt,
        delivery_tag = delivery.delivery_tag,
        message_id = delivery
            .properties
            .message_id()
            .as_ref()
            .map(|m| m.to_string())
            .unwrap_or_default(),
    );
    async move {
        let metrics = &shared.parts.metrics;
        metrics.in_flight.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let mut timings = BTreeMap::new();
        let outcome = match &job {
            Ok(job) => {
                execute(
                    &shared,
                    &publisher,
                    job,
                    attempt,
                    &delivery.properties,
                    &stop,
                    &mut timings,
                )
                .await
            }
            Err(e) => Err(JobFailure::from(e)),
        };
        let action = action_for(
            outcome.as_ref().map(|_| ()),
            attempt,
            &shared.settings.retry,
        );
        let metadata = job.as_ref().map(|j| j.metadata.clone()).unwrap_or_default();
        // Received → result final; the result's publish and the ack follow (their histograms).
        timings.insert("total".to_owned(), started.elapsed().as_millis() as u64);
        let settled = settle(
            &shared, &publisher, &delivery, job_id, attempt, outcome, action, metadata, timings,
        )
        .await;
        if let Err(e) = settled {
            tracing::warn!(error = %e, "could not settle the delivery; releasing it to the queue");
            let _ = delivery
                .acker
                .nack(BasicNackOptions {
                    requeue: true,
                    ..Default::default()
                })
                .await;
        }
        metrics.in_flight.fetch_sub(1, Ordering::Relaxed);
        metrics.job_seconds.observe(started.elapsed().as_secs_f64());
    }
    .instrument(span)
    .await;
}

fn base_result(
    shared: &Shared,
    job_id: Option<JobId>,
    status: JobStatus,
    attempt: u32,
    metadata: BTreeMap<String, String>,
) -> InpaintResult {
    let mut result = InpaintResult::new(
        job_id,
        status,
        shared.parts.inference.model().clone(),
        shared.worker.clone(),
        Utc::now(),
    );
    result.attempt = attempt;
    // The job's metadata goes back untouched; the override is reported by the worker section.
    result.metadata = metadata;
    result.worker.missing_required_stages = shared.unsafe_chain.clone();
    result
}

#[allow(clippy::too_many_arguments)]
async fn settle(
    shared: &Shared,
    publisher: &Publisher,
    delivery: &Delivery,
    job_id: Option<JobId>,
    attempt: u32,
    outcome: Result<InpaintResult, JobFailure>,
    action: Action,
    metadata: BTreeMap<String, String>,
    timings: BTreeMap<String, u64>,
) -> Result<(), QueueError> {
    let metrics = &shared.parts.metrics;
    let amqp = |operation: &'static str| move |source| QueueError::Amqp { operation, source };
    match action {
        Action::Retry { after } => {
            let failure = outcome.err();
            let message = failure.as_ref().map(|f| f.to_string()).unwrap_or_default();
            tracing::warn!(error = %message, retry_in_ms = after.as_millis() as u64, "transient failure; retrying through the delay queue");
            let mut headers = delivery.properties.headers().clone().unwrap_or_default();
            headers.insert(
                ATTEMPT_HEADER.into(),
                AMQPValue::LongLongInt(i64::from(attempt) + 1),
            );
            headers.insert(
                ERROR_HEADER.into(),
                AMQPValue::LongString(truncate(&message, 500).into()),
            );
            let properties = delivery
                .properties
                .clone()
                .with_headers(headers)
                .with_delivery_mode(2)
                .with_expiration(after.as_millis().to_string().into());
            publisher
                .publish(
                    "",
                    &shared.settings.topology.delay_queue_for(attempt),
                    &delivery.data,
                    properties,
                )
                .await?;
            delivery
                .acker
                .ack(BasicAckOptions::default())
                .await
                .map_err(amqp("acknowledging"))?;
            metrics.retries.fetch_add(1, Ordering::Relaxed);
        }
        Action::Ack | Action::DeadLetter => {
            let result = match outcome {
                Ok(mut result) => {
                    result.timings_ms.extend(timings);
                    result
                }
                Err(failure) => {
                    let mut result =
                        base_result(shared, job_id, failure.code.status(), attempt, metadata);
                    result.error = Some(failure.to_error_info());
                    result.block = failure.block.as_deref().cloned();
                    result.timings_ms = timings;
                    if failure.block.is_some() {
                        metrics.blocks.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(
                            stage = failure
                                .block
                                .as_ref()
                                .map(|b| b.stage.as_str())
                                .unwrap_or(""),
                            category = failure
                                .block
                                .as_ref()
                                .map(|b| b.category.as_str())
                                .unwrap_or(""),
                            "job blocked"
                        );
                    } else {
                        tracing::info!(code = failure.code.as_str(), error = %failure.message, "job did not succeed");
                    }
                    result
                }
            };
            // Publish and ack happen after the result is final: their times go to the metrics
            // (`inpaint_stage_seconds{stage="publish"|"ack"}`) only.
            let t = Instant::now();
            publish_result(shared, publisher, &delivery.properties, &result)
                .instrument(tracing::info_span!("publish"))
                .await?;
            metrics.observe_stage("publish", t.elapsed().as_secs_f64());
            metrics.count_status(result.status);
            let t = Instant::now();
            if action == Action::Ack {
                delivery
                    .acker
                    .ack(BasicAckOptions::default())
                    .await
                    .map_err(amqp("acknowledging"))?;
            } else {
                delivery
                    .acker
                    .nack(BasicNackOptions {
                        requeue: false,
                        ..Default::default()
                    })
                    .await
                    .map_err(amqp("dead-lettering"))?;
            }
            metrics.observe_stage("ack", t.elapsed().as_secs_f64());
            tracing::info!(status = ?result.status, outputs = result.outputs.len(), "job settled");
        }
    }
    Ok(())
}

fn truncate(text: &str, max: usize) -> String {
    text.char_indices()
        .take_while(|(i, _)| *i < max)
        .map(|(_, c)| c)
        .collect()
}

/// Publishes a result to the results exchange (confirmed) and, best effort, to the job's
/// `reply_to` with its `correlation_id`.
async fn publish_result(
    shared: &Shared,
    publisher: &Publisher,
    job: &BasicProperties,
    result: &InpaintResult,
) -> Result<(), QueueError> {
    let body = result
        .to_json()
        .map_err(|e| QueueError::Config(format!("serialising the result: {e}")))?;
    let mut properties = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2);
    if let Some(id) = result.job_id {
        properties = properties.with_message_id(id.to_string().into());
    }
    if let Some(correlation) = job.correlation_id() {
        properties = properties.with_correlation_id(correlation.clone());
    }
    if !shared.unsafe_chain.is_empty() {
        let mut headers = FieldTable::default();
        headers.insert(
            UNSAFE_CHAIN_HEADER.into(),
            AMQPValue::LongString(shared.unsafe_chain.join(",").into()),
        );
        properties = properties.with_headers(headers);
    }
    publisher
        .publish(
            &shared.settings.topology.results_exchange,
            &topology::result_routing_key(result.status),
            &body,
            properties.clone(),
        )
        .await?;
    if let Some(reply_to) = job.reply_to()
        && let Err(e) = publisher
            .publish("", reply_to.as_str(), &body, properties)
            .await
    {
        tracing::warn!(error = %e, "could not publish the result to reply_to");
    }
    Ok(())
}

fn allowed(bucket: &str, key: &str, buckets: &[String], prefixes: &[String]) -> bool {
    buckets.iter().any(|b| b == bucket)
        && (prefixes.is_empty() || prefixes.iter().any(|p| key.starts_with(p.as_str())))
}

/// The manifest object of a job: `result.json` beside its outputs.
pub fn manifest_ref(job: &InpaintJob) -> Result<ObjectRef, JobFailure> {
    let first = job.output_key(0).map_err(|e| JobFailure::from(&e))?;
    let key = match first.key().rsplit_once('/') {
        Some((dir, _)) => format!("{dir}/{MANIFEST_NAME}"),
        None => MANIFEST_NAME.to_owned(),
    };
    ObjectRef::new(first.bucket(), key).map_err(|e| JobFailure::internal(e.to_string()))
}

/// The seed of image 0 when the job gives none: derived from the job id, so a redelivered job
/// makes the same images.
fn fallback_seed(job_id: JobId) -> u64 {
    let bytes = job_id.as_uuid().as_bytes();
    let mut first = [0u8; 8];
    first.copy_from_slice(&bytes[..8]);
    u64::from_le_bytes(first) >> 11
}

/// Counts and logs every block and modification of the plugin chain: stage and category only,
/// never the prompt (the job's span adds the job id).
fn count_audit(metrics: &Metrics, audit: &[inpaint_plugin_api::AuditEntry]) {
    for entry in audit {
        let action = match entry.action {
            inpaint_plugin_api::AuditAction::Blocked => "blocked",
            inpaint_plugin_api::AuditAction::Modified => "modified",
        };
        let category = entry.category.as_deref().unwrap_or("none");
        metrics.count_plugin_action(action, category);
        tracing::info!(stage = %entry.stage, action, category, "plugin chain audit");
    }
}

fn stage_ms(timings: &mut BTreeMap<String, u64>, metrics: &Metrics, stage: &str, started: Instant) {
    let elapsed = started.elapsed();
    timings.insert(stage.to_owned(), elapsed.as_millis() as u64);
    metrics.observe_stage(stage, elapsed.as_secs_f64());
}

/// Name of the safety-checker stage (`inpaint_safety_checker::SafetyCheckerStage::NAME`), whose
/// reports carry the scores.
const SAFETY_STAGE: &str = "safety-checker";

/// The safety checker's verdict on one output, from what its stage recorded: metadata
/// `safety_checker.nsfw` and `safety_checker.flagged_concepts` (indices `3,11`), and the report
/// with scores `concept.NN`, `special.N` (kept as named) plus the 0/1 flags `nsfw` and
/// `special_care` (left out: `nsfw` has its own field). Flagged concepts are named like their
/// score keys (`concept.03`). `None` when no safety checker ran on the image.
fn safety_of(out: &inpaint_plugin_api::OutputImage) -> Option<SafetyReport> {
    let nsfw = out.metadata_value("safety_checker.nsfw")? == "true";
    let concept_scores = out
        .reports
        .iter()
        .rev()
        .find(|report| report.stage == SAFETY_STAGE)
        .map(|report| {
            report
                .scores
                .iter()
                .filter(|(key, _)| key.starts_with("concept.") || key.starts_with("special."))
                .map(|(key, score)| (key.clone(), f64::from(*score)))
                .collect()
        })
        .unwrap_or_default();
    let flagged_concepts = out
        .metadata_value("safety_checker.flagged_concepts")
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|index| !index.is_empty())
        .map(|index| match index.parse::<usize>() {
            Ok(i) => format!("concept.{i:02}"),
            Err(_) => index.to_owned(),
        })
        .collect();
    Some(SafetyReport {
        nsfw,
        concept_scores,
        flagged_concepts,
    })
}

/// The watermark embedded in one output, from the watermark stage's metadata
/// (`watermark.payload` hex, `watermark.method`). `None` when no watermark stage ran or when it
/// left the image unmarked (`watermark.status = skipped`, images too small to carry it).
fn watermark_of(out: &inpaint_plugin_api::OutputImage) -> Option<WatermarkInfo> {
    if out
        .metadata_value("watermark.status")
        .is_some_and(|status| status != "embedded")
    {
        return None;
    }
    let payload = out.metadata_value("watermark.payload")?;
    Some(WatermarkInfo {
        payload_hex: payload.to_ascii_lowercase(),
        method: out
            .metadata_value("watermark.method")
            .unwrap_or(inpaint_watermark::WatermarkStage::METHOD)
            .to_owned(),
    })
}

fn block_info(record: &BlockRecord) -> BlockInfo {
    BlockInfo {
        stage: record.stage.clone(),
        category: record.block.category.clone(),
        reason: record.block.reason.clone(),
        scores: record
            .block
            .scores
            .iter()
            .map(|(k, v)| (k.clone(), f64::from(*v)))
            .collect(),
    }
}

/// Runs one parsed job to its result, or to the failure that stopped it.
#[allow(clippy::too_many_arguments)]
async fn execute(
    shared: &Shared,
    publisher: &Arc<Publisher>,
    job: &InpaintJob,
    attempt: u32,
    properties: &BasicProperties,
    stop: &Arc<AtomicBool>,
    timings: &mut BTreeMap<String, u64>,
) -> Result<InpaintResult, JobFailure> {
    let settings = &shared.settings;
    let storage = &shared.parts.storage;
    let metrics = &shared.parts.metrics;
    if job.is_expired(Utc::now()) {
        return Err(JobFailure::permanent(
            ErrorCode::Expired,
            "expires_at had passed when the job was picked up",
        ));
    }
    if shared.cancels.is_cancelled(job.job_id) {
        return Err(JobFailure::permanent(
            ErrorCode::Cancelled,
            "cancelled while queued",
        ));
    }
    for (what, input) in [("image", &job.image), ("mask", &job.mask)] {
        if let Some(object) = input
            && !allowed(
                object.bucket(),
                object.key(),
                &settings.allow.read_buckets,
                &settings.allow.read_prefixes,
            )
        {
            return Err(JobFailure::permanent(
                ErrorCode::BucketNotAllowed,
                format!("{what} {object}: this worker may not read there"),
            ));
        }
    }
    let first_output = job.output_key(0).map_err(|e| JobFailure::from(&e))?;
    if !allowed(
        first_output.bucket(),
        first_output.key(),
        &settings.allow.write_buckets,
        &settings.allow.write_prefixes,
    ) {
        return Err(JobFailure::permanent(
            ErrorCode::BucketNotAllowed,
            format!(
                "output s3://{}/{}: this worker may not write there",
                first_output.bucket(),
                job.output.prefix
            ),
        ));
    }

    // One job at a time per in-flight slot; a job waiting for a slot can still be cancelled,
    // and is released untouched when the worker drains.
    let mut draining = shared.draining.clone();
    let _permit = tokio::select! {
        permit = shared.in_flight.acquire() => permit.map_err(|_| JobFailure::transient(ErrorCode::Internal, "worker shutting down"))?,
        _ = draining.wait_for(|d| *d) => return Err(JobFailure::transient(ErrorCode::Internal, "worker shutting down before the job started")),
    };
    if shared.cancels.is_cancelled(job.job_id) {
        return Err(JobFailure::permanent(
            ErrorCode::Cancelled,
            "cancelled while queued",
        ));
    }

    // Idempotency check and downloads at once: a first delivery (the common case) waits for one
    // round trip to the store, not two. On a redelivery whose outputs exist the downloads are
    // wasted, and their errors ignored: the stored result answers the job even when its inputs
    // have since been deleted.
    let t = Instant::now();
    let manifest = manifest_ref(job)?;
    let limits = &settings.limits;
    let downloads = async {
        match (&job.image, &job.mask) {
            (Some(image), Some(mask)) => futures::try_join!(
                storage.get(image, Some(limits.max_object_bytes)),
                storage.get(mask, Some(limits.max_object_bytes)),
            )
            .map(Some),
            _ => Ok(None),
        }
    };
    let (previous, downloaded) =
        futures::future::join(previous_result(storage.as_ref(), &manifest), downloads)
            .instrument(tracing::info_span!("download"))
            .await;
    if let Some(previous) = previous? {
        tracing::info!("outputs already written by an earlier delivery; not recomputing");
        let mut result = previous;
        result.attempt = attempt;
        return Ok(result);
    }
    let downloaded = downloaded?;
    stage_ms(timings, metrics, "download", t);

    // Decode, within the limits, off the async threads; image and mask at once.
    let t = Instant::now();
    let inputs = match downloaded {
        Some((image_bytes, mask_bytes)) => {
            let max_pixels = limits.max_decoded_pixels;
            let image = decoding(tokio::task::spawn_blocking(move || {
                images::decode_rgb(&image_bytes.bytes, "image", max_pixels)
            }));
            let mask = decoding(tokio::task::spawn_blocking(move || {
                images::decode_rgb(&mask_bytes.bytes, "mask", max_pixels)
                    .map(|mask| (mask.dimensions(), inpaint_engine::pipeline::pil_luma(&mask)))
            }));
            let (image, ((mask_width, mask_height), mask)) = futures::try_join!(image, mask)?;
            if image.dimensions() != (mask_width, mask_height) {
                return Err(JobFailure::permanent(
                    ErrorCode::UndecodableImage,
                    format!(
                        "mask is {mask_width}x{mask_height} but image is {}x{}",
                        image.width(),
                        image.height()
                    ),
                ));
            }
            Some((image, mask))
        }
        None => None,
    };
    stage_ms(timings, metrics, "decode", t);

    for (field, side) in [("width", job.params.width), ("height", job.params.height)] {
        if let Some(side) = side
            && side > limits.max_output_side
        {
            return Err(JobFailure::permanent(
                ErrorCode::InvalidParameter,
                format!(
                    "params.{field}: {side} is above this worker's maximum of {}",
                    limits.max_output_side
                ),
            ));
        }
    }
    let (image, mask) = match inputs {
        Some((image, mask)) => (Some(image), Some(mask)),
        None => (None, None),
    };

    // Plugin chain before inference.
    let t = Instant::now();
    let chain = Arc::clone(&shared.parts.chain);
    let context = JobContext {
        job_id: *job.job_id.as_uuid(),
        prompt: job.prompt.clone(),
        negative_prompt: job.negative_prompt.clone(),
        params: serde_json::to_value(&job.params).unwrap_or_default(),
        metadata: job.metadata.clone(),
        text_only: job.is_text_only(),
        reports: Vec::new(),
        // A copy: the engine request takes the image by value.
        input_image: image.clone().map(Arc::new),
    };
    let before = tokio::task::spawn_blocking(move || chain.before_inference(context))
        .instrument(tracing::info_span!("plugins", hook = "before-inference"))
        .await
        .map_err(|e| JobFailure::internal(format!("plugin task: {e}")))??;
    stage_ms(timings, metrics, "plugins_before", t);
    count_audit(metrics, &before.audit);
    if let Some(block) = &before.block {
        return Err(JobFailure::blocked(
            ErrorCode::PolicyBlocked,
            block_info(block),
        ));
    }
    let context = before.context;

    // Inference on the dedicated thread.
    let seeds = job.per_image_seeds(fallback_seed(job.job_id));
    let request = InferenceRequest {
        job_id: job.job_id,
        prompt: context.prompt.clone(),
        negative_prompt: context.negative_prompt.clone(),
        image,
        mask,
        width: job.params.width,
        height: job.params.height,
        num_inference_steps: job.params.num_inference_steps,
        guidance_scale: job.params.guidance_scale,
        strength: job.params.strength,
        eta: job.params.eta,
        scheduler: job.params.scheduler,
        seeds: seeds.clone(),
        preserve_unmasked: job.params.preserve_unmasked,
        mask_grow_px: job.params.mask_grow_px,
        mask_feather_px: job.params.mask_feather_px,
        crop_to_mask: job.params.crop_to_mask.map(|c| c.padding_px),
        max_side: limits.max_output_side,
    };
    let flag = shared.cancels.start(job.job_id);
    let cancel_watch = {
        // Shutdown after the grace period raises `stop`; forward it to the engine's flag.
        let flag = Arc::clone(&flag);
        let stop = Arc::clone(stop);
        tokio::spawn(async move {
            loop {
                if stop.load(Ordering::SeqCst) {
                    flag.store(true, Ordering::SeqCst);
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let progress = match (job.progress, properties.reply_to()) {
        (true, Some(reply_to)) => Some(progress_forwarder(
            Arc::clone(publisher),
            job.job_id,
            reply_to.to_string(),
            properties.correlation_id().clone(),
        )),
        _ => None,
    };
    let t = Instant::now();
    let output = shared
        .parts
        .inference
        .run(request, Arc::clone(&flag), progress)
        .await;
    cancel_watch.abort();
    shared.cancels.finish(job.job_id, &flag);
    let output = output?;
    stage_ms(timings, metrics, "inference", t);

    // Size rules, crop-to-mask and the preserve_unmasked composite ran in the engine.
    let composited = output.images;

    // Plugin chain after output.
    let t = Instant::now();
    let chain = Arc::clone(&shared.parts.chain);
    let outputs: Vec<inpaint_plugin_api::OutputImage> = composited
        .into_iter()
        .zip(&seeds)
        .enumerate()
        .map(|(i, (img, seed))| inpaint_plugin_api::OutputImage::new(i as u32, *seed, img))
        .collect();
    let expected = outputs.len();
    let after = tokio::task::spawn_blocking(move || chain.after_output(&context, outputs))
        .instrument(tracing::info_span!("plugins", hook = "after-output"))
        .await
        .map_err(|e| JobFailure::internal(format!("plugin task: {e}")))??;
    stage_ms(timings, metrics, "plugins_after", t);
    count_audit(metrics, &after.audit);
    if let Some(block) = after.blocks.first() {
        return Err(JobFailure::blocked(
            ErrorCode::SafetyBlocked,
            block_info(block),
        ));
    }
    if after.images.len() != expected {
        return Err(JobFailure::internal("the plugin chain lost an image"));
    }

    // Encode and upload.
    let t = Instant::now();
    let format = job.output.format;
    let model = shared.parts.inference.model().clone();
    let mut result = base_result(
        shared,
        Some(job.job_id),
        JobStatus::Succeeded,
        attempt,
        job.metadata.clone(),
    );
    result.prompt_truncated = output.prompt_truncated;
    let uploads = after.images.into_iter().map(|out| {
        let model = model.clone();
        let signer = shared.signer.clone();
        async move {
            let index = out.index;
            let uri = job.output_key(index).map_err(|e| JobFailure::from(&e))?;
            let (w, h) = out.image.dimensions();
            let safety = safety_of(&out);
            let watermark = watermark_of(&out);
            let provenance = images::Provenance::of(&out);
            let image = out.image;
            // Signed last, so the sha256 below and the manifest's data hash are of the bytes
            // that are uploaded.
            let bytes = tokio::task::spawn_blocking(move || {
                let encoded = images::encode(&image, format, &provenance)?;
                signer.sign(encoded, format, &provenance)
            })
            .await
            .map_err(|e| JobFailure::internal(format!("encoding task: {e}")))??;
            let sha256 = hex(&Sha256::digest(&bytes));
            let request = PutRequest {
                content_type: Some(format.content_type().into()),
                metadata: vec![
                    ("job-id".into(), job.job_id.to_string()),
                    ("model".into(), model.id.clone()),
                    ("model-sha256".into(), model.weights_sha256.clone()),
                    ("licence".into(), LICENCE.into()),
                    ("seed".into(), out.seed.to_string()),
                ],
            };
            storage.put(&uri, Bytes::from(bytes), &request).await?;
            Ok::<_, JobFailure>(OutputImage {
                uri,
                index,
                seed: out.seed,
                sha256,
                width: w,
                height: h,
                content_type: format.content_type().into(),
                safety,
                watermark,
            })
        }
    });
    result.outputs = futures::future::try_join_all(uploads)
        .instrument(tracing::info_span!("upload"))
        .await?;
    stage_ms(timings, metrics, "upload", t);
    let t = Instant::now();
    result.timings_ms = timings.clone();
    let manifest_body = result
        .to_json()
        .map_err(|e| JobFailure::internal(e.to_string()))?;
    storage
        .put(
            &manifest,
            Bytes::from(manifest_body),
            &PutRequest {
                content_type: Some("application/json".into()),
                metadata: vec![("job-id".into(), job.job_id.to_string())],
            },
        )
        .await?;
    // In the published result (settle merges `timings`), not in the manifest it timed.
    stage_ms(timings, metrics, "manifest", t);
    Ok(result)
}

/// The outcome of a decoding task.
async fn decoding<T>(
    task: tokio::task::JoinHandle<Result<T, JobFailure>>,
) -> Result<T, JobFailure> {
    task.await
        .map_err(|e| JobFailure::internal(format!("decoding task: {e}")))?
}

/// The stored result of an earlier delivery, when its manifest and every output it lists exist.
async fn previous_result(
    storage: &dyn ObjectStorage,
    manifest: &ObjectRef,
) -> Result<Option<InpaintResult>, JobFailure> {
    let stored = match storage.get(manifest, Some(1 << 20)).await {
        Ok(stored) => stored,
        Err(inpaint_storage::StorageError::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let Ok(result) = InpaintResult::from_json(&stored.bytes) else {
        return Ok(None);
    };
    if result.status != JobStatus::Succeeded {
        return Ok(None);
    }
    for output in &result.outputs {
        if storage.size_of(&output.uri).await?.is_none() {
            return Ok(None);
        }
    }
    Ok(Some(result))
}

/// Forwards (step, total) from the engine to `reply_to`, at most one event per
/// [`PROGRESS_INTERVAL`] (the last step always goes out). Best effort.
fn progress_forwarder(
    publisher: Arc<Publisher>,
    job_id: JobId,
    reply_to: String,
    correlation_id: Option<inpaint_queue::lapin::types::ShortString>,
) -> crate::inference::Progress {
    let (tx, mut rx) = mpsc::channel::<(u32, u32)>(64);
    tokio::spawn(async move {
        let mut last_sent: Option<Instant> = None;
        while let Some((step, total)) = rx.recv().await {
            let due = last_sent.is_none_or(|at| at.elapsed() >= PROGRESS_INTERVAL) || step == total;
            if !due {
                continue;
            }
            let event = ProgressEvent {
                job_id,
                step,
                total,
            };
            let Ok(body) = event.to_json() else { continue };
            let mut properties =
                BasicProperties::default().with_content_type("application/json".into());
            if let Some(c) = &correlation_id {
                properties = properties.with_correlation_id(c.clone());
            }
            if let Err(e) = publisher.publish("", &reply_to, &body, properties).await {
                tracing::debug!(error = %e, "progress event not delivered");
            }
            last_sent = Some(Instant::now());
        }
    });
    tx
}

fn worker_info() -> WorkerInfo {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".into());
    WorkerInfo {
        version: env!("CARGO_PKG_VERSION").into(),
        host,
        missing_required_stages: vec![],
    }
}

/// The model a pass-through worker reports (for tests comparing results).
pub fn pass_through_model() -> ModelInfo {
    crate::inference::Inference::model(&PassThrough::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempts_count_retries_and_redeliveries() {
        assert_eq!(attempt_of(&BasicProperties::default()), 1);
        let mut h = FieldTable::default();
        h.insert(ATTEMPT_HEADER.into(), AMQPValue::LongLongInt(3));
        assert_eq!(
            attempt_of(&BasicProperties::default().with_headers(h.clone())),
            3
        );
        h.insert(DELIVERY_COUNT_HEADER.into(), AMQPValue::LongLongInt(2));
        assert_eq!(attempt_of(&BasicProperties::default().with_headers(h)), 5);
    }

    #[test]
    fn queue_wait_prefers_the_millisecond_header() {
        let now = 1_700_000_010_500_i64;
        assert_eq!(queue_wait(&BasicProperties::default(), now), None);
        let seconds = BasicProperties::default().with_timestamp(1_700_000_000);
        assert_eq!(
            queue_wait(&seconds, now),
            Some(Duration::from_millis(10_500))
        );
        let mut headers = FieldTable::default();
        headers.insert(
            TIMESTAMP_MS_HEADER.into(),
            AMQPValue::LongLongInt(1_700_000_010_000),
        );
        let millis = seconds.with_headers(headers);
        assert_eq!(queue_wait(&millis, now), Some(Duration::from_millis(500)));
        // A producer clock ahead of the worker's: no negative waits.
        let ahead = BasicProperties::default().with_timestamp(1_800_000_000);
        assert_eq!(queue_wait(&ahead, now), Some(Duration::ZERO));
    }

    #[test]
    fn allow_lists_check_bucket_and_prefix() {
        let buckets = vec!["in".to_owned()];
        assert!(allowed("in", "any/key", &buckets, &[]));
        assert!(!allowed("other", "any/key", &buckets, &[]));
        let prefixes = vec!["tenants/".to_owned()];
        assert!(allowed("in", "tenants/1/a.png", &buckets, &prefixes));
        assert!(!allowed("in", "other/a.png", &buckets, &prefixes));
    }

    fn output_with(metadata: &[(&str, &str)], scores: &[(&str, f32)]) -> PluginOutput {
        let mut out = PluginOutput::new(0, 1, image::RgbImage::new(1, 1));
        for (key, value) in metadata {
            let stage = key.split('.').next().unwrap_or_default().replace('_', "-");
            out.metadata.push(inpaint_plugin_api::MetadataEntry {
                stage,
                key: (*key).into(),
                value: (*value).into(),
            });
        }
        if !scores.is_empty() {
            out.reports.push(inpaint_plugin_api::StageReport {
                stage: SAFETY_STAGE.into(),
                scores: scores.iter().map(|(k, v)| ((*k).into(), *v)).collect(),
            });
        }
        out
    }

    type PluginOutput = inpaint_plugin_api::OutputImage;

    #[test]
    fn safety_report_comes_from_the_safety_stage() {
        assert_eq!(safety_of(&output_with(&[], &[])), None);
        let out = output_with(
            &[
                ("safety_checker.nsfw", "true"),
                ("safety_checker.flagged_concepts", "3,11"),
            ],
            &[
                ("concept.03", 0.012),
                ("concept.11", 0.5),
                ("concept.00", -0.25),
                ("special.0", -0.1),
                ("nsfw", 1.0),
                ("special_care", 0.0),
            ],
        );
        let report = safety_of(&out).expect("report");
        assert!(report.nsfw);
        assert_eq!(report.flagged_concepts, vec!["concept.03", "concept.11"]);
        assert_eq!(report.concept_scores.len(), 4);
        assert_eq!(report.concept_scores.get("concept.00"), Some(&-0.25));
        assert!(!report.concept_scores.contains_key("nsfw"));
        let clean = output_with(
            &[
                ("safety_checker.nsfw", "false"),
                ("safety_checker.flagged_concepts", ""),
            ],
            &[("concept.00", -0.25)],
        );
        let report = safety_of(&clean).expect("report");
        assert!(!report.nsfw && report.flagged_concepts.is_empty());
    }

    #[test]
    fn watermark_info_only_for_embedded_marks() {
        assert_eq!(watermark_of(&output_with(&[], &[])), None);
        let marked = output_with(
            &[
                ("watermark.method", "dwtDct"),
                ("watermark.payload", "5B2F"),
                ("watermark.status", "embedded"),
            ],
            &[],
        );
        let info = watermark_of(&marked).expect("watermark");
        assert_eq!(info.payload_hex, "5b2f");
        assert_eq!(info.method, "dwtDct");
        let skipped = output_with(
            &[
                ("watermark.payload", "5b2f"),
                ("watermark.status", "skipped"),
            ],
            &[],
        );
        assert_eq!(watermark_of(&skipped), None);
    }

    #[test]
    fn fallback_seeds_are_stable_per_job() {
        let id = JobId::new_random();
        assert_eq!(fallback_seed(id), fallback_seed(id));
        assert!(fallback_seed(id) < (1 << 53));
    }
}
