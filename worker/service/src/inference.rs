//! Inference: the [`Inference`] trait (the model behind a job), its two implementations
//! ([`TchEngine`], the Stable Diffusion pipeline; [`PassThrough`], for tests and benchmarks) and
//! [`InferenceThread`], the dedicated OS thread that runs whichever one is configured, fed by a
//! channel, turning a panic into a job error.
//!
//! Cross-job batching lives in [`crate::batching`]: the thread gathers queued requests that can
//! share one denoising loop (same [`BatchShape`]) into one call of [`Inference::run_batch`].

use std::io::Read;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use image::RgbImage;
use inpaint_engine::EngineError;
use inpaint_engine::job::{JobItem, JobSpec};
use inpaint_engine::model_folder::LoadOptions;
use inpaint_engine::pipeline::{BatchShape, InpaintPipeline, StepControl};
use inpaint_engine::schedulers::SchedulerKind;
use inpaint_job::{JobId, ModelInfo, Scheduler};
use sha2::{Digest, Sha256};

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

/// One request of [`Inference::run_batch`], with its own step callback.
pub struct BatchRun<'a> {
    pub request: &'a InferenceRequest,
    /// `on_step(done, total)` after each step of this request; [`StepControl::Cancel`] stops it
    /// alone (its result is [`InferenceError::Cancelled`]).
    pub on_step: &'a mut dyn FnMut(usize, usize) -> StepControl,
}

impl std::fmt::Debug for BatchRun<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchRun")
            .field("job_id", &self.request.job_id)
            .finish_non_exhaustive()
    }
}

/// A model that turns requests into images. Runs on the inference thread only, so it needs to
/// be `Send` but not `Sync`, and may keep mutable state.
pub trait Inference: Send {
    /// What results report as the model.
    fn model(&self) -> ModelInfo;

    /// The denoising loop `request` needs: requests of equal shape may share one
    /// [`Inference::run_batch`] call. An error refuses the request at once, alone.
    fn shape(&self, request: &InferenceRequest) -> Result<BatchShape, InferenceError>;

    /// Runs requests of one shape together; one result per request, in order, each the same
    /// as the request run alone. The outer error fails the batch as a whole (out of memory, a
    /// model failure inside the shared loop): the caller splits it and tries again.
    fn run_batch(
        &mut self,
        batch: &mut [BatchRun<'_>],
    ) -> Result<Vec<Result<InferenceOutput, InferenceError>>, InferenceError>;

    /// Device memory a batch of `images` images of `shape` needs beyond the weights, where the
    /// engine can estimate it: what `engine.batch_memory_mib` is compared with.
    fn batch_bytes(&self, _shape: &BatchShape, _images: usize) -> Option<u64> {
        None
    }

    /// Runs one request: [`Inference::run_batch`] with a batch of one.
    fn run(
        &mut self,
        request: &InferenceRequest,
        on_step: &mut dyn FnMut(usize, usize) -> StepControl,
    ) -> Result<InferenceOutput, InferenceError> {
        let mut batch = [BatchRun { request, on_step }];
        self.run_batch(&mut batch)?.pop().unwrap_or_else(|| {
            Err(InferenceError::Failed(
                "the batch returned no result".into(),
            ))
        })
    }
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

impl PassThrough {
    fn run_one(
        &self,
        request: &InferenceRequest,
        on_step: &mut dyn FnMut(usize, usize) -> StepControl,
    ) -> Result<InferenceOutput, InferenceError> {
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

impl Inference for PassThrough {
    fn model(&self) -> ModelInfo {
        ModelInfo {
            id: "pass-through".into(),
            weights_sha256: "0".repeat(64),
        }
    }

    fn shape(&self, request: &InferenceRequest) -> Result<BatchShape, InferenceError> {
        let spec = &request.spec;
        let (width, height) = match (&spec.image, spec.width, spec.height) {
            (_, Some(w), Some(h)) => (w, h),
            (Some(image), _, _) => image.dimensions(),
            (None, _, _) => (512, 512),
        };
        Ok(BatchShape {
            width,
            height,
            num_inference_steps: spec.num_inference_steps,
            scheduler: spec.scheduler,
            strength: spec.strength,
            eta: (spec.scheduler == SchedulerKind::Ddim).then_some(spec.eta),
        })
    }

    /// Steps the requests together, one call per request each step, as a real batch does.
    fn run_batch(
        &mut self,
        batch: &mut [BatchRun<'_>],
    ) -> Result<Vec<Result<InferenceOutput, InferenceError>>, InferenceError> {
        self.calls.fetch_add(batch.len(), Ordering::SeqCst);
        Ok(batch
            .iter_mut()
            .map(|run| self.run_one(run.request, &mut *run.on_step))
            .collect())
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
            variant: (!config.variant.is_empty()).then(|| config.variant.clone()),
            channels_last: config.channels_last,
            ..LoadOptions::resolved(device, config.precision, config.vae_precision)
        };
        let backend = if config.cudnn_benchmark {
            inpaint_engine::configure_backend(device)
        } else {
            Vec::new()
        };
        tracing::info!(
            device = ?device,
            precision = %config.precision,
            kind = ?options.kind,
            vae_kind = ?options.vae_kind,
            channels_last = options.channels_last,
            backend = %backend.join(","),
            "engine settings"
        );
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

impl TchEngine {
    /// An engine over a pipeline loaded elsewhere (the `bench` command), reporting `model`.
    pub fn from_pipeline(pipeline: InpaintPipeline, model: ModelInfo) -> Self {
        Self { pipeline, model }
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

/// An engine error as an inference error: out-of-memory is transient, bad input permanent.
fn inference_error(e: EngineError) -> InferenceError {
    match e {
        EngineError::Cancelled => InferenceError::Cancelled,
        EngineError::InvalidInput(m) => InferenceError::InvalidInput(m),
        e => {
            let message = e.to_string();
            if message.to_ascii_lowercase().contains("out of memory") {
                InferenceError::OutOfMemory(message)
            } else {
                InferenceError::Failed(message)
            }
        }
    }
}

impl Inference for TchEngine {
    fn model(&self) -> ModelInfo {
        self.model.clone()
    }

    fn shape(&self, request: &InferenceRequest) -> Result<BatchShape, InferenceError> {
        self.pipeline
            .job_shape(&request.spec)
            .map_err(inference_error)
    }

    fn run_batch(
        &mut self,
        batch: &mut [BatchRun<'_>],
    ) -> Result<Vec<Result<InferenceOutput, InferenceError>>, InferenceError> {
        // A job whose own checks fail ends here, alone; the rest share the loop.
        let mut results: Vec<Option<Result<InferenceOutput, InferenceError>>> =
            batch.iter().map(|_| None).collect();
        let mut items = Vec::with_capacity(batch.len());
        let mut members = Vec::with_capacity(batch.len());
        for (i, run) in batch.iter_mut().enumerate() {
            match self.pipeline.plan_job(&run.request.spec) {
                Ok(job) => {
                    members.push(i);
                    items.push(JobItem {
                        job,
                        on_step: &mut *run.on_step,
                    });
                }
                Err(e) => results[i] = Some(Err(inference_error(e))),
            }
        }
        if !items.is_empty() {
            let outputs = self.pipeline.run_jobs(items).map_err(inference_error)?;
            for (i, out) in members.into_iter().zip(outputs) {
                results[i] = Some(out.map_err(inference_error).map(|out| InferenceOutput {
                    images: out.images,
                    prompt_truncated: out.prompt_truncated,
                }));
            }
        }
        Ok(results
            .into_iter()
            .map(|r| r.unwrap_or(Err(InferenceError::Cancelled)))
            .collect())
    }

    fn batch_bytes(&self, shape: &BatchShape, images: usize) -> Option<u64> {
        Some(self.pipeline.batch_memory_bytes(shape, images))
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

pub use crate::batching::{BatchConfig, BatchStats, InferenceThread, Progress, StopWhen};
