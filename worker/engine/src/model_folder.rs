//! Loading a model: [`load_pipeline`] is the engine's one entry point (worker `engine.model`,
//! `inpaint --model`). It takes a diffusers-format model folder (model_index.json, unet/, vae/,
//! text_encoder/, tokenizer/, scheduler/) or a single-file `.safetensors` checkpoint (see
//! [`crate::single_file::load_pipeline_auto`] for where its configs and tokenizer come from).
//! This module owns which files to read, in which variant, onto which device.

use std::path::{Path, PathBuf};

use tch::{Device, Kind};

use crate::device::PrecisionSpec;

use crate::EngineError;
use crate::config::{ClipTextConfig, UNetConfig, VaeConfig, read_json};
use crate::models::clip::ClipTextModel;
use crate::models::unet_2d::UNet2DConditionModel;
use crate::models::vae::AutoencoderKL;
use crate::pipeline::InpaintPipeline;
use crate::schedulers::SchedulerConfig;
use crate::single_file;
use crate::tokenizer::{ClipTokenizer, TokenizerFlavor};
use crate::weights::WeightStore;

/// Where and how to load a model folder.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    pub device: Device,
    /// Element kind of the text encoder and the UNet.
    pub kind: Kind,
    /// Element kind of the VAE. diffusers' SD-1.5 inpainting pipeline runs the VAE in the
    /// pipeline's dtype; f32 here is the "upcast" choice (slower on a GPU, no f16 overflow).
    pub vae_kind: Kind,
    /// Weights variant: None reads `*.safetensors`, `Some("fp16")` reads `*.fp16.safetensors`.
    pub variant: Option<String>,
    /// Convolution kernels of the UNet and the VAE in channels-last layout (see
    /// [`WeightStore::with_channels_last`]).
    pub channels_last: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            device: Device::Cpu,
            kind: Kind::Float,
            vae_kind: Kind::Float,
            variant: None,
            channels_last: false,
        }
    }
}

impl LoadOptions {
    /// Options for `device` with the precisions resolved there: `precision` for the text encoder
    /// and UNet, `vae_precision` for the VAE, where `auto` means the same as the pipeline (what
    /// diffusers does); no variant, dense layout.
    pub fn resolved(
        device: Device,
        precision: PrecisionSpec,
        vae_precision: PrecisionSpec,
    ) -> Self {
        let pipeline = precision.resolve(device);
        let vae = match vae_precision {
            PrecisionSpec::Auto => pipeline,
            PrecisionSpec::Fixed(fixed) => fixed,
        };
        Self {
            device,
            kind: pipeline.kind(),
            vae_kind: vae.kind(),
            ..Self::default()
        }
    }
}

/// The weights file of a component: `<dir>/<stem>[.<variant>].safetensors`.
fn weights_path(dir: &Path, stem: &str, variant: Option<&str>) -> Result<PathBuf, EngineError> {
    let name = match variant {
        Some(v) => format!("{stem}.{v}.safetensors"),
        None => format!("{stem}.safetensors"),
    };
    let path = dir.join(&name);
    if path.is_file() {
        return Ok(path);
    }
    let pickle = dir.join(format!("{stem}.bin"));
    let hint = if pickle.is_file() {
        " (only a pickle .bin is there: convert it to safetensors; pickles are never loaded)"
    } else {
        ""
    };
    Err(EngineError::Model(format!(
        "{}: missing{hint}",
        path.display()
    )))
}

fn component_dir(folder: &Path, name: &str) -> Result<PathBuf, EngineError> {
    let dir = folder.join(name);
    if dir.is_dir() {
        Ok(dir)
    } else {
        Err(EngineError::Model(format!(
            "{}: component folder missing",
            dir.display()
        )))
    }
}

/// Loads `unet/` with names and shapes checked.
pub fn load_unet(
    folder: &Path,
    options: &LoadOptions,
) -> Result<UNet2DConditionModel, EngineError> {
    let dir = component_dir(folder, "unet")?;
    let config: UNetConfig = read_json(&dir.join("config.json"))?;
    let path = weights_path(&dir, "diffusion_pytorch_model", options.variant.as_deref())?;
    let store = WeightStore::open(&path, options.kind, options.device)?
        .with_channels_last(options.channels_last);
    let unet = UNet2DConditionModel::load(&store.root(), &config)?;
    store.finish(&[])?;
    Ok(unet)
}

/// Loads `vae/` with names and shapes checked, in `options.vae_kind`.
pub fn load_vae(folder: &Path, options: &LoadOptions) -> Result<AutoencoderKL, EngineError> {
    let dir = component_dir(folder, "vae")?;
    let config: VaeConfig = read_json(&dir.join("config.json"))?;
    let path = weights_path(&dir, "diffusion_pytorch_model", options.variant.as_deref())?;
    let store = WeightStore::open(&path, options.vae_kind, options.device)?
        .with_channels_last(options.channels_last);
    let vae = AutoencoderKL::load(&store.root(), &config)?;
    store.finish(&[])?;
    Ok(vae)
}

/// Loads `text_encoder/` with names and shapes checked.
pub fn load_text_encoder(
    folder: &Path,
    options: &LoadOptions,
) -> Result<ClipTextModel, EngineError> {
    let dir = component_dir(folder, "text_encoder")?;
    let config: ClipTextConfig = read_json(&dir.join("config.json"))?;
    let path = weights_path(&dir, "model", options.variant.as_deref())?;
    let store = WeightStore::open(&path, options.kind, options.device)?;
    let model = ClipTextModel::load(&store.root(), &config)?;
    store.finish(ClipTextModel::IGNORABLE)?;
    Ok(model)
}

/// Loads a model from `path`: a diffusers folder, or a single-file checkpoint (a path ending in
/// `.safetensors`; `.ckpt`/`.pt`/`.pth`/`.bin` are refused with the conversion command).
pub fn load_pipeline(path: &Path, options: &LoadOptions) -> Result<InpaintPipeline, EngineError> {
    if single_file::is_checkpoint_path(path) {
        return single_file::load_pipeline_auto(path, options);
    }
    load_folder_pipeline(path, options)
}

/// Loads a diffusers folder: text encoder, tokenizer, UNet, VAE (in `options.vae_kind`) and
/// scheduler config.
pub fn load_folder_pipeline(
    folder: &Path,
    options: &LoadOptions,
) -> Result<InpaintPipeline, EngineError> {
    if !folder.join("model_index.json").is_file() {
        let hint = if folder.is_file() {
            " (a single-file checkpoint must end in .safetensors)"
        } else {
            ""
        };
        return Err(EngineError::Model(format!(
            "{}: not a diffusers model folder (no model_index.json){hint}",
            folder.display()
        )));
    }
    let text_encoder = load_text_encoder(folder, options)?;
    let tokenizer = load_tokenizer(
        &folder.join("tokenizer"),
        text_encoder.config().max_position_embeddings,
    )?;
    let unet = load_unet(folder, options)?;
    let vae = load_vae(folder, options)?;
    let scheduler_config: SchedulerConfig =
        read_json(&folder.join("scheduler/scheduler_config.json"))?;
    InpaintPipeline::from_parts(
        folder.to_path_buf(),
        tokenizer,
        text_encoder,
        unet,
        vae,
        scheduler_config,
        options,
    )
}

/// Loads a tokenizer folder in any layout transformers writes; a folder without
/// `model_max_length` (a lone `tokenizer.json`) pads to the text encoder's `max_positions`.
pub fn load_tokenizer(dir: &Path, max_positions: i64) -> Result<ClipTokenizer, EngineError> {
    ClipTokenizer::from_folder_with(
        dir,
        TokenizerFlavor::default(),
        usize::try_from(max_positions).ok(),
    )
    .map_err(|e| EngineError::Model(e.to_string()))
}

#[cfg(test)]
mod load_options_tests {
    use super::*;
    use crate::device::Precision;

    #[test]
    fn resolved_follows_the_device_and_the_vae_follows_the_pipeline_unless_fixed() {
        let specs = [
            PrecisionSpec::Auto,
            PrecisionSpec::Fixed(Precision::F32),
            PrecisionSpec::Fixed(Precision::F16),
            PrecisionSpec::Fixed(Precision::Bf16),
        ];
        for device in [Device::Cpu, Device::Cuda(0)] {
            for precision in specs {
                for vae in specs {
                    let o = LoadOptions::resolved(device, precision, vae);
                    let pipeline = precision.resolve(device).kind();
                    assert_eq!(o.device, device);
                    assert_eq!(o.kind, pipeline, "{precision} on {device:?}");
                    let expected_vae = match vae {
                        PrecisionSpec::Auto => pipeline,
                        PrecisionSpec::Fixed(p) => p.kind(),
                    };
                    assert_eq!(o.vae_kind, expected_vae, "{precision}/{vae} on {device:?}");
                    assert!(!o.channels_last && o.variant.is_none());
                }
            }
        }
        let auto = LoadOptions::resolved(Device::Cuda(0), PrecisionSpec::Auto, PrecisionSpec::Auto);
        assert_eq!((auto.kind, auto.vae_kind), (Kind::Half, Kind::Half));
        let cpu = LoadOptions::resolved(Device::Cpu, PrecisionSpec::Auto, PrecisionSpec::Auto);
        assert_eq!((cpu.kind, cpu.vae_kind), (Kind::Float, Kind::Float));
    }
}
