//! Shared by `single_file.rs` and `load_entry.rs`: the tiny-sd-c parity case as a request, and
//! the image comparison both make (single file vs folder vs diffusers).

use std::path::Path;

use inpaint_engine::pipeline::{
    BatchNoise, InpaintPipeline, InpaintRequest, StepControl, pil_luma,
};
use inpaint_engine::schedulers::SchedulerKind;
use serde_json::Value;

pub fn request(dir: &Path) -> (InpaintRequest, image::RgbImage) {
    let case: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("case.json")).expect("read"))
            .expect("case.json");
    assert_eq!(case["model"], "tiny-sd-c");
    assert_eq!(case["scheduler"], "DPMSolverMultistepScheduler");
    let image = image::open(dir.join("image.png")).expect("image").to_rgb8();
    let mask = match image::open(dir.join("mask.png")).expect("mask") {
        image::DynamicImage::ImageLuma8(gray) => gray,
        other => pil_luma(&other.to_rgb8()),
    };
    let request = InpaintRequest {
        prompt: case["prompt"].as_str().expect("prompt").to_owned(),
        negative_prompt: case["negative_prompt"].as_str().map(str::to_owned),
        image: Some(image),
        mask: Some(mask),
        width: case["width"].as_u64().expect("width") as u32,
        height: case["height"].as_u64().expect("height") as u32,
        num_inference_steps: case["num_inference_steps"].as_u64().expect("steps") as usize,
        guidance_scale: case["guidance_scale"].as_f64().expect("guidance"),
        strength: case["strength"].as_f64().expect("strength"),
        eta: case["eta"].as_f64().unwrap_or(0.0),
        scheduler: SchedulerKind::Dpmpp2m,
        seeds: case["seeds"]
            .as_array()
            .expect("seeds")
            .iter()
            .filter_map(Value::as_u64)
            .collect(),
        batch_noise: BatchNoise::DiffusersList,
    };
    let want = image::open(dir.join("output_0.png"))
        .expect("reference")
        .to_rgb8();
    (request, want)
}

pub fn first_image(pipeline: &InpaintPipeline, r: &InpaintRequest) -> image::RgbImage {
    pipeline
        .run(r, &mut |_, _| StepControl::Continue)
        .expect("run")
        .images
        .remove(0)
}
