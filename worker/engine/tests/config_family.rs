//! Random configs of the SD-1.x family (tests/parity/unet_configs/generate.py): for each one that
//! uses only what the engine implements, the engine loads the component through
//! `model_folder::load_{unet,vae,text_encoder}` and matches diffusers/transformers' output; each
//! one with an unimplemented option is refused with an error naming it. Weights are regenerated
//! here from the generator's counter-based stream (`uniform`), bit for bit.

#![allow(clippy::print_stdout)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use inpaint_engine::model_folder::{LoadOptions, load_text_encoder, load_unet, load_vae};
use serde_json::Value;
use tch::{Kind, Tensor};

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/parity/unet_configs/fixtures")
}

/// The generator's `uniform`: splitmix64 steps `seed + k * GOLDEN` (k = 1..), top 24 bits as
/// exact values in [-1, 1).
fn uniform(seed: u64, count: usize) -> Vec<f64> {
    (1..=count as u64)
        .map(|k| {
            let mut z = seed.wrapping_add(k.wrapping_mul(GOLDEN));
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            (z >> 40) as f64 / f64::from(1u32 << 24) * 2.0 - 1.0
        })
        .collect()
}

/// The generator's `tensor`: scaled by `1/sqrt(fan_in)` for matrices and kernels, `1 + 0.1 u`
/// for 1-D weights (norm scales), `0.1 u` for biases.
fn tensor(seed: u64, name: &str, shape: &[i64]) -> Tensor {
    let count: i64 = shape.iter().product();
    let u = uniform(seed, count as usize);
    let values: Vec<f32> = if shape.len() >= 2 {
        let fan: i64 = shape[1..].iter().product();
        let scale = 1.0 / (fan as f64).sqrt();
        u.iter().map(|x| (x * scale) as f32).collect()
    } else if name.ends_with("weight") {
        u.iter().map(|x| (1.0 + 0.1 * x) as f32).collect()
    } else {
        u.iter().map(|x| (0.1 * x) as f32).collect()
    };
    Tensor::from_slice(&values).reshape(shape)
}

/// Writes `<dir>/<component>/config.json` and the weights file the loader reads.
fn write_component(dir: &Path, case: &Value) -> Result<(), Box<dyn std::error::Error>> {
    let component = case["component"].as_str().ok_or("component")?;
    let seed = case["seed"].as_u64().ok_or("seed")?;
    let sub = dir.join(component);
    std::fs::create_dir_all(&sub)?;
    std::fs::write(sub.join("config.json"), case["config"].to_string())?;
    let mut tensors = Vec::new();
    for (k, entry) in case["tensors"]
        .as_array()
        .ok_or("tensors")?
        .iter()
        .enumerate()
    {
        let name = entry[0].as_str().ok_or("name")?.to_owned();
        let shape: Vec<i64> = serde_json::from_value(entry[1].clone())?;
        tensors.push((name.clone(), tensor(seed * 4096 + k as u64, &name, &shape)));
    }
    let file = if component == "text_encoder" {
        "model.safetensors"
    } else {
        "diffusion_pytorch_model.safetensors"
    };
    Tensor::write_safetensors(&tensors, sub.join(file))?;
    Ok(())
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    (a.to_kind(Kind::Double) - b.to_kind(Kind::Double))
        .abs()
        .max()
        .double_value(&[])
}

#[test]
fn random_family_configs_match_diffusers_or_are_refused_by_name() {
    let fixture: Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("cases.json")).expect("cases.json"),
    )
    .expect("json");
    let expected: HashMap<String, Tensor> =
        Tensor::read_safetensors(fixtures().join("expected.safetensors"))
            .expect("expected.safetensors")
            .into_iter()
            .collect();
    let cases = fixture["cases"].as_array().expect("cases");
    let options = LoadOptions::default();
    let (mut matched, mut refused, mut worst) = (0, 0, 0.0f64);
    let mut failures = Vec::new();
    for case in cases {
        let name = case["name"].as_str().expect("name");
        let dir = tempfile::tempdir().expect("tempdir");
        write_component(dir.path(), case).expect("write component");
        let r = |key: &str| &expected[&format!("{name}.{key}")];
        let out = match case["component"].as_str() {
            Some("unet") => load_unet(dir.path(), &options).map(|unet| {
                let t = case["timestep"].as_f64().expect("timestep");
                unet.forward(r("sample"), t, r("context"))
            }),
            Some("vae") => load_vae(dir.path(), &options).map(|vae| {
                let mean = vae.encode(r("pixels")).mean;
                let d = max_diff(&mean, r("mean"));
                assert!(d <= 1e-4, "{name}: vae mean differs by {d}");
                vae.decode(&mean)
            }),
            Some("text_encoder") => load_text_encoder(dir.path(), &options)
                .and_then(|encoder| encoder.forward(r("ids"))),
            other => panic!("{name}: component {other:?}"),
        };
        match (case["expect"].as_str(), out) {
            (Some("match"), Ok(out)) => {
                let want = r("out");
                let diff = max_diff(&out, want);
                let scale = want.abs().max().double_value(&[]).max(1.0);
                let relative = diff / scale;
                worst = worst.max(relative);
                if diff > 1e-4 * scale {
                    failures.push(format!("{name}: max |diff| {diff:.3e} (scale {scale:.2})"));
                }
                matched += 1;
            }
            (Some("refuse"), Err(e)) => {
                let word = case["refuse_word"].as_str().expect("word");
                let message = e.to_string();
                if !message.contains(word) {
                    failures.push(format!("{name}: refused without naming {word}: {message}"));
                }
                refused += 1;
            }
            (Some("match"), Err(e)) => failures.push(format!("{name}: refused: {e}")),
            (_, Ok(_)) => failures.push(format!(
                "{name}: loaded although it sets {}",
                case["refuse_word"]
            )),
            (other, Err(e)) => failures.push(format!("{name}: expect {other:?}: {e}")),
        }
    }
    println!(
        "config family: {} cases, {matched} loaded and matched (worst max |diff| / scale = \
         {worst:.3e}), {refused} refused by name",
        cases.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(
        matched >= 40 && refused >= 5,
        "{matched} matched, {refused} refused"
    );
}
