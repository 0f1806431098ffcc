//! The engine's one loading entry point, `model_folder::load_pipeline`: a diffusers folder or a
//! single-file `.safetensors` checkpoint (configs from the folder beside it, else built in), and
//! the refusals (pickles name ops/convert-ckpt.py, a checkpoint without a tokenizer names where
//! to put one).

#![allow(clippy::print_stdout)]

use std::path::{Path, PathBuf};

use inpaint_engine::model_folder::{LoadOptions, load_pipeline};

mod pixels;
mod tiny_sd_c;
use pixels::max_channel_diff;
use tiny_sd_c::{first_image, request};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/parity/fixtures")
}

fn folder() -> PathBuf {
    fixtures().join("models/tiny-sd-c")
}

fn checkpoint() -> PathBuf {
    fixtures().join("models/tiny-sd-c.ckpt.safetensors")
}

#[test]
fn entry_point_loads_the_single_file_with_the_folder_beside_it() {
    let options = LoadOptions::default();
    let from_file = load_pipeline(&checkpoint(), &options).expect("single file");
    assert_eq!(from_file.folder(), checkpoint());
    let from_folder = load_pipeline(&folder(), &options).expect("folder");
    assert_eq!(from_folder.folder(), folder());
    let (r, want) = request(&fixtures().join("cases/c_dpmpp2m_128x64"));
    let a = first_image(&from_file, &r);
    let b = first_image(&from_folder, &r);
    let vs_folder = max_channel_diff(&a, &b);
    let vs_diffusers = max_channel_diff(&a, &want);
    println!(
        "entry point, single file: max |diff| {vs_folder} vs folder, {vs_diffusers} vs diffusers"
    );
    assert_eq!(vs_folder, 0);
    assert!(vs_diffusers <= 2);
}

fn error(path: &Path) -> String {
    load_pipeline(path, &LoadOptions::default())
        .expect_err("must not load")
        .to_string()
}

#[test]
fn entry_point_refuses_pickles_with_the_conversion_command() {
    for name in [
        "sd-v1-5-inpainting.ckpt",
        "model.pt",
        "model.pth",
        "model.bin",
    ] {
        let message = error(&fixtures().join("models").join(name));
        assert!(message.contains("ops/convert-ckpt.py"), "{name}: {message}");
    }
}

#[test]
fn a_lone_checkpoint_uses_builtin_sd15_configs_and_needs_a_tokenizer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let lone = dir.path().join("sd-v1-5-inpainting.safetensors");
    std::fs::copy(checkpoint(), &lone).expect("copy");
    let message = error(&lone);
    assert!(
        message.contains("tokenizer")
            && message.contains(&dir.path().join("tokenizer").display().to_string()),
        "{message}"
    );
    // With a tokenizer beside it, the built-in SD-1.5-inpainting configs are used: the tiny
    // weights do not fit them, and the error says which configs were tried.
    let tokenizer = dir.path().join("tokenizer");
    std::fs::create_dir(&tokenizer).expect("mkdir");
    for entry in std::fs::read_dir(folder().join("tokenizer")).expect("tokenizer") {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), tokenizer.join(entry.file_name())).expect("copy");
    }
    let message = error(&lone);
    assert!(message.contains("built-in SD-1.5-inpainting"), "{message}");
    assert!(message.contains("shape"), "{message}");
}

#[test]
fn a_file_that_is_no_checkpoint_and_no_folder_is_refused_clearly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = dir.path().join("model.txt");
    std::fs::write(&text, "x").expect("write");
    let message = error(&text);
    assert!(
        message.contains("model_index.json") && message.contains(".safetensors"),
        "{message}"
    );
}
