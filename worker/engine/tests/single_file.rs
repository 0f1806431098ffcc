//! The single-file LDM checkpoint loader against the diffusers folder holding the same weights
//! (`tiny-sd-c` and `tiny-sd-c.ckpt.safetensors`, written by tests/parity/ldm_ckpt.py): the key
//! mapping against the generator's table, every converted tensor, the pipeline's output, and the
//! errors for broken checkpoints.

// The measured image differences are part of the test's output.
#![allow(clippy::print_stdout)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use inpaint_engine::model_folder::LoadOptions;
use inpaint_engine::pipeline::InpaintPipeline;
use inpaint_engine::single_file::{
    self, KeyMap, ModelConfigs, TEXT_ENCODER_PREFIX, UNET_PREFIX, VAE_PREFIX,
};
use serde_json::Value;
use tch::{Device, Kind, Tensor};

mod pixels;
mod tiny_sd_c;
use pixels::max_channel_diff;
use tiny_sd_c::{first_image, request};

const BOUND: u8 = 2;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/parity/fixtures")
}

fn folder() -> PathBuf {
    fixtures().join("models/tiny-sd-c")
}

fn checkpoint() -> PathBuf {
    fixtures().join("models/tiny-sd-c.ckpt.safetensors")
}

fn read(path: &Path) -> Vec<(String, Tensor)> {
    Tensor::read_safetensors(path).expect("read safetensors")
}

fn names(tensors: &[(String, Tensor)]) -> BTreeSet<String> {
    tensors.iter().map(|(n, _)| n.clone()).collect()
}

#[test]
fn key_map_agrees_with_the_generator_table() {
    let table: Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("ckpt_key_map.json")).expect("read"),
    )
    .expect("json");
    let configs = ModelConfigs::read(&folder()).expect("configs");
    let unet = KeyMap::unet(&configs.unet);
    let vae = KeyMap::vae(&configs.vae);
    let entries = table["map"].as_object().expect("map");
    let mut checked = 0;
    for (key, entry) in entries {
        let ldm = entry["ldm"].as_str().expect("ldm");
        let reshaped = entry["transform"].as_str() == Some("linear_to_conv1x1");
        let (component, name) = key.split_once('/').expect("component/name");
        match component {
            "unet" => {
                let rest = ldm.strip_prefix(UNET_PREFIX).expect("unet prefix");
                let mapped = unet.to_diffusers(rest).expect(ldm);
                assert_eq!(mapped.name, name, "{ldm}");
                assert!(!mapped.conv_to_linear, "{ldm}");
                assert_eq!(unet.to_ldm(name).as_deref(), Some(rest), "{name}");
            }
            "vae" => {
                let rest = ldm.strip_prefix(VAE_PREFIX).expect("vae prefix");
                let mapped = vae.to_diffusers(rest).expect(ldm);
                assert_eq!(mapped.name, name, "{ldm}");
                assert_eq!(mapped.conv_to_linear, reshaped, "{ldm}");
                assert_eq!(vae.to_ldm(name).as_deref(), Some(rest), "{name}");
            }
            "text_encoder" => {
                let rest = ldm.strip_prefix(TEXT_ENCODER_PREFIX).expect("clip prefix");
                let expected = if name.starts_with("text_model.") {
                    name.to_owned()
                } else {
                    format!("text_model.{name}")
                };
                assert_eq!(rest, expected);
            }
            other => panic!("unknown component {other}"),
        }
        checked += 1;
    }
    println!("{checked} table entries agree");
    assert!(checked > 900, "only {checked} entries");
}

#[test]
fn every_converted_tensor_equals_the_folder_tensor() {
    let configs = ModelConfigs::read(&folder()).expect("configs");
    let converted =
        single_file::convert(read(&checkpoint()), &configs.unet, &configs.vae).expect("convert");
    assert!(converted.unknown.is_empty(), "{:?}", converted.unknown);
    let components = [
        (
            "unet",
            &converted.unet,
            "unet/diffusion_pytorch_model.safetensors",
        ),
        (
            "vae",
            &converted.vae,
            "vae/diffusion_pytorch_model.safetensors",
        ),
        (
            "text_encoder",
            &converted.text_encoder,
            "text_encoder/model.safetensors",
        ),
    ];
    let mut compared = 0;
    for (what, got, file) in components {
        let want = read(&folder().join(file));
        let (got_names, want_names) = (names(got), names(&want));
        assert_eq!(
            got_names,
            want_names,
            "{what}: only converted {:?}; only in the folder {:?}",
            got_names.difference(&want_names).collect::<Vec<_>>(),
            want_names.difference(&got_names).collect::<Vec<_>>()
        );
        let want: std::collections::HashMap<String, Tensor> = want.into_iter().collect();
        for (name, tensor) in got {
            let reference = &want[name];
            assert_eq!(tensor.size(), reference.size(), "{what}/{name}");
            assert_eq!(tensor.kind(), reference.kind(), "{what}/{name}");
            assert!(tensor.equal(reference), "{what}/{name} differs");
            compared += 1;
        }
    }
    println!("{compared} tensors identical");
}

#[test]
fn single_file_pipeline_gives_the_folder_pipelines_image() {
    let options = LoadOptions::default();
    let from_file =
        single_file::load_pipeline(&checkpoint(), &folder(), &options).expect("single file");
    assert_eq!(from_file.folder(), checkpoint());
    let from_folder = InpaintPipeline::load(&folder(), &options).expect("folder");
    let (r, want) = request(&fixtures().join("cases/c_dpmpp2m_128x64"));
    let a = first_image(&from_file, &r);
    let b = first_image(&from_folder, &r);
    let vs_folder = max_channel_diff(&a, &b);
    let vs_diffusers = max_channel_diff(&a, &want);
    println!(
        "c_dpmpp2m_128x64 from the single file: max |diff| = {vs_folder} vs the folder \
         pipeline, {vs_diffusers} vs diffusers' output_0.png"
    );
    assert_eq!(vs_folder, 0);
    assert!(vs_diffusers <= BOUND);
}

/// A fresh directory under the system temp dir for one test.
fn temp_dir(test: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("inpaint-single-file-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// The fixture checkpoint with `edit` applied, written to `dir/name`.
fn edited_checkpoint(
    dir: &Path,
    name: &str,
    edit: impl FnOnce(&mut Vec<(String, Tensor)>),
) -> PathBuf {
    let mut tensors = read(&checkpoint());
    edit(&mut tensors);
    let path = dir.join(name);
    Tensor::write_safetensors(&tensors, &path).expect("write");
    path
}

fn load_error(path: &Path) -> String {
    single_file::load_pipeline(path, &folder(), &LoadOptions::default())
        .expect_err("broken checkpoint must not load")
        .to_string()
}

const MISSING: &str = "model.diffusion_model.input_blocks.4.1.proj_in.weight";
const MISSHAPED: &str = "first_stage_model.decoder.mid.attn_1.q.weight";

#[test]
fn missing_and_misshaped_keys_are_named() {
    let dir = temp_dir("broken");

    let missing = edited_checkpoint(&dir, "missing.safetensors", |t| {
        t.retain(|(n, _)| n != MISSING);
    });
    let err = load_error(&missing);
    println!("{err}");
    assert!(
        err.contains("missing down_blocks.1.attentions.0.proj_in.weight"),
        "{err}"
    );
    assert!(
        err.contains(&format!("(checkpoint key {MISSING})")),
        "{err}"
    );

    let misshaped = edited_checkpoint(&dir, "misshaped.safetensors", |t| {
        for (name, tensor) in t.iter_mut() {
            if name == MISSHAPED {
                *tensor = Tensor::zeros([16, 8, 1, 1], (Kind::Float, tensor.device()));
            }
        }
    });
    let err = load_error(&misshaped);
    println!("{err}");
    assert!(
        err.contains("decoder.mid_block.attentions.0.to_q.weight: shape [16, 8] in the file"),
        "{err}"
    );
    assert!(
        err.contains(&format!("(checkpoint key {MISSHAPED})")),
        "{err}"
    );

    // Both at once, plus a stray key and an unmappable UNet key: one error lists all four.
    let both = edited_checkpoint(&dir, "both.safetensors", |t| {
        t.retain(|(n, _)| n != MISSING);
        for (name, tensor) in t.iter_mut() {
            if name == MISSHAPED {
                *tensor = Tensor::zeros([16, 8, 1, 1], (Kind::Float, tensor.device()));
            }
        }
        t.push((
            "something_else.weight".into(),
            Tensor::zeros([2], (Kind::Float, Device::Cpu)),
        ));
        t.push((
            "model.diffusion_model.input_blocks.99.0.in_layers.0.weight".into(),
            Tensor::zeros([2], (Kind::Float, Device::Cpu)),
        ));
    });
    let err = load_error(&both);
    println!("{err}");
    for needle in [
        MISSING,
        MISSHAPED,
        "something_else.weight",
        "model.diffusion_model.input_blocks.99.0.in_layers.0.weight",
    ] {
        assert!(err.contains(needle), "{needle} not in {err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn documented_extra_keys_are_ignored_and_fp16_files_convert() {
    let dir = temp_dir("extras");
    let cpu = Device::Cpu;
    let path = edited_checkpoint(&dir, "fp16-with-extras.safetensors", |t| {
        for (_, tensor) in t.iter_mut() {
            *tensor = tensor.to_kind(Kind::Half);
        }
        for name in ["betas", "alphas_cumprod", "posterior_mean_coef2", "logvar"] {
            t.push((name.into(), Tensor::zeros([1000], (Kind::Float, cpu))));
        }
        t.push((
            "model_ema.decay".into(),
            Tensor::zeros([], (Kind::Float, cpu)),
        ));
        t.push((
            "model_ema.num_updates".into(),
            Tensor::zeros([], (Kind::Int, cpu)),
        ));
        t.push((
            "cond_stage_model.transformer.text_model.embeddings.position_ids".into(),
            Tensor::arange(77, (Kind::Int64, cpu)).unsqueeze(0),
        ));
    });
    let configs = ModelConfigs::read(&folder()).expect("configs");
    let converted =
        single_file::convert(read(&path), &configs.unet, &configs.vae).expect("convert");
    assert_eq!(converted.ignored.len(), 7, "{:?}", converted.ignored);
    assert!(converted.unknown.is_empty());
    let models = single_file::load_models(&path, converted, &configs, &LoadOptions::default())
        .expect("fp16 file with the documented extra keys loads");
    assert_eq!(models.unet.config().in_channels, 9);
    single_file::load_pipeline(&path, &folder(), &LoadOptions::default()).expect("pipeline");
    let _ = std::fs::remove_dir_all(&dir);
}
