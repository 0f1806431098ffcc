//! Loading the original single-file Stable Diffusion checkpoint (`sd-v1-5-inpainting.safetensors`
//! as the model card names it): one file holding the UNet, the VAE and the text encoder under
//! the CompVis/LDM names, converted to diffusers' names here and built into the same models as a
//! diffusers folder.
//!
//! # What the single file lacks: the config folder
//!
//! The checkpoint has weights only. The key mapping depends on the architecture (blocks per
//! level, levels, which blocks have attention), so it is derived from the diffusers configs, read
//! from a **config folder** exactly as diffusers' `from_single_file(..., config=folder)` does:
//! `unet/config.json`, `vae/config.json`, `text_encoder/config.json`, `tokenizer/` and
//! `scheduler/scheduler_config.json`. Any diffusers SD-1.5-inpainting folder serves (its weight
//! files are not read), as does the tiny test fixture for the tiny test checkpoint. Through the
//! engine's entry point ([`crate::model_folder::load_pipeline`], the worker's `engine.model` and
//! `inpaint --model`) the config folder is the diffusers folder beside the file named like it
//! (`X.safetensors` or `X.ckpt.safetensors` → `X/`); without one, SD-1.5-inpainting's configs
//! are built in ([`builtin_sd15_inpainting`]) and only the tokenizer folder is needed, as
//! `tokenizer/` beside the file (CLIP's 1.5 MB vocabulary is not built in).
//!
//! # Names
//!
//! Prefixes: UNet `model.diffusion_model.`, VAE `first_stage_model.`, text encoder
//! `cond_stage_model.transformer.` (then `text_model.*` as in transformers; the older layout
//! without `text_model.` is accepted and given the prefix). The rules are those of diffusers'
//! `convert_ldm_unet_checkpoint`, `convert_ldm_vae_checkpoint` and `convert_ldm_clip_checkpoint`,
//! written as a table of module prefixes built from the configs ([`KeyMap`]):
//!
//! - UNet: `time_embed.{0,2}` → `time_embedding.linear_{1,2}`, `input_blocks.0.0` → `conv_in`,
//!   `out.{0,2}` → `conv_norm_out`/`conv_out`; with `L = layers_per_block`, down level `i` layer
//!   `j` is `input_blocks.{1 + i(L+1) + j}` (`.0` resnet, `.1` attention) and its downsampler
//!   `input_blocks.{(i+1)(L+1)}.0.op`; up level `i` layer `j ≤ L` is `output_blocks.{i(L+1) + j}`
//!   and its upsampler `output_blocks.{i(L+1) + L}.{2 with attention, else 1}.conv`;
//!   `middle_block.{0,1,2}` → `mid_block.{resnets.0, attentions.0, resnets.1}`. Resnet parts:
//!   `in_layers.0/2` → `norm1/conv1`, `emb_layers.1` → `time_emb_proj`, `out_layers.0/3` →
//!   `norm2/conv2`, `skip_connection` → `conv_shortcut`. Transformer parts keep their names.
//! - VAE: `norm_out` → `conv_norm_out`, `mid.block_{1,2}` → `mid_block.resnets.{0,1}`,
//!   `mid.attn_1` → `mid_block.attentions.0` (`norm/q/k/v/proj_out` → `group_norm/to_q/to_k/
//!   to_v/to_out.0`), `encoder.down.i.block.j` → `encoder.down_blocks.i.resnets.j`,
//!   `decoder.up.k.block.j` → `decoder.up_blocks.{n-1-k}.resnets.j` (LDM counts the decoder from
//!   the lowest resolution), `downsample.conv`/`upsample.conv` → `downsamplers.0.conv`/
//!   `upsamplers.0.conv`, `nin_shortcut` → `conv_shortcut`.
//! - The one tensor change: the VAE attention `q/k/v/proj_out` weights are 1×1 convolutions in
//!   LDM (`[C, C, 1, 1]`) and linear layers in diffusers (`[C, C]`).
//!
//! Every converted tensor goes through [`WeightStore::from_tensors`], the models' `load` and
//! [`WeightStore::finish`]: a name the architecture does not use, a missing name and a wrong shape
//! are all reported together, for all three models, with the checkpoint's own key next to each
//! diffusers name. Keys that map to nothing keep their LDM name and are reported as unused.
//!
//! # Ignored keys
//!
//! Keys outside the three models are refused unless listed in [`IGNORED_KEYS`] or under
//! [`IGNORED_PREFIXES`], which diffusers drops too: the training noise-schedule buffers
//! (`betas`, `alphas_cumprod`, …, `logvar`), the EMA copy (`model_ema.*`: diffusers' default
//! `extract_ema=False` uses the non-EMA weights, as here) and CLIP's `position_ids` buffer.
//!
//! # Precision
//!
//! Tensors are converted to [`LoadOptions::kind`] (an fp16 file loads as f32 and vice versa);
//! the VAE always runs in f32, as with [`InpaintPipeline::load`].
//!
//! # Pickle `.ckpt` files
//!
//! Not read here. A `.ckpt` is a zip of Python pickles, and a pickle is a program: reading one
//! safely means a restricted unpickler that accepts tensor rebuilds only. Rather than keep such a
//! reader in the worker, `ops/convert-ckpt.py` converts once with the project's venv, through
//! `torch.load(..., weights_only=True)` (PyTorch's restricted unpickler, which refuses arbitrary
//! objects) and `safetensors`. The worker then only ever parses safetensors, a JSON header and
//! raw bytes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use tch::Tensor;

use crate::EngineError;
use crate::config::{ClipTextConfig, UNetConfig, VaeConfig, read_json};
use crate::model_folder::LoadOptions;
use crate::models::clip::ClipTextModel;
use crate::models::unet_2d::UNet2DConditionModel;
use crate::models::vae::AutoencoderKL;
use crate::pipeline::InpaintPipeline;
use crate::schedulers::SchedulerConfig;
use crate::weights::WeightStore;

/// Prefix of the UNet's keys in the checkpoint.
pub const UNET_PREFIX: &str = "model.diffusion_model.";
/// Prefix of the VAE's keys in the checkpoint.
pub const VAE_PREFIX: &str = "first_stage_model.";
/// Prefix of the text encoder's keys in the checkpoint.
pub const TEXT_ENCODER_PREFIX: &str = "cond_stage_model.transformer.";

/// Keys that SD checkpoints carry and inference does not use (diffusers drops them too): the
/// training noise schedule (the scheduler config replaces it), the EMA bookkeeping and CLIP's
/// `position_ids` buffer.
pub const IGNORED_KEYS: &[&str] = &[
    "betas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
    "logvar",
    "cond_stage_model.transformer.text_model.embeddings.position_ids",
    "cond_stage_model.transformer.embeddings.position_ids",
];

/// Key prefixes ignored as a whole: the EMA copy of the UNet (`model_ema.decay`,
/// `model_ema.num_updates` and, in full checkpoints, `model_ema.diffusion_model*`).
pub const IGNORED_PREFIXES: &[&str] = &["model_ema."];

/// Whether `key` is one of the documented keys that loading skips.
pub fn is_ignored(key: &str) -> bool {
    IGNORED_KEYS.contains(&key) || IGNORED_PREFIXES.iter().any(|p| key.starts_with(p))
}

const UNET_RESNET: &[(&str, &str)] = &[
    ("in_layers.0", "norm1"),
    ("in_layers.2", "conv1"),
    ("emb_layers.1", "time_emb_proj"),
    ("out_layers.0", "norm2"),
    ("out_layers.3", "conv2"),
    ("skip_connection", "conv_shortcut"),
];
const VAE_RESNET: &[(&str, &str)] = &[("nin_shortcut", "conv_shortcut")];
const VAE_ATTENTION: &[(&str, &str)] = &[
    ("norm", "group_norm"),
    ("q", "to_q"),
    ("k", "to_k"),
    ("v", "to_v"),
    ("proj_out", "to_out.0"),
];

/// One module: its LDM prefix, its diffusers prefix and the renames of the names inside it.
#[derive(Debug)]
struct Rule {
    ldm: String,
    diffusers: String,
    renames: &'static [(&'static str, &'static str)],
    /// VAE attention: weights stored as 1×1 convolutions, loaded as linear layers.
    conv_to_linear: bool,
}

/// A diffusers name for an LDM key (both relative to their component).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapped {
    pub name: String,
    /// The tensor is a 1×1 convolution weight `[C, C, 1, 1]` to load as a linear `[C, C]`.
    pub conv_to_linear: bool,
}

/// The LDM ↔ diffusers name mapping of one component, built from its config. Names are relative
/// to the component (no `model.diffusion_model.` / `unet/`).
#[derive(Debug)]
pub struct KeyMap {
    rules: Vec<Rule>,
    by_ldm: HashMap<String, usize>,
    by_diffusers: HashMap<String, usize>,
}

/// `rest` with the first rename whose source is `rest` or a dotted prefix of it applied.
fn rename(rest: &str, renames: &[(&str, &str)], reverse: bool) -> String {
    for &(ldm, diffusers) in renames {
        let (from, to) = if reverse {
            (diffusers, ldm)
        } else {
            (ldm, diffusers)
        };
        if let Some(tail) = rest.strip_prefix(from)
            && (tail.is_empty() || tail.starts_with('.'))
        {
            return format!("{to}{tail}");
        }
    }
    rest.to_owned()
}

/// The longest dotted prefix of `key` (shorter than `key`) present in `index`, and the rest.
fn longest_prefix<'k>(key: &'k str, index: &HashMap<String, usize>) -> Option<(usize, &'k str)> {
    let mut end = key.len();
    while let Some(dot) = key[..end].rfind('.') {
        if let Some(&i) = index.get(&key[..dot]) {
            return Some((i, &key[dot + 1..]));
        }
        end = dot;
    }
    None
}

impl KeyMap {
    fn new() -> Self {
        Self {
            rules: Vec::new(),
            by_ldm: HashMap::new(),
            by_diffusers: HashMap::new(),
        }
    }

    fn add(
        &mut self,
        ldm: impl Into<String>,
        diffusers: impl Into<String>,
        renames: &'static [(&'static str, &'static str)],
    ) {
        self.push(ldm.into(), diffusers.into(), renames, false);
    }

    fn push(
        &mut self,
        ldm: String,
        diffusers: String,
        renames: &'static [(&'static str, &'static str)],
        conv_to_linear: bool,
    ) {
        let index = self.rules.len();
        self.by_ldm.insert(ldm.clone(), index);
        self.by_diffusers.insert(diffusers.clone(), index);
        self.rules.push(Rule {
            ldm,
            diffusers,
            renames,
            conv_to_linear,
        });
    }

    /// The UNet's mapping (`convert_ldm_unet_checkpoint`) for `config`'s block layout.
    pub fn unet(config: &UNetConfig) -> Self {
        let mut m = Self::new();
        m.add("time_embed.0", "time_embedding.linear_1", &[]);
        m.add("time_embed.2", "time_embedding.linear_2", &[]);
        m.add("input_blocks.0.0", "conv_in", &[]);
        m.add("out.0", "conv_norm_out", &[]);
        m.add("out.2", "conv_out", &[]);
        m.add("middle_block.0", "mid_block.resnets.0", UNET_RESNET);
        m.add("middle_block.1", "mid_block.attentions.0", &[]);
        m.add("middle_block.2", "mid_block.resnets.1", UNET_RESNET);
        let n = config.block_out_channels.len();
        let per = usize::try_from(config.layers_per_block).unwrap_or(0);
        for i in 0..n {
            let attention = config
                .down_block_types
                .get(i)
                .is_some_and(|t| t.starts_with("CrossAttn"));
            for j in 0..per {
                let index = 1 + i * (per + 1) + j;
                m.add(
                    format!("input_blocks.{index}.0"),
                    format!("down_blocks.{i}.resnets.{j}"),
                    UNET_RESNET,
                );
                if attention {
                    m.add(
                        format!("input_blocks.{index}.1"),
                        format!("down_blocks.{i}.attentions.{j}"),
                        &[],
                    );
                }
            }
            if i + 1 < n {
                m.add(
                    format!("input_blocks.{}.0.op", (i + 1) * (per + 1)),
                    format!("down_blocks.{i}.downsamplers.0.conv"),
                    &[],
                );
            }
        }
        for i in 0..n {
            let attention = config
                .up_block_types
                .get(i)
                .is_some_and(|t| t.starts_with("CrossAttn"));
            for j in 0..=per {
                let index = i * (per + 1) + j;
                m.add(
                    format!("output_blocks.{index}.0"),
                    format!("up_blocks.{i}.resnets.{j}"),
                    UNET_RESNET,
                );
                if attention {
                    m.add(
                        format!("output_blocks.{index}.1"),
                        format!("up_blocks.{i}.attentions.{j}"),
                        &[],
                    );
                }
            }
            if i + 1 < n {
                let last = i * (per + 1) + per;
                let slot = if attention { 2 } else { 1 };
                m.add(
                    format!("output_blocks.{last}.{slot}.conv"),
                    format!("up_blocks.{i}.upsamplers.0.conv"),
                    &[],
                );
            }
        }
        m
    }

    /// The VAE's mapping (`convert_ldm_vae_checkpoint`) for `config`'s block layout.
    pub fn vae(config: &VaeConfig) -> Self {
        let mut m = Self::new();
        m.add("quant_conv", "quant_conv", &[]);
        m.add("post_quant_conv", "post_quant_conv", &[]);
        for part in ["encoder", "decoder"] {
            m.add(format!("{part}.conv_in"), format!("{part}.conv_in"), &[]);
            m.add(format!("{part}.conv_out"), format!("{part}.conv_out"), &[]);
            m.add(
                format!("{part}.norm_out"),
                format!("{part}.conv_norm_out"),
                &[],
            );
            m.add(
                format!("{part}.mid.block_1"),
                format!("{part}.mid_block.resnets.0"),
                VAE_RESNET,
            );
            m.add(
                format!("{part}.mid.block_2"),
                format!("{part}.mid_block.resnets.1"),
                VAE_RESNET,
            );
            if config.mid_block_add_attention {
                m.push(
                    format!("{part}.mid.attn_1"),
                    format!("{part}.mid_block.attentions.0"),
                    VAE_ATTENTION,
                    true,
                );
            }
        }
        let n = config.block_out_channels.len();
        let per = usize::try_from(config.layers_per_block).unwrap_or(0);
        for i in 0..n {
            for j in 0..per {
                m.add(
                    format!("encoder.down.{i}.block.{j}"),
                    format!("encoder.down_blocks.{i}.resnets.{j}"),
                    VAE_RESNET,
                );
            }
            if i + 1 < n {
                m.add(
                    format!("encoder.down.{i}.downsample.conv"),
                    format!("encoder.down_blocks.{i}.downsamplers.0.conv"),
                    &[],
                );
            }
        }
        for i in 0..n {
            let k = n - 1 - i;
            for j in 0..=per {
                m.add(
                    format!("decoder.up.{k}.block.{j}"),
                    format!("decoder.up_blocks.{i}.resnets.{j}"),
                    VAE_RESNET,
                );
            }
            if i + 1 < n {
                m.add(
                    format!("decoder.up.{k}.upsample.conv"),
                    format!("decoder.up_blocks.{i}.upsamplers.0.conv"),
                    &[],
                );
            }
        }
        m
    }

    /// The diffusers name of LDM key `ldm` (relative to the component), or None when no module
    /// of this architecture has that name.
    pub fn to_diffusers(&self, ldm: &str) -> Option<Mapped> {
        let (index, rest) = longest_prefix(ldm, &self.by_ldm)?;
        let rule = &self.rules[index];
        let rest = rename(rest, rule.renames, false);
        let conv_to_linear =
            rule.conv_to_linear && rest.ends_with(".weight") && !rest.starts_with("group_norm.");
        Some(Mapped {
            name: format!("{}.{rest}", rule.diffusers),
            conv_to_linear,
        })
    }

    /// The LDM key of diffusers name `name` (both relative to the component): the inverse of
    /// [`KeyMap::to_diffusers`], used to name checkpoint keys in errors.
    pub fn to_ldm(&self, name: &str) -> Option<String> {
        let (index, rest) = longest_prefix(name, &self.by_diffusers)?;
        let rule = &self.rules[index];
        Some(format!("{}.{}", rule.ldm, rename(rest, rule.renames, true)))
    }
}

/// A checkpoint's tensors under diffusers' names, per component.
#[derive(Debug, Default)]
pub struct Converted {
    /// `unet/diffusion_pytorch_model.safetensors` names.
    pub unet: Vec<(String, Tensor)>,
    /// `vae/diffusion_pytorch_model.safetensors` names.
    pub vae: Vec<(String, Tensor)>,
    /// `text_encoder/model.safetensors` names (`text_model.*`).
    pub text_encoder: Vec<(String, Tensor)>,
    /// Keys skipped as [`is_ignored`].
    pub ignored: Vec<String>,
    /// Keys belonging to none of the three models and not known to be safe to skip.
    pub unknown: Vec<String>,
}

/// Reads a single-file checkpoint. Only `.safetensors` is read; pickle formats (`.ckpt`, `.pt`,
/// `.pth`, `.bin`) are refused with the conversion command.
pub fn read_checkpoint(path: &Path) -> Result<Vec<(String, Tensor)>, EngineError> {
    let extension = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    match extension.as_deref() {
        Some("safetensors") => {}
        Some("ckpt" | "pt" | "pth" | "bin") => {
            return Err(EngineError::Model(format!(
                "{}: pickle checkpoints are never loaded; convert it once with \
                 `.venv/bin/python ops/convert-ckpt.py {} OUT.safetensors`",
                path.display(),
                path.display()
            )));
        }
        _ => {
            return Err(EngineError::Model(format!(
                "{}: only .safetensors single-file checkpoints are loaded",
                path.display()
            )));
        }
    }
    if !path.is_file() {
        return Err(EngineError::Model(format!(
            "{}: checkpoint file missing",
            path.display()
        )));
    }
    Tensor::read_safetensors(path)
        .map_err(|e| EngineError::Model(format!("{}: {e}", path.display())))
}

/// Whether `t` is `[a, b, 1, ...]` (a 1×1 convolution weight).
fn is_pointwise_conv(t: &Tensor) -> bool {
    let size = t.size();
    size.len() > 2 && size[2..].iter().all(|&d| d == 1)
}

/// Renames (and, for the VAE attention, reshapes) `tensors` from LDM to diffusers names. Keys of
/// a component that map to nothing keep their full LDM name, so the component's
/// [`WeightStore::finish`] reports them as unused.
pub fn convert(
    tensors: Vec<(String, Tensor)>,
    unet: &UNetConfig,
    vae: &VaeConfig,
) -> Result<Converted, EngineError> {
    let unet_map = KeyMap::unet(unet);
    let vae_map = KeyMap::vae(vae);
    let mut out = Converted::default();
    for (key, tensor) in tensors {
        if is_ignored(&key) {
            out.ignored.push(key);
        } else if let Some(rest) = key.strip_prefix(UNET_PREFIX) {
            let name = unet_map.to_diffusers(rest).map_or(key.clone(), |m| m.name);
            out.unet.push((name, tensor));
        } else if let Some(rest) = key.strip_prefix(VAE_PREFIX) {
            match vae_map.to_diffusers(rest) {
                Some(m) if m.conv_to_linear && is_pointwise_conv(&tensor) => {
                    let linear = tensor.f_flatten(1, -1)?;
                    out.vae.push((m.name, linear));
                }
                Some(m) => out.vae.push((m.name, tensor)),
                None => out.vae.push((key.clone(), tensor)),
            }
        } else if let Some(rest) = key.strip_prefix(TEXT_ENCODER_PREFIX) {
            let name = if rest.starts_with("text_model.") {
                rest.to_owned()
            } else {
                format!("text_model.{rest}")
            };
            out.text_encoder.push((name, tensor));
        } else {
            out.unknown.push(key);
        }
    }
    out.unknown.sort();
    out.ignored.sort();
    Ok(out)
}

/// The diffusers configs that a single file lacks, from a config folder.
#[derive(Clone, Debug)]
pub struct ModelConfigs {
    pub unet: UNetConfig,
    pub vae: VaeConfig,
    pub text_encoder: ClipTextConfig,
    pub scheduler: SchedulerConfig,
}

impl ModelConfigs {
    /// Reads `unet/config.json`, `vae/config.json`, `text_encoder/config.json` and
    /// `scheduler/scheduler_config.json` under `folder`.
    pub fn read(folder: &Path) -> Result<Self, EngineError> {
        if !folder.is_dir() {
            return Err(EngineError::Model(format!(
                "{}: model config folder missing (a diffusers folder with unet/, vae/, \
                 text_encoder/, tokenizer/ and scheduler/ configs)",
                folder.display()
            )));
        }
        Ok(Self {
            unet: read_json(&folder.join("unet/config.json"))?,
            vae: read_json(&folder.join("vae/config.json"))?,
            text_encoder: read_json(&folder.join("text_encoder/config.json"))?,
            scheduler: read_json(&folder.join("scheduler/scheduler_config.json"))?,
        })
    }
}

/// What a store's problem lines say, with the checkpoint key added after each diffusers name
/// that the map knows (`missing X [..]` and `X: shape ..` lines of [`WeightStore::finish`]).
fn with_checkpoint_keys(message: &str, map: Option<&KeyMap>, prefix: &str) -> String {
    message
        .lines()
        .map(|line| {
            let body = line.trim_start();
            let name = if let Some(rest) = body.strip_prefix("missing ") {
                rest.split(' ').next()
            } else {
                body.split_once(": shape ").map(|(name, _)| name)
            };
            let ldm = name.and_then(|name| match map {
                Some(map) => map.to_ldm(name),
                None => Some(name.to_owned()),
            });
            match ldm {
                Some(ldm) => format!("{line} (checkpoint key {prefix}{ldm})"),
                None => line.to_owned(),
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Ends one component's store, collecting its problems (with checkpoint keys) into `problems`.
fn finish_into(
    store: WeightStore,
    ignorable: &[&str],
    map: Option<&KeyMap>,
    prefix: &str,
    problems: &mut Vec<String>,
) {
    if let Err(e) = store.finish(ignorable) {
        let message = match e {
            EngineError::Model(m) => m,
            other => other.to_string(),
        };
        problems.push(with_checkpoint_keys(&message, map, prefix));
    }
}

/// The three models of a converted checkpoint.
#[derive(Debug)]
pub struct LoadedModels {
    pub unet: UNet2DConditionModel,
    pub vae: AutoencoderKL,
    pub text_encoder: ClipTextModel,
}

/// Builds the three models from `converted`: UNet and text encoder in `options.kind`, the VAE
/// in `options.vae_kind`. Fails with every problem of every model (and every unknown key) in one error.
pub fn load_models(
    checkpoint: &Path,
    converted: Converted,
    configs: &ModelConfigs,
    options: &LoadOptions,
) -> Result<LoadedModels, EngineError> {
    let Converted {
        unet,
        vae,
        text_encoder,
        unknown,
        ..
    } = converted;
    let source = |what: &str| PathBuf::from(format!("{} ({what})", checkpoint.display()));
    let mut problems = Vec::new();
    if !unknown.is_empty() {
        let shown: Vec<&str> = unknown.iter().take(20).map(String::as_str).collect();
        problems.push(format!(
            "{} key(s) outside the UNet ({UNET_PREFIX}*), VAE ({VAE_PREFIX}*) and text encoder \
             ({TEXT_ENCODER_PREFIX}*) and not among the ignored ones: {}{}",
            unknown.len(),
            shown.join(", "),
            if unknown.len() > 20 { ", ..." } else { "" }
        ));
    }

    let store = WeightStore::from_tensors(source("unet"), unet, options.kind, options.device)
        .with_channels_last(options.channels_last);
    let unet = UNet2DConditionModel::load(&store.root(), &configs.unet)?;
    let unet_map = KeyMap::unet(&configs.unet);
    finish_into(store, &[], Some(&unet_map), UNET_PREFIX, &mut problems);

    let store = WeightStore::from_tensors(source("vae"), vae, options.vae_kind, options.device)
        .with_channels_last(options.channels_last);
    let vae = AutoencoderKL::load(&store.root(), &configs.vae)?;
    let vae_map = KeyMap::vae(&configs.vae);
    finish_into(store, &[], Some(&vae_map), VAE_PREFIX, &mut problems);

    let store = WeightStore::from_tensors(
        source("text encoder"),
        text_encoder,
        options.kind,
        options.device,
    );
    let text_encoder = ClipTextModel::load(&store.root(), &configs.text_encoder)?;
    finish_into(
        store,
        ClipTextModel::IGNORABLE,
        None,
        TEXT_ENCODER_PREFIX,
        &mut problems,
    );

    if !problems.is_empty() {
        return Err(EngineError::Model(format!(
            "{}: single-file checkpoint does not match the model configs:\n{}",
            checkpoint.display(),
            problems.join("\n")
        )));
    }
    Ok(LoadedModels {
        unet,
        vae,
        text_encoder,
    })
}

/// Loads a single-file LDM checkpoint (`.safetensors`) as an [`InpaintPipeline`], with the
/// configs, tokenizer and scheduler config from `config_folder` (see the module docs).
pub fn load_pipeline(
    checkpoint: &Path,
    config_folder: &Path,
    options: &LoadOptions,
) -> Result<InpaintPipeline, EngineError> {
    let configs = ModelConfigs::read(config_folder)?;
    let tokenizer = crate::model_folder::load_tokenizer(
        &config_folder.join("tokenizer"),
        configs.text_encoder.max_position_embeddings,
    )?;
    let tensors = read_checkpoint(checkpoint)?;
    let converted = convert(tensors, &configs.unet, &configs.vae)?;
    let models = load_models(checkpoint, converted, &configs, options)?;
    InpaintPipeline::from_parts(
        checkpoint.to_path_buf(),
        tokenizer,
        models.text_encoder,
        models.unet,
        models.vae,
        configs.scheduler,
        options,
    )
}

/// SD-1.5-inpainting's diffusers configs (`runwayml/stable-diffusion-inpainting`: unet, vae,
/// text_encoder, scheduler), used for a single file that has no config folder beside it.
pub mod builtin_sd15_inpainting {
    /// `unet/config.json`.
    pub const UNET: &str = r#"{"in_channels":9,"out_channels":4,"block_out_channels":[320,640,1280,1280],
        "down_block_types":["CrossAttnDownBlock2D","CrossAttnDownBlock2D","CrossAttnDownBlock2D","DownBlock2D"],
        "up_block_types":["UpBlock2D","CrossAttnUpBlock2D","CrossAttnUpBlock2D","CrossAttnUpBlock2D"],
        "layers_per_block":2,"attention_head_dim":8,"cross_attention_dim":768,"norm_num_groups":32,
        "norm_eps":1e-05,"flip_sin_to_cos":true,"freq_shift":0,"sample_size":64,"downsample_padding":1,
        "act_fn":"silu","center_input_sample":false,"mid_block_scale_factor":1}"#;
    /// `vae/config.json`.
    pub const VAE: &str = r#"{"in_channels":3,"out_channels":3,"latent_channels":4,
        "block_out_channels":[128,256,512,512],"layers_per_block":2,"norm_num_groups":32,
        "act_fn":"silu","sample_size":512,"scaling_factor":0.18215}"#;
    /// `text_encoder/config.json` (CLIP ViT-L/14's text tower).
    pub const TEXT_ENCODER: &str = r#"{"vocab_size":49408,"hidden_size":768,"intermediate_size":3072,
        "num_hidden_layers":12,"num_attention_heads":12,"max_position_embeddings":77,
        "hidden_act":"quick_gelu","layer_norm_eps":1e-05}"#;
    /// `scheduler/scheduler_config.json`.
    pub const SCHEDULER: &str = r#"{"_class_name":"PNDMScheduler","beta_end":0.012,
        "beta_schedule":"scaled_linear","beta_start":0.00085,"clip_sample":false,
        "num_train_timesteps":1000,"set_alpha_to_one":false,"skip_prk_steps":true,
        "steps_offset":1,"trained_betas":null}"#;
}

impl ModelConfigs {
    /// The built-in SD-1.5-inpainting configs ([`builtin_sd15_inpainting`]).
    pub fn sd15_inpainting() -> Result<Self, EngineError> {
        use builtin_sd15_inpainting as b;
        let parse = |what: &str, e: serde_json::Error| {
            EngineError::Model(format!("built-in SD-1.5-inpainting {what} config: {e}"))
        };
        Ok(Self {
            unet: serde_json::from_str(b::UNET).map_err(|e| parse("unet", e))?,
            vae: serde_json::from_str(b::VAE).map_err(|e| parse("vae", e))?,
            text_encoder: serde_json::from_str(b::TEXT_ENCODER)
                .map_err(|e| parse("text_encoder", e))?,
            scheduler: serde_json::from_str(b::SCHEDULER).map_err(|e| parse("scheduler", e))?,
        })
    }
}

/// Whether `path` names a single-file checkpoint (by its extension) rather than a folder.
pub fn is_checkpoint_path(path: &Path) -> bool {
    let extension = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    !path.is_dir()
        && matches!(
            extension.as_deref(),
            Some("safetensors" | "ckpt" | "pt" | "pth" | "bin")
        )
}

/// The diffusers folder beside a checkpoint that holds its configs: the file's name without its
/// extensions (`X.safetensors`, `X.ckpt.safetensors` → `X/`), when it has `model_index.json`.
pub fn sidecar_config_folder(checkpoint: &Path) -> Option<PathBuf> {
    let name = checkpoint.file_name()?.to_str()?;
    let stem = name.split('.').next().filter(|s| !s.is_empty())?;
    let folder = checkpoint.with_file_name(stem);
    folder.join("model_index.json").is_file().then_some(folder)
}

/// Loads a single-file checkpoint with no config folder given: the configs and tokenizer of the
/// diffusers folder beside it ([`sidecar_config_folder`]) when there is one; otherwise the
/// built-in SD-1.5-inpainting configs and the tokenizer folder `tokenizer/` beside the file (a
/// checkpoint carries no tokenizer, and CLIP's vocabulary is not built in).
pub fn load_pipeline_auto(
    checkpoint: &Path,
    options: &LoadOptions,
) -> Result<InpaintPipeline, EngineError> {
    // Refuses pickles (naming ops/convert-ckpt.py) and missing files before anything else.
    let tensors = read_checkpoint(checkpoint)?;
    let (configs, tokenizer_dir, described) = match sidecar_config_folder(checkpoint) {
        Some(folder) => (
            ModelConfigs::read(&folder)?,
            folder.join("tokenizer"),
            format!("configs of {}", folder.display()),
        ),
        None => (
            ModelConfigs::sd15_inpainting()?,
            checkpoint.with_file_name("tokenizer"),
            "built-in SD-1.5-inpainting configs".to_owned(),
        ),
    };
    if !tokenizer_dir.is_dir() {
        return Err(EngineError::Model(format!(
            "{}: a single-file checkpoint has no tokenizer: put the CLIP tokenizer folder (the \
             tokenizer/ of a diffusers SD-1.5 folder) at {}, or the whole diffusers folder at {}",
            checkpoint.display(),
            tokenizer_dir.display(),
            checkpoint
                .with_file_name(
                    checkpoint
                        .file_name()
                        .and_then(|n| n.to_str())
                        .and_then(|n| n.split('.').next())
                        .unwrap_or("MODEL")
                )
                .display()
        )));
    }
    let tokenizer = crate::model_folder::load_tokenizer(
        &tokenizer_dir,
        configs.text_encoder.max_position_embeddings,
    )?;
    let converted = convert(tensors, &configs.unet, &configs.vae)?;
    let models = load_models(checkpoint, converted, &configs, options)
        .map_err(|e| EngineError::Model(format!("{e} (with the {described})")))?;
    InpaintPipeline::from_parts(
        checkpoint.to_path_buf(),
        tokenizer,
        models.text_encoder,
        models.unet,
        models.vae,
        configs.scheduler,
        options,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sd15_unet() -> UNetConfig {
        serde_json::from_str(
            r#"{"in_channels":9,"out_channels":4,"block_out_channels":[320,640,1280,1280],
                "down_block_types":["CrossAttnDownBlock2D","CrossAttnDownBlock2D",
                    "CrossAttnDownBlock2D","DownBlock2D"],
                "up_block_types":["UpBlock2D","CrossAttnUpBlock2D","CrossAttnUpBlock2D",
                    "CrossAttnUpBlock2D"],
                "layers_per_block":2,"attention_head_dim":8,"cross_attention_dim":768}"#,
        )
        .expect("config")
    }

    #[test]
    fn sd15_unet_names_match_diffusers_conversion() {
        let m = KeyMap::unet(&sd15_unet());
        let cases = [
            (
                "input_blocks.1.0.in_layers.0.weight",
                "down_blocks.0.resnets.0.norm1.weight",
            ),
            (
                "input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight",
                "down_blocks.0.attentions.1.transformer_blocks.0.attn2.to_k.weight",
            ),
            (
                "input_blocks.3.0.op.bias",
                "down_blocks.0.downsamplers.0.conv.bias",
            ),
            (
                "input_blocks.4.0.skip_connection.weight",
                "down_blocks.1.resnets.0.conv_shortcut.weight",
            ),
            (
                "input_blocks.11.0.out_layers.3.weight",
                "down_blocks.3.resnets.1.conv2.weight",
            ),
            (
                "middle_block.1.proj_out.weight",
                "mid_block.attentions.0.proj_out.weight",
            ),
            (
                "middle_block.2.emb_layers.1.bias",
                "mid_block.resnets.1.time_emb_proj.bias",
            ),
            (
                "output_blocks.2.1.conv.weight",
                "up_blocks.0.upsamplers.0.conv.weight",
            ),
            (
                "output_blocks.5.2.conv.weight",
                "up_blocks.1.upsamplers.0.conv.weight",
            ),
            (
                "output_blocks.11.1.norm.bias",
                "up_blocks.3.attentions.2.norm.bias",
            ),
            ("out.2.weight", "conv_out.weight"),
        ];
        for (ldm, diffusers) in cases {
            let mapped = m.to_diffusers(ldm).expect(ldm);
            assert_eq!(mapped.name, diffusers);
            assert!(!mapped.conv_to_linear);
            assert_eq!(m.to_ldm(diffusers).as_deref(), Some(ldm));
        }
        // No attention in the last down level or the first up level.
        assert_eq!(m.to_diffusers("input_blocks.10.1.norm.weight"), None);
        assert_eq!(m.to_diffusers("output_blocks.0.1.norm.weight"), None);
        assert_eq!(m.to_diffusers("input_blocks.12.0.in_layers.0.weight"), None);
    }

    #[test]
    fn vae_attention_is_renamed_and_flagged_for_reshape() {
        let config: VaeConfig = serde_json::from_str(
            r#"{"in_channels":3,"out_channels":3,"latent_channels":4,
                "block_out_channels":[128,256,512,512],"layers_per_block":2}"#,
        )
        .expect("config");
        let m = KeyMap::vae(&config);
        let q = m.to_diffusers("decoder.mid.attn_1.q.weight").expect("q");
        assert_eq!(q.name, "decoder.mid_block.attentions.0.to_q.weight");
        assert!(q.conv_to_linear);
        let norm = m
            .to_diffusers("encoder.mid.attn_1.norm.weight")
            .expect("norm");
        assert_eq!(
            norm.name,
            "encoder.mid_block.attentions.0.group_norm.weight"
        );
        assert!(!norm.conv_to_linear);
        let out = m
            .to_diffusers("encoder.mid.attn_1.proj_out.bias")
            .expect("out");
        assert_eq!(out.name, "encoder.mid_block.attentions.0.to_out.0.bias");
        assert_eq!(
            m.to_diffusers("decoder.up.3.block.2.nin_shortcut.weight")
                .map(|m| m.name)
                .as_deref(),
            Some("decoder.up_blocks.0.resnets.2.conv_shortcut.weight")
        );
        assert_eq!(
            m.to_ldm("decoder.up_blocks.2.upsamplers.0.conv.bias")
                .as_deref(),
            Some("decoder.up.1.upsample.conv.bias")
        );
        assert_eq!(m.to_diffusers("decoder.up.0.upsample.conv.weight"), None);
    }

    #[test]
    fn pickles_are_refused_with_the_conversion_command() {
        let err = read_checkpoint(Path::new("sd-v1-5-inpainting.ckpt"))
            .expect_err("pickle")
            .to_string();
        assert!(err.contains("ops/convert-ckpt.py"), "{err}");
    }
}
