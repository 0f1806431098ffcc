//! Inference: the [`Inference`] trait (the model behind a job), its two implementations
//! ([`TchEngine`], the Stable Diffusion pipeline; [`PassThrough`], for tests and benchmarks) and
//! [`InferenceThread`], the dedicated OS thread that runs whichever one is configured, fed by a
//! channel, turning a panic into a job error.
//!
//! Batching: the thread takes one request at a time today. A batch of compatible jobs (same
//! size, steps and scheduler) can be added as a `run_batch` method with a default that loops
//! over [`Inference::run`], and a thread loop that drains compatible work from the channel;
//! nothing in the runner assumes one job per call beyond the reply channel per request.

use std::io::Read;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use image::RgbImage;
use inpaint_engine::EngineError;
use inpaint_engine::job::JobSpec;
use inpaint_engine::model_folder::LoadOptions;
use inpaint_engine::pipeline::{InpaintPipeline, StepControl};
use inpaint_engine::schedulers::SchedulerKind;
use inpaint_job::{JobId, ModelInfo, Scheduler};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::settings::EngineConfig;

/// One inference call: the engine's own request ([`JobSpec`], which the engine validates)
/// and the job it belongs to, for logs. Built once from the job by the flow; no other copy of
/// the parameters exists between the job message and the engine.
#[derive(Clone, Debug)]
pub struct InferenceRequest {
    /// The job, for logs.
    pub job_id: JobId,
    /// Prompts (after the plugin chain), images, sizes, steps, scheduler, seeds, compositing.
    pub spec: JobSpec,
}

/// What inference made.
#[derive(Clone, Debug)]
pub struct InferenceOutput {
    /// One image per seed, at output size, before compositing.
    pub images: Vec<RgbImage>,
    /// Whether a prompt was cut to the tokenizer's length.
    pub prompt_truncated: bool,
}

/// Why inference did not produce images.
#[derive(Debug, thiserror::Error)]
pub enum InferenceError {
    /// A cancel request stopped the job between two steps.
    #[error("cancelled")]
    Cancelled,
    /// The device ran out of memory (transient: another attempt may fit).
    #[error("out of memory: {0}")]
    OutOfMemory(String),
    /// The request does not fit the model (permanent).
    #[error("invalid input for the model: {0}")]
    InvalidInput(String),
    /// The model failed.
    #[error("inference failed: {0}")]
    Failed(String),
    /// The engine panicked; the thread survived.
    #[error("inference panicked: {0}")]
    Panicked(String),
    /// The inference thread is gone.
    #[error("the inference thread is not running")]
    Unavailable,
}

/// A model that turns requests into images. Runs on the inference thread only, so it needs to
/// be `Send` but not `Sync`, and may keep mutable state.
pub trait Inference: Send {
    /// What results report as the model.
    fn model(&self) -> ModelInfo;

    /// Runs one request. `on_step(done, total)` is called after each denoising step; when it
    /// returns [`StepControl::Cancel`] the run stops with [`InferenceError::Cancelled`].
    fn run(
        &mut self,
        request: &InferenceRequest,
        on_step: &mut dyn FnMut(usize, usize) -> StepControl,
    ) -> Result<InferenceOutput, InferenceError>;
}

/// Returns the input image for every seed, resized to an explicit width/height (a grey canvas
/// in text-only mode), calling the step
/// callback `num_inference_steps` times with an optional pause per step. For tests and for
/// measuring the worker's own overhead.
#[derive(Clone, Debug, Default)]
pub struct PassThrough {
    /// Pause per step (0: none).
    pub step_delay: Duration,
    /// Calls so far, shared with clones (tests check that idempotent redeliveries do not run).
    pub calls: Arc<std::sync::atomic::AtomicUsize>,
}

impl Inference for PassThrough {
    fn model(&self) -> ModelInfo {
        ModelInfo {
            id: "pass-through".into(),
            weights_sha256: "0".repeat(64),
        }
    }

    fn run(
        &mut self,
        request: &InferenceRequest,
        on_step: &mut dyn FnMut(usize, usize) -> StepControl,
    ) -> Result<InferenceOutput, InferenceError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let spec = &request.spec;
        let total = spec.num_inference_steps;
        for step in 1..=total {
            if !self.step_delay.is_zero() {
                std::thread::sleep(self.step_delay);
            }
            if on_step(step, total) == StepControl::Cancel {
                return Err(InferenceError::Cancelled);
            }
        }
        let image = match &spec.image {
            Some(image) => match (spec.width, spec.height) {
                (Some(w), Some(h)) if (w, h) != image.dimensions() => {
                    image::imageops::resize(image, w, h, image::imageops::FilterType::Triangle)
                }
                _ => image.clone(),
            },
            None => RgbImage::from_pixel(
                spec.width.unwrap_or(512),
                spec.height.unwrap_or(512),
                image::Rgb([128, 128, 128]),
            ),
        };
        Ok(InferenceOutput {
            images: spec.seeds.iter().map(|_| image.clone()).collect(),
            prompt_truncated: false,
        })
    }
}

/// The model id results report for `engine.model = "embedded-tiny"`: the name of the parity
/// fixture it is built from (`tests/parity/fixtures/models/tiny-sd-a`).
pub const EMBEDDED_TINY_ID: &str = "tiny-sd-a";

/// The Stable Diffusion inpainting pipeline on libtorch.
#[derive(Debug)]
pub struct TchEngine {
    pipeline: InpaintPipeline,
    model: ModelInfo,
}

impl TchEngine {
    /// Loads the configured model folder and hashes its weights.
    pub fn load(config: &EngineConfig) -> Result<Self, InferenceError> {
        let folder = config.model_folder();
        let device = config
            .device
            .resolve()
            .map_err(|e| InferenceError::Failed(e.to_string()))?;
        let options = LoadOptions {
            device,
            kind: config.precision.kind(),
            variant: (!config.variant.is_empty()).then(|| config.variant.clone()),
        };
        let pipeline = InpaintPipeline::load(&folder, &options)
            .map_err(|e| InferenceError::Failed(e.to_string()))?;
        let id = if !config.model_id.is_empty() {
            config.model_id.clone()
        } else if config.model == crate::settings::EMBEDDED_TINY {
            // Its files are written to a cache folder named after their digest; results name
            // the model, not the folder.
            EMBEDDED_TINY_ID.to_owned()
        } else {
            folder
                .canonicalize()
                .ok()
                .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                .unwrap_or_else(|| config.model.clone())
        };
        let weights_sha256 =
            weights_sha256(&folder).map_err(|e| InferenceError::Failed(e.to_string()))?;
        Ok(Self {
            pipeline,
            model: ModelInfo { id, weights_sha256 },
        })
    }
}

/// The engine's scheduler for the job's.
pub fn scheduler_kind(scheduler: Scheduler) -> SchedulerKind {
    match scheduler {
        Scheduler::Pndm => SchedulerKind::Pndm,
        Scheduler::Ddim => SchedulerKind::Ddim,
        Scheduler::Euler => SchedulerKind::Euler,
        Scheduler::EulerAncestral => SchedulerKind::EulerAncestral,
        Scheduler::DpmPp2m => SchedulerKind::Dpmpp2m,
        Scheduler::DpmPp2mKarras => SchedulerKind::Dpmpp2mKarras,
    }
}

impl Inference for TchEngine {
    fn model(&self) -> ModelInfo {
        self.model.clone()
    }

    fn run(
        &mut self,
        r: &InferenceRequest,
        on_step: &mut dyn FnMut(usize, usize) -> StepControl,
    ) -> Result<InferenceOutput, InferenceError> {
        match self.pipeline.run_job(&r.spec, on_step) {
            Ok(out) => Ok(InferenceOutput {
                images: out.images,
                prompt_truncated: out.prompt_truncated,
            }),
            Err(EngineError::Cancelled) => Err(InferenceError::Cancelled),
            Err(EngineError::InvalidInput(m)) => Err(InferenceError::InvalidInput(m)),
            Err(e) => {
                let message = e.to_string();
                if message.to_ascii_lowercase().contains("out of memory") {
                    Err(InferenceError::OutOfMemory(message))
                } else {
                    Err(InferenceError::Failed(message))
                }
            }
        }
    }
}

/// SHA-256 over every `*.safetensors` file under `folder`, in sorted path order (name and bytes),
/// lowercase hex: pins the exact weights a result was made with.
pub fn weights_sha256(folder: &Path) -> std::io::Result<String> {
    fn collect(dir: &Path, out: &mut Vec<std::path::PathBuf>) -> std::io::Result<()> {
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            if path.is_dir() {
                collect(&path, out)?;
            } else if path.extension().is_some_and(|e| e == "safetensors") {
                out.push(path);
            }
        }
        Ok(())
    }
    let mut files = Vec::new();
    if folder.is_file() {
        files.push(folder.to_path_buf()); // a single-file checkpoint
    } else {
        collect(folder, &mut files)?;
    }
    files.sort();
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    for file in files {
        if let Ok(relative) = file.strip_prefix(folder) {
            hasher.update(relative.to_string_lossy().as_bytes());
        }
        let mut reader = std::fs::File::open(&file)?;
        loop {
            let n = reader.read(&mut buffer)?;
            if n == 0 {
                break;
            }
            hasher.update(&buffer[..n]);
        }
    }
    Ok(hex(&hasher.finalize()))
}

/// Lowercase hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// Progress of a running job: (step, total).
pub type Progress = mpsc::Sender<(u32, u32)>;

/// Asked before the run and after each step, on the inference thread: true stops the run there
/// as a cancel does (the flow gives the job's deadline, read from its clock).
pub type StopWhen = Arc<dyn Fn() -> bool + Send + Sync>;

struct Work {
    request: InferenceRequest,
    cancelled: CancellationToken,
    stop_when: Option<StopWhen>,
    progress: Option<Progress>,
    reply: oneshot::Sender<Result<InferenceOutput, InferenceError>>,
}

/// The dedicated inference thread. Cloning the handle shares the thread; the thread ends when
/// the last handle is dropped.
#[derive(Clone, Debug)]
pub struct InferenceThread {
    work: std::sync::mpsc::Sender<Work>,
    model: ModelInfo,
}

impl std::fmt::Debug for Work {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Work")
            .field("job_id", &self.request.job_id)
            .finish()
    }
}

impl InferenceThread {
    /// Starts the thread and builds the engine on it with `factory` (models are loaded where
    /// they run); returns once the engine is ready, or with its error.
    pub async fn spawn<F>(factory: F) -> Result<Self, InferenceError>
    where
        F: FnOnce() -> Result<Box<dyn Inference>, InferenceError> + Send + 'static,
    {
        let (ready_tx, ready_rx) = oneshot::channel();
        let (work_tx, work_rx) = std::sync::mpsc::channel::<Work>();
        std::thread::Builder::new()
            .name("inference".into())
            .spawn(move || {
                let engine = match catch_unwind(AssertUnwindSafe(factory)) {
                    Ok(Ok(engine)) => engine,
                    Ok(Err(e)) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                    Err(panic) => {
                        let _ = ready_tx.send(Err(InferenceError::Panicked(panic_message(&panic))));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(engine.model()));
                serve(engine, work_rx);
            })
            .map_err(|e| {
                InferenceError::Failed(format!("cannot start the inference thread: {e}"))
            })?;
        let model = ready_rx.await.map_err(|_| InferenceError::Unavailable)??;
        Ok(Self {
            work: work_tx,
            model,
        })
    }

    /// The loaded model.
    pub fn model(&self) -> &ModelInfo {
        &self.model
    }

    /// Queues `request` and waits for its images. Cancelling `cancelled` stops it while queued
    /// or between steps; `progress` receives (step, total) after each step (dropped when full).
    pub async fn run(
        &self,
        request: InferenceRequest,
        cancelled: CancellationToken,
        progress: Option<Progress>,
    ) -> Result<InferenceOutput, InferenceError> {
        self.run_until(request, cancelled, None, progress).await
    }

    /// [`InferenceThread::run`], also stopped (as by a cancel) once `stop_when` says so: checked
    /// before the run starts and after every step, like the cancel token.
    pub async fn run_until(
        &self,
        request: InferenceRequest,
        cancelled: CancellationToken,
        stop_when: Option<StopWhen>,
        progress: Option<Progress>,
    ) -> Result<InferenceOutput, InferenceError> {
        let (reply, answer) = oneshot::channel();
        self.work
            .send(Work {
                request,
                cancelled,
                stop_when,
                progress,
                reply,
            })
            .map_err(|_| InferenceError::Unavailable)?;
        answer.await.map_err(|_| InferenceError::Unavailable)?
    }
}

fn serve(mut engine: Box<dyn Inference>, work: std::sync::mpsc::Receiver<Work>) {
    while let Ok(item) = work.recv() {
        let Work {
            request,
            cancelled,
            stop_when,
            progress,
            reply,
        } = item;
        let stopped = || cancelled.is_cancelled() || stop_when.as_ref().is_some_and(|stop| stop());
        if stopped() {
            let _ = reply.send(Err(InferenceError::Cancelled));
            continue;
        }
        let _span = tracing::info_span!("inference", job_id = %request.job_id).entered();
        let mut on_step = |step: usize, total: usize| {
            if let Some(progress) = &progress {
                let _ = progress.try_send((step as u32, total as u32));
            }
            if stopped() {
                StepControl::Cancel
            } else {
                StepControl::Continue
            }
        };
        let result = catch_unwind(AssertUnwindSafe(|| engine.run(&request, &mut on_step)))
            .unwrap_or_else(|panic| Err(panic_failure(&panic)));
        let _ = reply.send(result);
    }
}

/// A panic on the inference thread as a job error. libtorch reports a CUDA allocation failure
/// through tch's infallible ops as a panic whose message says "out of memory": that one is
/// transient (another attempt, or another worker, may fit), every other panic is not.
fn panic_failure(panic: &Box<dyn std::any::Any + Send>) -> InferenceError {
    let message = panic_message(panic);
    if message.to_ascii_lowercase().contains("out of memory") {
        InferenceError::OutOfMemory(message)
    } else {
        InferenceError::Panicked(message)
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_out_of_memory_panic_is_transient_and_other_panics_are_not() {
        let oom =
            catch_unwind(|| panic!("Torch(\"CUDA out of memory. Tried to allocate 2.00 GiB\")"))
                .expect_err("panics");
        assert!(matches!(
            panic_failure(&oom),
            InferenceError::OutOfMemory(_)
        ));
        let bug = catch_unwind(|| panic!("index out of bounds")).expect_err("panics");
        assert!(matches!(panic_failure(&bug), InferenceError::Panicked(_)));
    }

    struct Panicky;
    impl Inference for Panicky {
        fn model(&self) -> ModelInfo {
            PassThrough::default().model()
        }
        fn run(
            &mut self,
            request: &InferenceRequest,
            _: &mut dyn FnMut(usize, usize) -> StepControl,
        ) -> Result<InferenceOutput, InferenceError> {
            if request.spec.prompt == "boom" {
                panic!("engine exploded");
            }
            Ok(InferenceOutput {
                images: vec![],
                prompt_truncated: false,
            })
        }
    }

    fn request(prompt: &str) -> InferenceRequest {
        InferenceRequest {
            job_id: JobId::new_random(),
            spec: JobSpec {
                prompt: prompt.into(),
                negative_prompt: None,
                image: None,
                mask: None,
                width: Some(8),
                height: Some(8),
                num_inference_steps: 3,
                guidance_scale: 7.5,
                strength: 1.0,
                eta: 0.0,
                scheduler: SchedulerKind::Pndm,
                seeds: vec![1, 2],
                preserve_unmasked: true,
                mask_grow_px: 0,
                mask_feather_px: 0,
                crop_to_mask: None,
                max_side: 1024,
            },
        }
    }

    #[tokio::test]
    async fn a_panic_is_a_job_error_and_the_thread_lives_on() {
        let thread = InferenceThread::spawn(|| Ok(Box::new(Panicky) as Box<dyn Inference>))
            .await
            .expect("spawn");
        let err = thread
            .run(request("boom"), CancellationToken::new(), None)
            .await
            .expect_err("panics");
        assert!(
            matches!(err, InferenceError::Panicked(ref m) if m.contains("exploded")),
            "{err}"
        );
        thread
            .run(request("fine"), CancellationToken::new(), None)
            .await
            .expect("still serving");
    }

    #[tokio::test]
    async fn pass_through_reports_progress_and_stops_when_cancelled() {
        let engine = PassThrough::default();
        let thread = InferenceThread::spawn(move || Ok(Box::new(engine) as Box<dyn Inference>))
            .await
            .expect("spawn");
        let (tx, mut rx) = mpsc::channel(16);
        let out = thread
            .run(request("x"), CancellationToken::new(), Some(tx))
            .await
            .expect("runs");
        assert_eq!(out.images.len(), 2);
        assert_eq!(out.images[0].dimensions(), (8, 8));
        let mut steps = Vec::new();
        while let Ok(step) = rx.try_recv() {
            steps.push(step);
        }
        assert_eq!(steps, vec![(1, 3), (2, 3), (3, 3)]);
        let cancelled = CancellationToken::new();
        cancelled.cancel();
        let err = thread
            .run(request("x"), cancelled, None)
            .await
            .expect_err("cancelled");
        assert!(matches!(err, InferenceError::Cancelled));
    }
}
