//! Progress as the contract counts it (schemas/progress-event.v1.schema.json): `on_step(done,
//! total)` reports denoising steps 1..=total, with `total` = `int(steps * strength)` (at least
//! 1), for every scheduler — not UNet calls (PNDM makes one more to warm up its history).

use std::path::PathBuf;

use image::{GrayImage, Luma, Rgb, RgbImage};
use inpaint_engine::model_folder::LoadOptions;
use inpaint_engine::pipeline::{
    BatchNoise, InpaintPipeline, InpaintRequest, StepControl, denoising_steps,
};
use inpaint_engine::schedulers::SchedulerKind;

fn request(scheduler: SchedulerKind, steps: usize, strength: f64) -> InpaintRequest {
    InpaintRequest {
        prompt: "a red fox".to_owned(),
        negative_prompt: None,
        image: Some(RgbImage::from_fn(32, 32, |x, y| {
            Rgb([(x * 8) as u8, (y * 8) as u8, 90])
        })),
        mask: Some(GrayImage::from_fn(32, 32, |x, _| {
            Luma([if x < 16 { 255 } else { 0 }])
        })),
        width: 32,
        height: 32,
        num_inference_steps: steps,
        guidance_scale: 1.0,
        strength,
        eta: 0.0,
        scheduler,
        seeds: vec![3],
        batch_noise: BatchNoise::PerImage,
    }
}

#[test]
fn progress_counts_denoising_steps_for_every_scheduler() {
    let folder = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/parity/fixtures/models/tiny-sd-a");
    let pipeline = InpaintPipeline::load(&folder, &LoadOptions::default()).expect("load");
    let mut checked = 0;
    for scheduler in SchedulerKind::ALL {
        for (steps, strength) in [(1, 1.0), (2, 1.0), (3, 1.0), (5, 0.6), (4, 0.5), (3, 0.34)] {
            let r = request(scheduler, steps, strength);
            let expected = ((steps as f64 * strength) as usize).clamp(1, steps);
            assert_eq!(denoising_steps(&r), expected);
            let mut seen = Vec::new();
            let mut on_step = |done: usize, total: usize| {
                seen.push((done, total));
                StepControl::Continue
            };
            // PNDM needs at least 2 steps in diffusers too; a refusal is not a progress question.
            if pipeline.run(&r, &mut on_step).is_err() {
                continue;
            }
            let want: Vec<(usize, usize)> = (1..=expected).map(|d| (d, expected)).collect();
            assert_eq!(
                seen, want,
                "{scheduler:?}, {steps} steps, strength {strength}"
            );
            checked += 1;
        }
    }
    assert!(checked >= 30, "only {checked} cases ran");
}
