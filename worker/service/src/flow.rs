//! [`JobFlow`]: one parsed job from admission to its stored result, with no broker in sight.
//!
//! The steps read top to bottom in [`JobFlow::run`]: admission → slot → inputs (idempotency,
//! downloads, decoding) → plugins before inference → inference → plugins after output →
//! encode, provenance and signing → store → manifest. The worker's runner calls it for every
//! delivery and settles what it returns; `inpaint-worker inpaint` calls it for one job on local
//! files, so both produce the same bytes. Tests drive it with an in-memory store, the
//! pass-through engine and a fake clock.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use image::{GrayImage, RgbImage};
use inpaint_job::{
    ChainLimits, ErrorCode, InpaintJob, InpaintResult, JobId, JobStatus, WorkerInfo,
};
use inpaint_plugin_api::{Chain, JobContext, OutputImage, StageKind};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::cancel::Cancellations;
use crate::error::JobFailure;
use crate::images::Signer;
use crate::inference::{InferenceRequest, InferenceThread, Progress, scheduler_kind};
use crate::metrics::Metrics;
use crate::parts::Parts;
use crate::report;
use crate::settings::{AllowConfig, LimitsConfig, Settings};
use crate::store::ObjectStorage;
use inpaint_engine::job::JobSpec;

/// Milliseconds per step of one job, as the result's `timings_ms` reports them.
pub type Timings = BTreeMap<String, u64>;

/// What "now" is: the system clock in the worker, a fixed one in tests.
pub type Clock = Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>;

/// The system clock.
pub fn system_clock() -> Clock {
    Arc::new(Utc::now)
}

/// What one run of the flow gets from its caller besides the job.
#[derive(Debug, Default)]
pub struct JobRun {
    /// The attempt number the result reports.
    pub attempt: u32,
    /// Receives (step, total) after each denoising step.
    pub progress: Option<Progress>,
    /// Cancelled when the worker starts draining: a job still waiting for a slot stops there,
    /// interrupted, and its delivery is released.
    pub draining: CancellationToken,
    /// Cancelled when the grace period is over: inference stops between two steps.
    pub stop: CancellationToken,
}

/// The per-job work of a worker: everything between a parsed job and its result.
pub struct JobFlow {
    storage: Arc<dyn ObjectStorage>,
    inference: InferenceThread,
    chain: Arc<Chain>,
    metrics: Arc<Metrics>,
    signer: Signer,
    limits: LimitsConfig,
    allow: AllowConfig,
    cancels: Cancellations,
    slots: Semaphore,
    worker: WorkerInfo,
    /// The required kinds the chain lacks (the override), as the provenance fields name them;
    /// `worker.missing_required_stages` holds the same by name.
    missing_stages: Vec<StageKind>,
    chain_limits: ChainLimits,
    clock: Clock,
}

impl std::fmt::Debug for JobFlow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobFlow")
            .field("model", self.inference.model())
            .field("chain", &self.chain)
            .field("worker", &self.worker)
            .finish_non_exhaustive()
    }
}

/// What the inputs step found: an earlier delivery's stored result, or inputs to compute.
enum Fetched {
    Answered(Box<InpaintResult>),
    Fresh(Inputs),
}

/// Inputs of a job that has to be computed.
struct Inputs {
    image: Option<RgbImage>,
    mask: Option<GrayImage>,
}

impl JobFlow {
    /// The flow of a worker with `parts`, configured by `settings`, signing with `signer`.
    pub fn new(settings: &Settings, parts: &Parts, signer: Signer) -> Self {
        let mut worker = worker_info();
        let missing_stages = inpaint_stages::missing_required(&settings.chain.stages);
        worker.missing_required_stages = missing_stages
            .iter()
            .map(|kind| kind.as_str().to_owned())
            .collect();
        Self {
            storage: Arc::clone(&parts.storage),
            inference: parts.inference.clone(),
            chain: Arc::clone(&parts.chain),
            metrics: Arc::clone(&parts.metrics),
            signer,
            limits: settings.limits.clone(),
            allow: settings.allow.clone(),
            cancels: Cancellations::default(),
            slots: Semaphore::new(settings.concurrency.in_flight),
            worker,
            missing_stages,
            chain_limits: chain_limits(&settings.chain.stages),
            clock: system_clock(),
        }
    }

    /// The same flow reading the time from `clock`.
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// The cancel requests this flow honours (the runner's cancel consumer records them).
    pub fn cancels(&self) -> &Cancellations {
        &self.cancels
    }

    /// The required stages this worker runs without (empty unless `allow_unsafe_chain`).
    pub fn missing_required_stages(&self) -> &[String] {
        &self.worker.missing_required_stages
    }

    /// Whether outputs are C2PA-signed.
    pub fn is_signing(&self) -> bool {
        self.signer.is_signing()
    }

    /// The model results report.
    pub fn model(&self) -> &inpaint_job::ModelInfo {
        self.inference.model()
    }

    /// A result of this worker and model, created now, without outputs.
    pub fn result(
        &self,
        job_id: Option<JobId>,
        status: JobStatus,
        attempt: u32,
        metadata: BTreeMap<String, String>,
    ) -> InpaintResult {
        let mut result = InpaintResult::new(
            job_id,
            status,
            self.inference.model().clone(),
            self.worker.clone(),
            (self.clock)(),
        );
        result.attempt = attempt;
        // The job's metadata goes back untouched; the override is reported by the worker section.
        result.metadata = metadata;
        result
    }

    /// The failure result of a job that did not succeed.
    pub fn failure_result(
        &self,
        job_id: Option<JobId>,
        attempt: u32,
        metadata: BTreeMap<String, String>,
        failure: &JobFailure,
    ) -> InpaintResult {
        let mut result = self.result(job_id, failure.code.status(), attempt, metadata);
        result.error = Some(failure.to_error_info());
        result.block = failure.block.as_deref().cloned();
        result
    }

    /// Runs one parsed job to its stored result, or to the failure that stopped it.
    pub async fn run(
        &self,
        job: &InpaintJob,
        run: JobRun,
        timings: &mut Timings,
    ) -> Result<InpaintResult, JobFailure> {
        let budget = self.budget_from((self.clock)());
        self.admit(job)?;
        let _slot = self.slot(job, &run).await?;
        self.in_time(job, budget, "while it waited for an inference slot")?;
        let inputs = match self.inputs(job, timings).await? {
            Fetched::Answered(mut previous) => {
                tracing::debug!("outputs already written by an earlier delivery; not recomputing");
                previous.attempt = run.attempt;
                previous.replay = true;
                return Ok(*previous);
            }
            Fetched::Fresh(inputs) => inputs,
        };
        let context = self.before_inference(job, &inputs, timings).await?;
        let seeds = job.per_image_seeds(fallback_seed(job.job_id));
        let request = inference_request(job, &context, inputs, seeds.clone(), &self.limits);
        self.in_time(job, budget, "before inference")?;
        let made = self
            .infer(job, budget, request, run.progress, &run.stop, timings)
            .await?;
        let outputs = self
            .after_output(&context, made.images, &seeds, timings)
            .await?;
        self.in_time(job, budget, "before storing the outputs")?;
        let mut result = self.result(
            Some(job.job_id),
            JobStatus::Succeeded,
            run.attempt,
            job.metadata.clone(),
        );
        result.prompt_truncated = made.prompt_truncated;
        result.request_sha256 = Some(job.request_sha256());
        result.outputs = self.store(job, outputs, timings).await?;
        self.write_manifest(job, result, timings).await
    }

    /// One job at a time per in-flight slot; a job waiting for a slot can still be cancelled,
    /// and is released untouched when the worker drains.
    async fn slot(
        &self,
        job: &InpaintJob,
        run: &JobRun,
    ) -> Result<tokio::sync::SemaphorePermit<'_>, JobFailure> {
        let permit = tokio::select! {
            permit = self.slots.acquire() => permit.map_err(|_| JobFailure::interrupted("worker shutting down"))?,
            () = run.draining.cancelled() => return Err(JobFailure::interrupted("worker shutting down before the job started")),
        };
        self.not_cancelled(job)?;
        Ok(permit)
    }

    /// The plugin chain before inference: may rewrite the prompts or block the job.
    async fn before_inference(
        &self,
        job: &InpaintJob,
        inputs: &Inputs,
        timings: &mut Timings,
    ) -> Result<JobContext, JobFailure> {
        let t = Instant::now();
        let chain = Arc::clone(&self.chain);
        let context = JobContext {
            job_id: *job.job_id.as_uuid(),
            prompt: job.prompt.clone(),
            negative_prompt: job.negative_prompt.clone(),
            params: job.params.clone(),
            metadata: job.metadata.clone(),
            text_only: job.is_text_only(),
            reports: Vec::new(),
            findings: Vec::new(),
            // A copy: the engine request takes the image by value.
            input_image: inputs.image.clone().map(Arc::new),
        };
        let before = blocking("plugin", move || {
            chain.before_inference(context).map_err(JobFailure::from)
        })
        .instrument(tracing::info_span!("plugins", hook = "before-inference"))
        .await?;
        self.timed(timings, "plugins_before", t);
        report::count_audit(&self.metrics, &before.audit);
        if let Some(block) = &before.block {
            return Err(JobFailure::blocked(
                ErrorCode::PolicyBlocked,
                report::block_info(block),
            ));
        }
        Ok(before.context)
    }

    /// Inference on the dedicated thread, stopped by a cancel request for the job, by `stop`,
    /// or between two steps once the job's `expires_at` or time `budget` has passed (the
    /// flow's clock).
    async fn infer(
        &self,
        job: &InpaintJob,
        budget: DateTime<Utc>,
        request: InferenceRequest,
        progress: Option<Progress>,
        stop: &CancellationToken,
        timings: &mut Timings,
    ) -> Result<crate::inference::InferenceOutput, JobFailure> {
        let t = Instant::now();
        let running = self.cancels.start(job.job_id, stop);
        let deadline = job.expires_at.map_or(budget, |expires| expires.min(budget));
        let clock = Arc::clone(&self.clock);
        let stop_when = Some(Arc::new(move || clock() >= deadline) as crate::inference::StopWhen);
        let output = self
            .inference
            .run_until(request, running.token.clone(), stop_when, progress)
            .await;
        let cancelled = running.token.is_cancelled();
        self.cancels.finish(running);
        let output = match output {
            // The run was stopped, and not by a cancel request or the worker: the deadline.
            Err(crate::inference::InferenceError::Cancelled) if !cancelled => {
                self.in_time(job, budget, "during inference")?;
                return Err(JobFailure::internal("inference stopped without a cause"));
            }
            output => output?,
        };
        self.timed(timings, "inference", t);
        Ok(output)
    }

    /// The plugin chain after output: safety checks, watermark, provenance fields.
    async fn after_output(
        &self,
        context: &JobContext,
        images: Vec<RgbImage>,
        seeds: &[u64],
        timings: &mut Timings,
    ) -> Result<Vec<OutputImage>, JobFailure> {
        let t = Instant::now();
        let chain = Arc::clone(&self.chain);
        let outputs: Vec<OutputImage> = images
            .into_iter()
            .zip(seeds)
            .enumerate()
            .map(|(i, (img, seed))| OutputImage::new(i as u32, *seed, img))
            .collect();
        let expected = outputs.len();
        let context = context.clone();
        let after = blocking("plugin", move || {
            chain
                .after_output(&context, outputs)
                .map_err(JobFailure::from)
        })
        .instrument(tracing::info_span!("plugins", hook = "after-output"))
        .await?;
        self.timed(timings, "plugins_after", t);
        report::count_audit(&self.metrics, &after.audit);
        if let Some(block) = after.blocks.first() {
            return Err(JobFailure::blocked(
                ErrorCode::SafetyBlocked,
                report::block_info(block),
            ));
        }
        if after.images.len() != expected {
            return Err(JobFailure::internal("the plugin chain lost an image"));
        }
        let mut images = after.images;
        for out in &mut images {
            report::mark_missing_stages(out, &self.missing_stages);
        }
        Ok(images)
    }

    fn timed(&self, timings: &mut Timings, stage: &str, started: Instant) {
        let elapsed = started.elapsed();
        timings.insert(stage.to_owned(), elapsed.as_millis() as u64);
        self.metrics.observe_stage(stage, elapsed.as_secs_f64());
    }
}

/// The engine's request for `job` after the chain rewrote its prompts.
fn inference_request(
    job: &InpaintJob,
    context: &JobContext,
    inputs: Inputs,
    seeds: Vec<u64>,
    limits: &LimitsConfig,
) -> InferenceRequest {
    let params = &job.params;
    InferenceRequest {
        job_id: job.job_id,
        spec: JobSpec {
            prompt: context.prompt.clone(),
            negative_prompt: context.negative_prompt.clone(),
            image: inputs.image,
            mask: inputs.mask,
            width: params.width,
            height: params.height,
            num_inference_steps: params.num_inference_steps as usize,
            guidance_scale: params.guidance_scale,
            strength: params.strength,
            eta: params.eta,
            scheduler: scheduler_kind(params.scheduler),
            seeds,
            preserve_unmasked: params.preserve_unmasked,
            mask_grow_px: params.mask_grow_px,
            mask_feather_px: params.mask_feather_px,
            crop_to_mask: params.crop_to_mask.map(|c| c.padding_px),
            max_side: limits.max_output_side,
        },
    }
}

/// Runs CPU work off the async threads; a panic in it is an internal failure.
async fn blocking<T: Send + 'static>(
    what: &str,
    work: impl FnOnce() -> Result<T, JobFailure> + Send + 'static,
) -> Result<T, JobFailure> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| JobFailure::internal(format!("{what} task: {e}")))?
}

#[path = "flow_admit.rs"]
mod admit;
#[path = "flow_io.rs"]
mod io;
#[cfg(test)]
use admit::allowed;
pub use admit::{chain_limits, missing_required_stages};
pub use io::{LICENCE, MANIFEST_NAME, fallback_seed, manifest_ref, worker_info};

#[cfg(test)]
#[path = "flow_tests.rs"]
mod tests;
