//! The engine against diffusers on the same CPU, in one run: one tiny-model parity case through
//! `InpaintPipeline::run` (model loading excluded) and through diffusers'
//! `StableDiffusionInpaintPipeline` (tests/parity/bench_diffusers.py), median of N runs each.
//!
//!     cargo bench -p inpaint-engine --bench vs_diffusers [-- CASE REPEATS]
//!
//! Prints both medians and the ratio. A benchmark, not a test: nothing is asserted.

#![allow(clippy::print_stdout)]

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use inpaint_engine::model_folder::LoadOptions;
use inpaint_engine::pipeline::{
    BatchNoise, InpaintPipeline, InpaintRequest, StepControl, pil_luma,
};
use inpaint_engine::schedulers::SchedulerKind;
use serde_json::Value;
use tch::get_num_threads;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let case_name = args
        .first()
        .cloned()
        .unwrap_or_else(|| "c_dpmpp2m_128x64".into());
    let repeats: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(5);
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let case_dir = root.join("tests/parity/fixtures/cases").join(&case_name);
    let case: Value = serde_json::from_str(&std::fs::read_to_string(case_dir.join("case.json"))?)?;

    let model = root
        .join("tests/parity/fixtures/models")
        .join(case["model"].as_str().unwrap_or(""));
    let pipeline = InpaintPipeline::load(&model, &LoadOptions::default())?;
    let karras = case["scheduler_kwargs"]["use_karras_sigmas"]
        .as_bool()
        .unwrap_or(false);
    let scheduler = match case["scheduler"].as_str().unwrap_or("") {
        "DDIMScheduler" => SchedulerKind::Ddim,
        "EulerDiscreteScheduler" => SchedulerKind::Euler,
        "EulerAncestralDiscreteScheduler" => SchedulerKind::EulerAncestral,
        "DPMSolverMultistepScheduler" if karras => SchedulerKind::Dpmpp2mKarras,
        "DPMSolverMultistepScheduler" => SchedulerKind::Dpmpp2m,
        _ => SchedulerKind::Pndm,
    };
    let mask = match image::open(case_dir.join("mask.png"))? {
        image::DynamicImage::ImageLuma8(gray) => gray,
        other => pil_luma(&other.to_rgb8()),
    };
    let request = InpaintRequest {
        prompt: case["prompt"].as_str().unwrap_or("").to_owned(),
        negative_prompt: case["negative_prompt"].as_str().map(str::to_owned),
        image: Some(image::open(case_dir.join("image.png"))?.to_rgb8()),
        mask: Some(mask),
        width: case["width"].as_u64().unwrap_or(64) as u32,
        height: case["height"].as_u64().unwrap_or(64) as u32,
        num_inference_steps: case["num_inference_steps"].as_u64().unwrap_or(4) as usize,
        guidance_scale: case["guidance_scale"].as_f64().unwrap_or(7.5),
        strength: case["strength"].as_f64().unwrap_or(1.0),
        eta: case["eta"].as_f64().unwrap_or(0.0),
        scheduler,
        seeds: case["seeds"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_u64).collect())
            .unwrap_or_default(),
        batch_noise: BatchNoise::DiffusersList,
    };
    let run = || -> Result<f64, Box<dyn std::error::Error>> {
        let start = Instant::now();
        pipeline.run(&request, &mut |_, _| StepControl::Continue)?;
        Ok(start.elapsed().as_secs_f64())
    };
    run()?; // warm-up, as on the Python side
    let ours = (0..repeats).map(|_| run()).collect::<Result<Vec<_>, _>>()?;

    let python = root.join(".venv/bin/python");
    let output = Command::new(&python)
        .arg(root.join("tests/parity/bench_diffusers.py"))
        .arg(&case_dir)
        .arg(repeats.to_string())
        .output()?;
    if !output.status.success() {
        return Err(format!(
            "diffusers run failed: {}",
            String::from_utf8_lossy(&output.stderr)
        )
        .into());
    }
    let line = String::from_utf8_lossy(&output.stdout);
    let reference: Value = serde_json::from_str(line.lines().last().unwrap_or("{}"))?;
    let theirs: Vec<f64> = reference["seconds"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_f64).collect())
        .unwrap_or_default();
    if theirs.is_empty() {
        return Err("diffusers printed no timings".into());
    }
    let (ours, theirs) = (median(ours), median(theirs));
    println!(
        "case {case_name} ({}x{}, {} steps, guidance {}), CPU threads: libtorch {}, torch {}",
        request.width,
        request.height,
        request.num_inference_steps,
        request.guidance_scale,
        get_num_threads(),
        reference["threads"]
    );
    println!("inpaint-engine: {:.1} ms (median of {repeats})", ours * 1e3);
    println!(
        "diffusers:      {:.1} ms (median of {repeats})",
        theirs * 1e3
    );
    println!("ratio diffusers / inpaint-engine: {:.2}x", theirs / ours);
    Ok(())
}
