//! `inpaint-worker inpaint`: one job on local files, no broker, through the worker's own
//! [`JobFlow`]: the arguments become a job message, the input files go into an in-memory store,
//! and the flow runs it exactly as a worker does — the same chain rules (fail closed without a
//! safety checker and a watermark unless `--allow-unsafe-chain`), the same decoder, encoder,
//! provenance and C2PA signing — then the stored outputs and the result JSON are written to
//! disk. `--raw` skips the chain for reference comparisons, and says so.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Args;
use inpaint_engine::DeviceSpec;
use inpaint_engine::schedulers::SchedulerKind;
use inpaint_job::{InpaintJob, InpaintResult, JobId};
use inpaint_stages::StageConfig;
use inpaint_storage::{PutRequest, StorageConfig};
use serde::Deserialize;

use crate::flow::{JobFlow, JobRun, Timings};
use crate::images::Signer;
use crate::parts::Parts;
use crate::settings::{AllowConfig, ChainConfig, EngineBackend, Settings};

/// The bucket of the in-memory store a local job reads from and writes to.
pub const LOCAL_BUCKET: &str = "local";

/// Arguments of `inpaint-worker inpaint`.
#[derive(Args, Debug, Clone)]
pub struct InpaintArgs {
    /// diffusers-format model folder (default: `embedded-tiny`, the tiny random-weight test
    /// model, resolved as the worker resolves `engine.model`).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Weights variant, e.g. fp16 (reads *.fp16.safetensors).
    #[arg(long)]
    pub variant: Option<String>,
    /// Input image (omit with --mask for text-only mode).
    #[arg(long, requires = "mask")]
    pub image: Option<PathBuf>,
    /// Mask image: white = repaint.
    #[arg(long, requires = "image")]
    pub mask: Option<PathBuf>,
    #[arg(long)]
    pub prompt: String,
    #[arg(long)]
    pub negative_prompt: Option<String>,
    /// Output file (.png, .webp, .jpg); with --num-images N > 1: OUT-0.png, OUT-1.png, ...
    /// The result JSON goes beside it as OUT.result.json.
    #[arg(long)]
    pub output: PathBuf,
    #[arg(long, default_value_t = 50)]
    pub steps: usize,
    #[arg(long, default_value_t = 7.5)]
    pub guidance_scale: f64,
    #[arg(long, default_value_t = 1.0)]
    pub strength: f64,
    /// DDIM's eta.
    #[arg(long, default_value_t = 0.0)]
    pub eta: f64,
    /// Seed of the first image; image i uses seed + i.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// pndm, ddim, euler, euler-a, dpmpp-2m or dpmpp-2m-karras.
    #[arg(long, default_value = "pndm")]
    pub scheduler: String,
    #[arg(long, requires = "height")]
    pub width: Option<u32>,
    #[arg(long, requires = "width")]
    pub height: Option<u32>,
    #[arg(long, default_value_t = 1)]
    pub num_images: u32,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: DeviceSpec,
    /// auto (f16 on CUDA, f32 on the CPU), f32, f16 or bf16: the UNet's and text encoder's.
    #[arg(long, default_value = "auto")]
    pub dtype: String,
    /// The VAE's: auto (the same as --dtype, as diffusers runs it), f32 (upcast), f16 or bf16.
    #[arg(long, default_value = "auto")]
    pub vae_dtype: String,
    /// Write the raw model output: no preserve-unmasked composite.
    #[arg(long)]
    pub no_preserve_unmasked: bool,
    #[arg(long, default_value_t = 0)]
    pub mask_grow: u32,
    #[arg(long, default_value_t = 0)]
    pub mask_feather: u32,
    /// Inpaint a crop around the mask padded by this many pixels.
    #[arg(long)]
    pub crop_to_mask: Option<u32>,
    /// Longest side inferred without cropping.
    #[arg(long, default_value_t = 1024)]
    pub max_side: u32,
    /// TOML file with the plugin chain (`[[stages]]` tables as in the worker's config);
    /// default: the prompt policy and provenance.
    #[arg(long)]
    pub chain: Option<PathBuf>,
    /// The worker's configuration file: its `[chain]` (unless --chain), `[limits]` and
    /// `[c2pa]` sections apply, so the output is what that worker would write.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Run although the chain has no safety checker or no watermark (the worker's
    /// `allow_unsafe_chain`): logged, and recorded in each file's provenance.
    #[arg(long)]
    pub allow_unsafe_chain: bool,
    /// The job id (default: random): with the worker's job id and seed, the same bytes.
    #[arg(long)]
    pub job_id: Option<JobId>,
    /// JPEG quality for a .jpg/.jpeg output.
    #[arg(long, default_value_t = 90)]
    pub quality: u8,
    /// Skip the plugin chain (for reference comparisons against diffusers): no policy, no
    /// safety check, no watermark, no provenance. Prints a warning.
    #[arg(long)]
    pub raw: bool,
}

impl InpaintArgs {
    /// Parses `inpaint` options as the command line does (without the program and command
    /// names), for tools and tests that start a local run from arguments.
    pub fn parse<I, S>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = S>,
        S: Into<std::ffi::OsString> + Clone,
    {
        #[derive(clap::Parser)]
        struct Command {
            #[command(flatten)]
            args: InpaintArgs,
        }
        let argv = std::iter::once(std::ffi::OsString::from("inpaint"))
            .chain(args.into_iter().map(Into::into));
        <Command as clap::Parser>::try_parse_from(argv).map(|c| c.args)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChainFile {
    stages: Vec<StageConfig>,
}

/// `euler-a` and friends to the engine's scheduler names.
pub fn parse_scheduler(name: &str) -> anyhow::Result<SchedulerKind> {
    let normalized = match name {
        "euler-a" | "euler_a" => "euler_ancestral".to_owned(),
        other => other.replace('-', "_"),
    };
    Ok(normalized.parse::<SchedulerKind>()?)
}

/// Progress lines: rewritten in place on a terminal, one per update otherwise.
#[derive(Clone, Copy)]
struct Progress {
    terminal: bool,
}

impl Progress {
    fn line(&self, text: &str) {
        if self.terminal {
            eprint!("\r\x1b[2K{text}");
        } else {
            eprintln!("{text}");
        }
    }

    fn done(&self) {
        if self.terminal {
            eprintln!();
        }
    }
}

/// The chain without `--chain` or `--config`: the prompt policy and provenance, where this
/// build has them. No safety checker or watermark: refused without `--allow-unsafe-chain`.
fn default_stages() -> Vec<StageConfig> {
    [
        #[cfg(feature = "stage-prompt-policy")]
        StageConfig::PromptPolicy(Default::default()),
        #[cfg(feature = "stage-provenance")]
        StageConfig::Provenance(Default::default()),
    ]
    .into()
}

fn output_path(output: &Path, index: u32, count: u32) -> PathBuf {
    if count == 1 {
        return output.to_path_buf();
    }
    let stem = output.file_stem().and_then(|s| s.to_str()).unwrap_or("out");
    let ext = output.extension().and_then(|s| s.to_str()).unwrap_or("png");
    output.with_file_name(format!("{stem}-{index}.{ext}"))
}

/// Where the result JSON goes: `OUT.result.json` beside the first output.
pub fn result_path(output: &Path) -> PathBuf {
    let stem = output.file_stem().and_then(|s| s.to_str()).unwrap_or("out");
    output.with_file_name(format!("{stem}.result.json"))
}

/// The job's `output.format` from the output file's extension.
fn output_format(output: &Path, quality: u8) -> anyhow::Result<serde_json::Value> {
    let ext = output
        .extension()
        .and_then(|s| s.to_str())
        .map(str::to_ascii_lowercase);
    Ok(match ext.as_deref() {
        Some("png") | None => serde_json::json!({"type": "png"}),
        Some("webp") => serde_json::json!({"type": "webp"}),
        Some("jpg" | "jpeg") => serde_json::json!({"type": "jpeg", "quality": quality}),
        Some(other) => bail!("--output: .{other} is not an output format (png, webp, jpg)"),
    })
}

/// The job message the arguments stand for (validated as the worker validates jobs).
pub fn job_for(args: &InpaintArgs) -> anyhow::Result<InpaintJob> {
    let scheduler = parse_scheduler(&args.scheduler)?;
    let mut params = serde_json::json!({
        "scheduler": scheduler_name(scheduler),
        "num_inference_steps": args.steps,
        "guidance_scale": args.guidance_scale,
        "strength": args.strength,
        "eta": args.eta,
        "seed": args.seed,
        "num_images": args.num_images,
        "preserve_unmasked": !args.no_preserve_unmasked,
        "mask_grow_px": args.mask_grow,
        "mask_feather_px": args.mask_feather,
    });
    if let (Some(width), Some(height)) = (args.width, args.height) {
        params["width"] = width.into();
        params["height"] = height.into();
    }
    if let Some(padding) = args.crop_to_mask {
        params["crop_to_mask"] = serde_json::json!({ "padding_px": padding });
    }
    let mut job = serde_json::json!({
        "schema_version": 1,
        "job_id": args.job_id.unwrap_or_else(JobId::new_random).to_string(),
        "prompt": args.prompt,
        "params": params,
        "output": {
            "bucket": LOCAL_BUCKET,
            "prefix": "out",
            "format": output_format(&args.output, args.quality)?,
        },
    });
    if let Some(negative) = &args.negative_prompt {
        job["negative_prompt"] = negative.clone().into();
    }
    if args.image.is_some() {
        job["image"] = format!("s3://{LOCAL_BUCKET}/in/image").into();
        job["mask"] = format!("s3://{LOCAL_BUCKET}/in/mask").into();
    }
    let bytes = serde_json::to_vec(&job)?;
    InpaintJob::from_json(&bytes).map_err(|e| anyhow::anyhow!("invalid arguments: {e}"))
}

fn scheduler_name(kind: SchedulerKind) -> &'static str {
    match kind {
        SchedulerKind::Pndm => "pndm",
        SchedulerKind::Ddim => "ddim",
        SchedulerKind::Euler => "euler",
        SchedulerKind::EulerAncestral => "euler_ancestral",
        SchedulerKind::Dpmpp2m => "dpmpp_2m",
        SchedulerKind::Dpmpp2mKarras => "dpmpp_2m_karras",
    }
}

/// The worker settings a local run uses: `--config`'s (or the defaults), with the model,
/// device and precision of the arguments, the chain of `--chain` (or the config's, or the
/// default), an in-memory store and the local bucket allowed.
pub fn settings_for(args: &InpaintArgs) -> anyhow::Result<Settings> {
    let mut settings = match &args.config {
        Some(path) => Settings::load(Some(path))?,
        None => Settings::default(),
    };
    settings.storage = StorageConfig::Memory;
    settings.allow = AllowConfig {
        read_buckets: vec![LOCAL_BUCKET.into()],
        write_buckets: vec![LOCAL_BUCKET.into()],
        ..AllowConfig::default()
    };
    // Local files are the user's own: no size limits on them beyond the model's.
    settings.limits.max_object_bytes = u64::MAX;
    settings.limits.max_decoded_pixels = u64::MAX;
    settings.limits.max_output_side = args.max_side;
    let engine = &mut settings.engine;
    engine.backend = EngineBackend::Tch;
    engine.model = match &args.model {
        Some(model) => model.display().to_string(),
        None => crate::settings::EMBEDDED_TINY.into(),
    };
    engine.device = args.device;
    engine.precision = args.dtype.parse()?;
    engine.vae_precision = args.vae_dtype.parse()?;
    engine.variant = args.variant.clone().unwrap_or_default();
    let stages = if args.raw {
        Vec::new()
    } else if let Some(path) = &args.chain {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        toml::from_str::<ChainFile>(&text)
            .with_context(|| format!("invalid chain file {}", path.display()))?
            .stages
    } else if args.config.is_some() {
        std::mem::take(&mut settings.chain.stages)
    } else {
        default_stages()
    };
    settings.chain = ChainConfig {
        stages,
        allow_unsafe_chain: args.raw
            || args.allow_unsafe_chain
            || settings.chain.allow_unsafe_chain,
    };
    settings
        .validate()
        .context("the chain does not meet the worker's rules (--allow-unsafe-chain overrides the required stages)")?;
    Ok(settings)
}

/// Runs `inpaint-worker inpaint` on a runtime of its own; returns the image files written.
pub fn run_inpaint(args: &InpaintArgs) -> anyhow::Result<Vec<PathBuf>> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    Ok(runtime.block_on(inpaint(args))?.0)
}

/// Runs `inpaint-worker inpaint`: the job through the worker's flow; returns the image files
/// written and the result (also written beside them).
pub async fn inpaint(args: &InpaintArgs) -> anyhow::Result<(Vec<PathBuf>, InpaintResult)> {
    let progress = Progress {
        terminal: std::io::stderr().is_terminal(),
    };
    let job = job_for(args)?;
    let settings = settings_for(args)?;
    if args.raw {
        tracing::warn!(
            "--raw: the plugin chain is skipped: outputs are not policy-checked, safety-checked, watermarked or marked with provenance; for reference comparisons only"
        );
    }
    for warning in settings.chain_warnings() {
        tracing::warn!("{warning}");
    }
    if settings.engine.model == crate::settings::EMBEDDED_TINY {
        tracing::warn!(
            "no --model: running the embedded tiny random-weight test model, which paints noise"
        );
    }
    let signer = Signer::build(&settings)?;
    progress.line(&format!("loading {} ...", settings.engine.model));
    let started = Instant::now();
    let parts = Parts::build(&settings).await?;
    progress.line(&format!(
        "loaded {} in {:.1} s",
        settings.engine.model,
        started.elapsed().as_secs_f64()
    ));
    progress.done();
    if let (Some(image), Some(mask)) = (&args.image, &args.mask) {
        for (path, object) in [(image, &job.image), (mask, &job.mask)] {
            let bytes =
                std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
            let object = object.as_ref().context("the job names its inputs")?;
            parts
                .storage
                .put(object, Bytes::from(bytes), &PutRequest::default())
                .await?;
        }
    }
    let storage = Arc::clone(&parts.storage);
    let flow = JobFlow::new(&settings, &parts, signer);
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(u32, u32)>(64);
    let printer = tokio::spawn(async move {
        let started = Instant::now();
        while let Some((done, total)) = rx.recv().await {
            progress.line(&format!(
                "step {done}/{total} ({:.1} s)",
                started.elapsed().as_secs_f64()
            ));
        }
        progress.done();
    });
    let run = JobRun {
        attempt: 1,
        progress: Some(tx),
        ..JobRun::default()
    };
    let outcome = flow.run(&job, run, &mut Timings::new()).await;
    let _ = printer.await;
    let result = match outcome {
        Ok(result) => result,
        Err(failure) => match &failure.block {
            Some(block) => bail!(
                "blocked by stage {} (category {}): {}",
                block.stage,
                block.category,
                block.reason
            ),
            None => bail!("{failure}"),
        },
    };
    if result.prompt_truncated {
        tracing::warn!("the prompt was longer than the tokenizer's maximum and was truncated");
    }
    let mut written = Vec::new();
    for output in &result.outputs {
        let path = output_path(&args.output, output.index, args.num_images);
        let stored = storage.get(&output.uri, None).await?;
        std::fs::write(&path, &stored.bytes)
            .with_context(|| format!("cannot write {}", path.display()))?;
        written.push(path);
    }
    let json = serde_json::to_vec_pretty(&result)?;
    let path = result_path(&args.output);
    std::fs::write(&path, json).with_context(|| format!("cannot write {}", path.display()))?;
    Ok((written, result))
}

#[cfg(test)]
#[path = "inpaint_cli_tests.rs"]
mod tests;
