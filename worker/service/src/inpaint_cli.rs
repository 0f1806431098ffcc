//! `inpaint-worker inpaint`: one job on local files, no broker, through the same per-job code
//! path as the worker (`InpaintPipeline::run_job`) and the configured plugin chain.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Args;
use image::GrayImage;
use inpaint_engine::job::JobSpec;
use inpaint_engine::model_folder::LoadOptions;
use inpaint_engine::pipeline::{InpaintPipeline, StepControl, pil_luma};
use inpaint_engine::schedulers::SchedulerKind;
use inpaint_engine::{DeviceSpec, Precision};
use inpaint_plugin_api::{JobContext, OutputImage};
use inpaint_stages::StageConfig;
use serde::Deserialize;

/// The tiny random-weight model the repository ships: the embedded default, for trying the
/// tool and for tests. Real use passes `--model` with an SD-1.5-inpainting diffusers folder.
pub fn embedded_model() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/parity/fixtures/models/tiny-sd-a")
}

/// Arguments of `inpaint-worker inpaint`.
#[derive(Args, Debug, Clone)]
pub struct InpaintArgs {
    /// diffusers-format model folder (default: the embedded tiny model).
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
    /// Output file; with --num-images N > 1: OUT-0.png, OUT-1.png, ...
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
    /// f32, f16 or bf16 (UNet and text encoder; the VAE stays f32).
    #[arg(long, default_value = "f32")]
    pub dtype: String,
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
    /// default: the built-in prompt policy.
    #[arg(long)]
    pub chain: Option<PathBuf>,
    /// Skip the plugin chain (for reference comparisons). Prints a warning.
    #[arg(long)]
    pub raw: bool,
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

/// The chain without `--chain`: the prompt policy, where this build has it.
fn default_stages() -> Vec<StageConfig> {
    #[cfg(feature = "stage-prompt-policy")]
    let stages = vec![StageConfig::PromptPolicy(Default::default())];
    #[cfg(not(feature = "stage-prompt-policy"))]
    let stages = Vec::new();
    stages
}

fn load_mask(path: &Path) -> anyhow::Result<GrayImage> {
    let decoded =
        image::open(path).with_context(|| format!("cannot decode mask {}", path.display()))?;
    Ok(match decoded {
        image::DynamicImage::ImageLuma8(gray) => gray,
        // diffusers converts masks with PIL's convert("L").
        other => pil_luma(&other.to_rgb8()),
    })
}

fn output_path(output: &Path, index: u32, count: u32) -> PathBuf {
    if count == 1 {
        return output.to_path_buf();
    }
    let stem = output.file_stem().and_then(|s| s.to_str()).unwrap_or("out");
    let ext = output.extension().and_then(|s| s.to_str()).unwrap_or("png");
    output.with_file_name(format!("{stem}-{index}.{ext}"))
}

/// Runs `inpaint-worker inpaint`; returns the files written.
pub fn run_inpaint(args: &InpaintArgs) -> anyhow::Result<Vec<PathBuf>> {
    let progress = Progress {
        terminal: std::io::stderr().is_terminal(),
    };
    let scheduler = parse_scheduler(&args.scheduler)?;
    let precision: Precision = args.dtype.parse()?;
    let device = args.device.resolve()?;
    if args.num_images == 0 || args.num_images > 16 {
        bail!("--num-images must be 1 to 16, got {}", args.num_images);
    }
    let chain = if args.raw {
        tracing::warn!("--raw: the plugin chain is skipped; outputs are not policy-checked");
        None
    } else {
        let stages = match &args.chain {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                toml::from_str::<ChainFile>(&text)
                    .with_context(|| format!("invalid chain file {}", path.display()))?
                    .stages
            }
            None => default_stages(),
        };
        Some(inpaint_stages::build_chain(&stages)?)
    };

    let (image, mask) = match (&args.image, &args.mask) {
        (Some(image), Some(mask)) => {
            let decoded = image::open(image)
                .with_context(|| format!("cannot decode image {}", image.display()))?;
            (Some(decoded.to_rgb8()), Some(load_mask(mask)?))
        }
        _ => (None, None),
    };

    let mut context = JobContext::new(uuid::Uuid::new_v4(), args.prompt.clone());
    context.negative_prompt = args.negative_prompt.clone();
    context.text_only = image.is_none();
    if let Some(chain) = &chain {
        let outcome = chain.before_inference(context)?;
        if let Some(record) = &outcome.block {
            bail!(
                "blocked by stage {} (category {}): {}",
                record.stage,
                record.block.category,
                record.block.reason
            );
        }
        context = outcome.context;
    }

    let model = args.model.clone().unwrap_or_else(embedded_model);
    progress.line(&format!("loading {} ...", model.display()));
    let started = Instant::now();
    let options = LoadOptions {
        device,
        kind: precision.kind(),
        variant: args.variant.clone(),
    };
    let pipeline = InpaintPipeline::load(&model, &options)?;
    progress.line(&format!(
        "loaded {} in {:.1} s",
        model.display(),
        started.elapsed().as_secs_f64()
    ));
    progress.done();

    let spec = JobSpec {
        prompt: context.prompt.clone(),
        negative_prompt: context.negative_prompt.clone(),
        image,
        mask,
        width: args.width,
        height: args.height,
        num_inference_steps: args.steps,
        guidance_scale: args.guidance_scale,
        strength: args.strength,
        eta: args.eta,
        scheduler,
        seeds: (0..u64::from(args.num_images))
            .map(|i| args.seed.wrapping_add(i))
            .collect(),
        preserve_unmasked: !args.no_preserve_unmasked,
        mask_grow_px: args.mask_grow,
        mask_feather_px: args.mask_feather,
        crop_to_mask: args.crop_to_mask,
        max_side: args.max_side,
    };
    let started = Instant::now();
    let result = pipeline.run_job(&spec, &mut |done, total| {
        progress.line(&format!(
            "step {done}/{total} ({:.1} s)",
            started.elapsed().as_secs_f64()
        ));
        StepControl::Continue
    })?;
    progress.done();
    if result.prompt_truncated {
        tracing::warn!("the prompt was longer than the tokenizer's maximum and was truncated");
    }

    let mut outputs: Vec<OutputImage> = result
        .images
        .into_iter()
        .zip(&spec.seeds)
        .enumerate()
        .map(|(i, (image, &seed))| OutputImage::new(i as u32, seed, image))
        .collect();
    if let Some(chain) = &chain {
        let outcome = chain.after_output(&context, outputs)?;
        for record in &outcome.blocks {
            tracing::warn!(
                stage = %record.stage,
                category = %record.block.category,
                image = ?record.image_index,
                "output withheld by the plugin chain"
            );
        }
        outputs = outcome.images;
    }
    let mut written = Vec::new();
    for output in outputs {
        let path = output_path(&args.output, output.index, args.num_images);
        output
            .image
            .save(&path)
            .with_context(|| format!("cannot write {}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scheduler_names_from_the_command_line() {
        assert_eq!(
            parse_scheduler("euler-a").ok(),
            Some(SchedulerKind::EulerAncestral)
        );
        assert_eq!(
            parse_scheduler("dpmpp-2m-karras").ok(),
            Some(SchedulerKind::Dpmpp2mKarras)
        );
        assert_eq!(parse_scheduler("pndm").ok(), Some(SchedulerKind::Pndm));
        let err = parse_scheduler("heun").expect_err("unknown");
        assert!(err.to_string().contains("unknown scheduler"), "{err}");
    }

    #[test]
    fn several_images_get_numbered_names() {
        let out = Path::new("/tmp/x/out.png");
        assert_eq!(output_path(out, 0, 1), PathBuf::from("/tmp/x/out.png"));
        assert_eq!(output_path(out, 1, 3), PathBuf::from("/tmp/x/out-1.png"));
    }

    fn base_args(dir: &Path) -> InpaintArgs {
        InpaintArgs {
            model: None,
            variant: None,
            image: None,
            mask: None,
            prompt: "a lighthouse on a cliff".into(),
            negative_prompt: None,
            output: dir.join("out.png"),
            steps: 2,
            guidance_scale: 7.5,
            strength: 1.0,
            eta: 0.0,
            seed: 3,
            scheduler: "ddim".into(),
            width: None,
            height: None,
            num_images: 2,
            device: DeviceSpec::Cpu,
            dtype: "f32".into(),
            no_preserve_unmasked: false,
            mask_grow: 0,
            mask_feather: 0,
            crop_to_mask: None,
            max_side: 1024,
            chain: None,
            raw: false,
        }
    }

    #[test]
    fn inpaints_local_files_with_the_embedded_model() {
        let dir = tempfile::tempdir().expect("tempdir");
        let image =
            image::RgbImage::from_fn(40, 24, |x, y| image::Rgb([x as u8 * 6, y as u8 * 9, 77]));
        let mask = GrayImage::from_fn(40, 24, |x, _| image::Luma([if x > 20 { 255 } else { 0 }]));
        image.save(dir.path().join("in.png")).expect("save");
        mask.save(dir.path().join("mask.png")).expect("save");
        let mut args = base_args(dir.path());
        args.image = Some(dir.path().join("in.png"));
        args.mask = Some(dir.path().join("mask.png"));
        let written = run_inpaint(&args).expect("inpaint");
        assert_eq!(
            written,
            vec![dir.path().join("out-0.png"), dir.path().join("out-1.png")]
        );
        let out = image::open(&written[0]).expect("decode").to_rgb8();
        assert_eq!(out.dimensions(), (40, 24));
        assert_eq!(
            out.get_pixel(3, 3),
            image.get_pixel(3, 3),
            "unmasked pixels are kept"
        );
    }

    #[test]
    fn a_blocked_prompt_writes_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut args = base_args(dir.path());
        args.prompt = "nude child".into();
        let err = run_inpaint(&args).expect_err("blocked");
        assert!(err.to_string().contains("blocked by stage"), "{err}");
        assert!(!dir.path().join("out-0.png").exists());
    }
}
