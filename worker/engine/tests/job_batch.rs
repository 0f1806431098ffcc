//! Jobs batched across one denoising loop ([`InpaintPipeline::run_jobs`], what the worker's
//! cross-job batching runs) against each job run alone ([`InpaintPipeline::run_job`]): the final
//! images must be byte-identical on the CPU in f32 whatever the jobs' layouts — an input at the
//! inference size, one resized to an explicit size, one rounded down and resized back,
//! crop-to-mask — as long as they share the inference size, for every scheduler, a 4-channel and
//! a 9-channel model; and a job cancelled mid-loop leaves the others unchanged.

use std::path::PathBuf;

use image::{GrayImage, Luma, Rgb, RgbImage};
use inpaint_engine::EngineError;
use inpaint_engine::job::{JobImages, JobItem, JobSpec};
use inpaint_engine::model_folder::LoadOptions;
use inpaint_engine::pipeline::{InpaintPipeline, StepControl};
use inpaint_engine::schedulers::SchedulerKind;

/// A 9-channel model from pure noise, and a 4-channel one from the noised input (strength < 1,
/// the path that draws image latents): the two ways a loop starts.
const MODELS: [(&str, f64); 2] = [("tiny-sd-a", 1.0), ("tiny-sd-4ch", 0.75)];

fn model_dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/parity/fixtures/models")
        .join(name)
}

fn picture(width: u32, height: u32, variant: u32) -> RgbImage {
    RgbImage::from_fn(width, height, |x, y| {
        let v = variant * 53;
        Rgb([
            ((x * 4 + v) % 256) as u8,
            ((y * 8 + 2 * v) % 256) as u8,
            ((x * y + 3 * v) % 256) as u8,
        ])
    })
}

fn mask(width: u32, height: u32, variant: u32) -> GrayImage {
    let x0 = 4 + variant * 6 % (width / 2);
    GrayImage::from_fn(width, height, |x, y| {
        Luma([if x >= x0 && x < x0 + 20 && (6..26).contains(&y) {
            255
        } else {
            0
        }])
    })
}

/// Five jobs that all run at 64x32 but reach it by different layouts, with mixed prompts,
/// guidance (with and without), seeds and image counts.
fn jobs(scheduler: SchedulerKind, strength: f64) -> Vec<JobSpec> {
    let eta = if scheduler == SchedulerKind::Ddim {
        0.5
    } else {
        0.0
    };
    let job = |prompt: &str, guidance: f64, seeds: &[u64], size: (u32, u32), v: u32| JobSpec {
        prompt: prompt.to_owned(),
        negative_prompt: v.is_multiple_of(2).then(|| "blurry".to_owned()),
        image: Some(picture(size.0, size.1, v)),
        mask: Some(mask(size.0, size.1, v)),
        width: None,
        height: None,
        num_inference_steps: 4,
        guidance_scale: guidance,
        strength,
        eta,
        scheduler,
        seeds: seeds.to_vec(),
        preserve_unmasked: true,
        mask_grow_px: v % 3,
        mask_feather_px: v % 2,
        crop_to_mask: None,
        max_side: 1024,
    };
    let mut explicit = job("a lighthouse at night", 1.0, &[12, 13], (80, 40), 1);
    (explicit.width, explicit.height) = (Some(64), Some(32));
    let mut cropped = job("a bowl of fruit", 3.0, &[14], (96, 64), 2);
    (cropped.width, cropped.height, cropped.crop_to_mask) = (Some(64), Some(32), Some(4));
    let mut raw = job("an old map", 5.0, &[16], (64, 32), 4);
    raw.preserve_unmasked = false;
    vec![
        job("a red fox in the snow", 7.5, &[11], (64, 32), 0),
        explicit,
        cropped,
        // Rounded down to 64x32, resized back to 67x35 after inference.
        job("a red fox in the snow", 0.5, &[15], (67, 35), 3),
        raw,
    ]
}

fn continue_always(_: usize, _: usize) -> StepControl {
    StepControl::Continue
}

fn alone(pipeline: &InpaintPipeline, spec: &JobSpec) -> JobImages {
    pipeline
        .run_job(spec, &mut continue_always)
        .unwrap_or_else(|e| panic!("solo job failed: {e}"))
}

fn batched(
    pipeline: &InpaintPipeline,
    specs: &[JobSpec],
    on_step: &mut [Box<dyn FnMut(usize, usize) -> StepControl + '_>],
) -> Vec<Result<JobImages, EngineError>> {
    let items = specs
        .iter()
        .zip(on_step.iter_mut())
        .map(|(spec, on_step)| JobItem {
            job: pipeline.plan_job(spec).expect("plan"),
            on_step: &mut **on_step,
        })
        .collect();
    pipeline.run_jobs(items).expect("batch")
}

#[test]
fn every_job_of_a_batch_is_byte_identical_to_running_alone() {
    let mut failures = Vec::new();
    let mut compared = 0;
    for (model, strength) in MODELS {
        let pipeline =
            InpaintPipeline::load(&model_dir(model), &LoadOptions::default()).expect("load");
        for scheduler in SchedulerKind::ALL {
            let specs = jobs(scheduler, strength);
            let shapes: Vec<_> = specs
                .iter()
                .map(|s| pipeline.job_shape(s).expect("shape"))
                .collect();
            assert!(
                shapes.iter().all(|s| s.matches(&shapes[0])),
                "the jobs must share one shape: {shapes:?}"
            );
            let solo: Vec<JobImages> = specs.iter().map(|s| alone(&pipeline, s)).collect();
            let mut callbacks: Vec<Box<dyn FnMut(usize, usize) -> StepControl>> = specs
                .iter()
                .map(|_| Box::new(continue_always) as Box<_>)
                .collect();
            let together = batched(&pipeline, &specs, &mut callbacks);
            for (i, (solo, together)) in solo.iter().zip(together).enumerate() {
                let together = together.expect("batched job");
                compared += together.images.len();
                if solo.images != together.images
                    || solo.inference_size != together.inference_size
                    || solo.crop != together.crop
                {
                    failures.push(format!("{model} {scheduler} strength {strength} job {i}"));
                }
            }
        }
    }
    assert!(failures.is_empty(), "not byte-identical: {failures:#?}");
    assert_eq!(compared, 2 * 6 * 6, "images compared");
}

#[test]
fn a_cancelled_job_leaves_the_others_of_its_batch_unchanged() {
    let pipeline =
        InpaintPipeline::load(&model_dir("tiny-sd-a"), &LoadOptions::default()).expect("load");
    let specs = jobs(SchedulerKind::EulerAncestral, 1.0);
    let solo: Vec<JobImages> = specs.iter().map(|s| alone(&pipeline, s)).collect();
    let cancelled = 1;
    let mut callbacks: Vec<Box<dyn FnMut(usize, usize) -> StepControl>> = (0..specs.len())
        .map(|i| {
            Box::new(move |done: usize, _total: usize| {
                if i == cancelled && done == 2 {
                    StepControl::Cancel
                } else {
                    StepControl::Continue
                }
            }) as Box<_>
        })
        .collect();
    let together = batched(&pipeline, &specs, &mut callbacks);
    for (i, (solo, together)) in solo.iter().zip(together).enumerate() {
        if i == cancelled {
            assert!(matches!(together, Err(EngineError::Cancelled)), "job {i}");
        } else {
            assert_eq!(
                solo.images,
                together.expect("batched job").images,
                "job {i}"
            );
        }
    }
}

#[test]
fn a_job_that_fails_its_checks_is_refused_before_it_joins_a_batch() {
    let pipeline =
        InpaintPipeline::load(&model_dir("tiny-sd-a"), &LoadOptions::default()).expect("load");
    let mut spec = jobs(SchedulerKind::Pndm, 1.0).remove(0);
    spec.mask = Some(mask(32, 32, 0));
    for err in [
        pipeline.job_shape(&spec).expect_err("shape"),
        pipeline.plan_job(&spec).expect_err("plan"),
    ] {
        assert!(
            matches!(&err, EngineError::InvalidInput(m) if m.contains("mask is 32x32")),
            "{err}"
        );
    }
}
