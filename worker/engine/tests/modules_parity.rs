//! Each network of each tiny model against diffusers/transformers, module by module, from the
//! references that tests/parity/modules/generate.py wrote. Prints the measured maximum
//! difference per module so regressions show before they reach the final pixels.

// The measured differences are part of the test's output.
#![allow(clippy::print_stdout)]

use std::collections::HashMap;
use std::path::PathBuf;

use inpaint_engine::model_folder::{LoadOptions, load_text_encoder, load_unet, load_vae};
use tch::{Kind, Tensor};

fn parity_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/parity")
}

fn models() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(parity_dir().join("modules/fixtures"))
        .expect("module fixtures")
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_suffix(".safetensors")
                .map(str::to_owned)
        })
        .collect();
    names.sort();
    assert!(
        names.len() >= 3,
        "expected the tiny models' references, found {names:?}"
    );
    names
}

fn references(model: &str) -> HashMap<String, Tensor> {
    let path = parity_dir().join(format!("modules/fixtures/{model}.safetensors"));
    Tensor::read_safetensors(path)
        .expect("read references")
        .into_iter()
        .collect()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    (a.to_kind(Kind::Double) - b.to_kind(Kind::Double))
        .abs()
        .max()
        .double_value(&[])
}

/// Bound relative to the reference's magnitude: fp32 re-implementations differ from the
/// reference only by summation order, well inside 1e-4 of the values' scale.
fn check(model: &str, what: &str, got: &Tensor, want: &Tensor) {
    let diff = max_diff(got, want);
    let scale = want.abs().max().double_value(&[]).max(1.0);
    println!("{model} {what}: max |diff| = {diff:.3e} (scale {scale:.2})");
    assert!(
        diff <= 1e-4 * scale,
        "{model} {what}: max |diff| {diff} exceeds {}",
        1e-4 * scale
    );
}

#[test]
fn text_encoders_match_transformers() {
    for model in models() {
        let r = references(&model);
        let folder = parity_dir().join("fixtures/models").join(&model);
        let encoder = load_text_encoder(&folder, &LoadOptions::default()).expect("load");
        let out = encoder.forward(&r["text.ids"]).expect("forward");
        check(&model, "text encoder", &out, &r["text.out"]);
    }
}

#[test]
fn vaes_match_diffusers() {
    for model in models() {
        let r = references(&model);
        let folder = parity_dir().join("fixtures/models").join(&model);
        let vae = load_vae(&folder, &LoadOptions::default()).expect("load");
        let dist = vae.encode(&r["vae.pixels"]);
        check(&model, "vae mean", &dist.mean, &r["vae.mean"]);
        check(&model, "vae std", &dist.std, &r["vae.std"]);
        check(
            &model,
            "vae decode",
            &vae.decode(&r["vae.latents"]),
            &r["vae.decoded"],
        );
    }
}

#[test]
fn unets_match_diffusers() {
    for model in models() {
        let r = references(&model);
        let folder = parity_dir().join("fixtures/models").join(&model);
        let unet = load_unet(&folder, &LoadOptions::default()).expect("load");
        for name in ["int", "float"] {
            let t = r[&format!("unet.{name}.timestep")].double_value(&[0]);
            let out = unet.forward(&r["unet.sample"], t, &r["unet.context"]);
            check(
                &model,
                &format!("unet t={t}"),
                &out,
                &r[&format!("unet.{name}.out")],
            );
        }
    }
}
