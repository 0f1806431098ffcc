//! `inpaint-worker bench`: what an operator runs to size a fleet. Measures this machine on a
//! model folder, `embedded-tiny`, or SD-1.5-inpainting's full-size architecture with random
//! weights (`full-size-random`, built here: nothing to download) — model load time, the text
//! encoder, one guided UNet step at each batch size, VAE encode and decode, images per second
//! end to end through the engine's batched job path, peak host and device memory — and, with
//! `--backlog N`, drains a backlog of N jobs through the worker's inference thread once per
//! `--max-batch` value, so that cross-job batching is measured against one job at a time in one
//! invocation. Prints one table, or JSON with `--json`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use image::{GrayImage, Luma, Rgb, RgbImage};
use inpaint_engine::job::{JobItem, JobSpec};
use inpaint_engine::model_folder::LoadOptions;
use inpaint_engine::pipeline::{InpaintPipeline, StepControl};
use inpaint_engine::schedulers::SchedulerKind;
use inpaint_engine::{DeviceSpec, PrecisionSpec, cuda_backend};
use serde::Serialize;

use crate::inference::InferenceError;
use crate::settings::{EMBEDDED_TINY, MAX_BATCH_WAIT_MS, embedded_tiny_folder};

mod backlog;
mod compare;
pub use compare::{Comparison, compare_cpu};

/// The `--model` value that builds SD-1.5-inpainting's architecture with random weights.
pub const FULL_SIZE_RANDOM: &str = "full-size-random";

/// What to measure.
#[derive(Clone, Debug, clap::Args)]
pub struct BenchArgs {
    /// A diffusers folder or single file, `embedded-tiny`, or `full-size-random`
    /// (SD-1.5-inpainting's architecture with random weights, built in memory).
    #[arg(long, default_value = FULL_SIZE_RANDOM)]
    pub model: String,
    /// `auto`, `cpu`, `cuda` or `cuda:N`.
    #[arg(long, default_value = "auto")]
    pub device: DeviceSpec,
    /// `auto` (f16 on CUDA, f32 on the CPU), `f32`, `f16` or `bf16` for the UNet and text
    /// encoder, as `engine.precision`.
    #[arg(long, default_value = "auto")]
    pub precision: PrecisionSpec,
    /// The VAE's, as `engine.vae_precision`: `auto` (the same as `--precision`), `f32`, `f16`,
    /// `bf16`.
    #[arg(long, default_value = "auto")]
    pub vae_precision: PrecisionSpec,
    /// Convolution kernels in channels-last layout, as `engine.channels_last`.
    #[arg(long)]
    pub channels_last: bool,
    /// Output width and height in pixels (0: the model's native size).
    #[arg(long, default_value_t = 0)]
    pub size: u32,
    /// Batch sizes (images) for the UNet step and end-to-end figures, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8")]
    pub batches: Vec<usize>,
    /// Denoising steps of each end-to-end run (0: skip the end-to-end figures).
    #[arg(long, default_value_t = 20)]
    pub steps: usize,
    /// Timed repetitions of each part (the best is reported; a first untimed run warms up), and
    /// of each backlog run (interleaved across `--max-batch` values; the best is reported).
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    /// Jobs in the backlog drained through the inference thread (0: no backlog run).
    #[arg(long, default_value_t = 0)]
    pub backlog: usize,
    /// `engine.max_batch` values the backlog is drained with, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,8")]
    pub max_batch: Vec<usize>,
    /// `engine.batch_wait_ms` of the backlog runs: how long a batch's first job waits for company.
    #[arg(long, default_value_t = 0)]
    pub batch_wait_ms: u64,
    /// Instead of timing: run the tiny parity case (`embedded-tiny`, a 64x64 job, 8 steps, one
    /// image per scheduler) on the CPU in f32 and on `--device` in `--precision`, print how far
    /// apart the images are, and fail when the mean absolute difference exceeds
    /// `--tolerance` (0-255 levels).
    #[arg(long)]
    pub compare_cpu: bool,
    /// `--compare-cpu`'s bound on the mean absolute pixel difference, in 0-255 levels.
    #[arg(long, default_value_t = 2.0)]
    pub tolerance: f64,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// One batch size's figures.
#[derive(Clone, Debug, Serialize)]
pub struct BatchFigures {
    /// Images in the batch.
    pub images: usize,
    /// One guided UNet evaluation (two rows per image), milliseconds.
    pub unet_step_ms: f64,
    /// UNet throughput: images stepped per second.
    pub unet_images_per_s: f64,
    /// Whole jobs (planning, text, VAE, every step, decoding), images per second; None when
    /// `--steps 0`.
    pub end_to_end_images_per_s: Option<f64>,
}

/// The backlog drained at one `max_batch`, `--repeats` times.
#[derive(Clone, Debug, Serialize)]
pub struct BacklogFigures {
    /// `engine.max_batch`.
    pub max_batch: usize,
    /// Jobs drained per run.
    pub jobs: usize,
    /// Wall time of the best run, from the first job queued to the last answered, seconds.
    pub seconds: f64,
    /// Jobs per second of the best run.
    pub jobs_per_s: f64,
    /// Images of each batch the inference thread ran in the best run, in order.
    pub batches: Vec<usize>,
    /// Every run's wall time, seconds, in the order they ran (interleaved with the other
    /// `max_batch` values' runs).
    pub runs: Vec<f64>,
}

/// Everything `bench` measured.
#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    pub model: String,
    pub device: String,
    pub precision: String,
    /// libtorch's CUDA backend is linked into this binary and registered.
    pub cuda_backend: bool,
    pub width: u32,
    pub height: u32,
    pub steps: usize,
    pub load_seconds: f64,
    pub text_encoder_ms: f64,
    pub vae_encode_ms: f64,
    pub vae_decode_ms: f64,
    pub batches: Vec<BatchFigures>,
    pub backlog: Vec<BacklogFigures>,
    /// Peak resident memory of this process so far (VmHWM), MiB.
    pub peak_host_mib: Option<f64>,
    /// Device memory this process holds (NVML), MiB, on CUDA.
    pub device_mib: Option<f64>,
}

/// Why the bench could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{0}")]
    Engine(#[from] inpaint_engine::EngineError),
    #[error("{0}")]
    Inference(#[from] InferenceError),
    #[error("{0}")]
    Settings(#[from] crate::settings::SettingsError),
    #[error("bench: {0}")]
    Invalid(String),
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The best of `repeats` timed runs after one untimed warm-up.
fn best(
    repeats: usize,
    mut run: impl FnMut() -> Result<Duration, BenchError>,
) -> Result<Duration, BenchError> {
    run()?;
    let mut best = Duration::MAX;
    for _ in 0..repeats.max(1) {
        best = best.min(run()?);
    }
    Ok(best)
}

impl BenchArgs {
    fn options(&self) -> Result<LoadOptions, BenchError> {
        let device = self.device.resolve()?;
        // cuDNN benchmark mode on CUDA, as the worker runs (a no-op on the CPU).
        inpaint_engine::configure_backend(device);
        Ok(LoadOptions {
            channels_last: self.channels_last,
            ..LoadOptions::resolved(device, self.precision, self.vae_precision)
        })
    }

    /// The model as a pipeline, and how long loading took.
    fn load(&self) -> Result<(InpaintPipeline, Duration), BenchError> {
        let options = self.options()?;
        let started = Instant::now();
        let pipeline = match self.model.as_str() {
            FULL_SIZE_RANDOM => {
                // Any CLIP tokenizer folder serves a random model; the embedded one is at hand.
                let tokenizer = embedded_tiny_folder()?.join("tokenizer");
                InpaintPipeline::random_sd15_inpainting(&tokenizer, &options)?
            }
            EMBEDDED_TINY => InpaintPipeline::load(&embedded_tiny_folder()?, &options)?,
            path => InpaintPipeline::load(&PathBuf::from(path), &options)?,
        };
        Ok((pipeline, started.elapsed()))
    }
}

/// A picture and a centred rectangular mask of `width`x`height`, different per `variant`.
fn inputs(width: u32, height: u32, variant: u32) -> (RgbImage, GrayImage) {
    let image = RgbImage::from_fn(width, height, |x, y| {
        Rgb([
            ((x * 3 + variant * 17) % 256) as u8,
            ((y * 5 + variant * 29) % 256) as u8,
            ((x + y + variant * 41) % 256) as u8,
        ])
    });
    let mask = GrayImage::from_fn(width, height, |x, y| {
        let inside = x >= width / 4 && x < 3 * width / 4 && y >= height / 4 && y < 3 * height / 4;
        Luma([if inside { 255 } else { 0 }])
    });
    (image, mask)
}

/// A job of the bench: guided, PNDM (SD-1.5's default), `steps` steps, its own prompt and seed.
fn job(width: u32, height: u32, steps: usize, variant: u32) -> JobSpec {
    let (image, mask) = inputs(width, height, variant);
    JobSpec {
        prompt: format!("a photograph of a garden, variation {variant}"),
        negative_prompt: Some("blurry".into()),
        image: Some(image),
        mask: Some(mask),
        width: None,
        height: None,
        num_inference_steps: steps,
        guidance_scale: 7.5,
        strength: 1.0,
        eta: 0.0,
        scheduler: SchedulerKind::Pndm,
        seeds: vec![u64::from(variant) + 1],
        preserve_unmasked: true,
        mask_grow_px: 0,
        mask_feather_px: 0,
        crop_to_mask: None,
        max_side: 4096,
    }
}

/// Runs the bench on the calling thread (a plain thread, as the worker's inference thread is:
/// libtorch's intra-op thread pool then behaves as it does in the worker); the backlog runs
/// through an inference thread driven by a small runtime of its own.
pub fn run(args: &BenchArgs) -> Result<BenchReport, BenchError> {
    if args.batches.is_empty() || args.batches.contains(&0) {
        return Err(BenchError::Invalid(
            "--batches needs batch sizes of at least 1".into(),
        ));
    }
    if args.max_batch.contains(&0) {
        return Err(BenchError::Invalid(
            "--max-batch needs values of at least 1".into(),
        ));
    }
    if args.batch_wait_ms > MAX_BATCH_WAIT_MS {
        return Err(BenchError::Invalid(format!(
            "--batch-wait-ms {} is more than {MAX_BATCH_WAIT_MS}, as engine.batch_wait_ms",
            args.batch_wait_ms
        )));
    }
    let (pipeline, load) = args.load()?;
    let native = pipeline.native_resolution();
    let side = if args.size == 0 { native } else { args.size };
    let factor = pipeline.vae_scale_factor() as u32;
    if side == 0 || !side.is_multiple_of(8) || !side.is_multiple_of(factor) {
        return Err(BenchError::Invalid(format!(
            "--size {side} must be a positive multiple of 8 and of the VAE's factor {factor}"
        )));
    }
    let repeats = args.repeats;
    let text = best(repeats, || {
        Ok(pipeline.time_text_encoder("a photograph of a garden")?)
    })?;
    let encode = best(repeats, || Ok(pipeline.time_vae_encode(side, side)?))?;
    let decode = best(repeats, || Ok(pipeline.time_vae_decode(1, side, side)?))?;
    let mut batches = Vec::new();
    for &images in &args.batches {
        let step = best(repeats, || Ok(pipeline.time_unet_step(images, side, side)?))?;
        let end_to_end = if args.steps == 0 {
            None
        } else {
            let elapsed = best(repeats, || end_to_end(&pipeline, images, side, args.steps))?;
            Some(images as f64 / elapsed.as_secs_f64())
        };
        batches.push(BatchFigures {
            images,
            unet_step_ms: ms(step),
            unet_images_per_s: images as f64 / step.as_secs_f64(),
            end_to_end_images_per_s: end_to_end,
        });
    }
    let device = pipeline.device();
    let precision = pipeline.precision_summary();
    drop(pipeline);
    let backlog = if args.backlog > 0 {
        backlog::run(args, side)?
    } else {
        Vec::new()
    };
    Ok(BenchReport {
        model: args.model.clone(),
        device: format!("{device:?}"),
        precision,
        cuda_backend: cuda_backend().cudart_version.is_some(),
        width: side,
        height: side,
        steps: args.steps,
        load_seconds: load.as_secs_f64(),
        text_encoder_ms: ms(text),
        vae_encode_ms: ms(encode),
        vae_decode_ms: ms(decode),
        batches,
        backlog,
        peak_host_mib: peak_host_mib(),
        device_mib: device_mib(),
    })
}

/// `images` one-image jobs run as one batch through the engine's job path, timed.
fn end_to_end(
    pipeline: &InpaintPipeline,
    images: usize,
    side: u32,
    steps: usize,
) -> Result<Duration, BenchError> {
    let specs: Vec<JobSpec> = (0..images as u32)
        .map(|v| job(side, side, steps, v))
        .collect();
    let started = Instant::now();
    let mut callbacks: Vec<fn(usize, usize) -> StepControl> =
        specs.iter().map(|_| continue_always as _).collect();
    let items = specs
        .iter()
        .zip(callbacks.iter_mut())
        .map(|(spec, on_step)| {
            Ok(JobItem {
                job: pipeline.plan_job(spec)?,
                on_step,
            })
        })
        .collect::<Result<Vec<_>, BenchError>>()?;
    for result in pipeline.run_jobs(items)? {
        result?;
    }
    Ok(started.elapsed())
}

fn continue_always(_: usize, _: usize) -> StepControl {
    StepControl::Continue
}

/// VmHWM of `/proc/self/status`, MiB.
fn peak_host_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Device memory this process holds, by NVML, MiB.
fn device_mib() -> Option<f64> {
    let gpu = crate::gpu::GpuMemory::open().ok()?;
    let held: u64 = gpu.sample().iter().filter_map(|d| d.process).sum();
    (held > 0).then(|| held as f64 / (1024.0 * 1024.0))
}

impl BenchReport {
    /// The table `bench` prints.
    pub fn table(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "model {} on {} ({}), {}x{}, CUDA backend {}",
            self.model,
            self.device,
            self.precision,
            self.width,
            self.height,
            if self.cuda_backend {
                "present"
            } else {
                "absent"
            }
        );
        let _ = writeln!(out, "load                {:>10.2} s", self.load_seconds);
        let _ = writeln!(out, "text encoder        {:>10.1} ms", self.text_encoder_ms);
        let _ = writeln!(out, "VAE encode          {:>10.1} ms", self.vae_encode_ms);
        let _ = writeln!(out, "VAE decode          {:>10.1} ms", self.vae_decode_ms);
        let _ = writeln!(
            out,
            "batch  UNet step (ms)  UNet images/s  end-to-end images/s ({} steps)",
            self.steps
        );
        for b in &self.batches {
            let e2e = b
                .end_to_end_images_per_s
                .map_or_else(|| "-".to_owned(), |v| format!("{v:.3}"));
            let _ = writeln!(
                out,
                "{:>5}  {:>14.1}  {:>13.3}  {:>19}",
                b.images, b.unet_step_ms, b.unet_images_per_s, e2e
            );
        }
        if let Some(first) = self.backlog.first() {
            let _ = writeln!(
                out,
                "backlog of {} jobs through the inference thread (best of {} interleaved runs):",
                first.jobs,
                first.runs.len()
            );
            for b in &self.backlog {
                let runs: Vec<String> = b.runs.iter().map(|r| format!("{r:.2}")).collect();
                let batches: Vec<String> = b.batches.iter().map(usize::to_string).collect();
                let _ = writeln!(
                    out,
                    "  max_batch {:>3}: {:>8.2} s, {:>8.3} jobs/s ({:.2}x max_batch {}); runs {} s; batches {}",
                    b.max_batch,
                    b.seconds,
                    b.jobs_per_s,
                    b.jobs_per_s / first.jobs_per_s,
                    first.max_batch,
                    runs.join(", "),
                    if b.max_batch <= 1 {
                        format!("{} of 1", b.batches.len())
                    } else {
                        batches.join("+")
                    }
                );
            }
        }
        let mib = |v: Option<f64>| v.map_or_else(|| "n/a".to_owned(), |v| format!("{v:.0} MiB"));
        let _ = writeln!(out, "peak host memory    {}", mib(self.peak_host_mib));
        let _ = writeln!(out, "device memory       {}", mib(self.device_mib));
        out
    }
}
