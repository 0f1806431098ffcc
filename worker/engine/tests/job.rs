//! `InpaintPipeline::run_job` on a tiny model: output sizes, `preserve_unmasked`, crop-to-mask,
//! text-only mode, cancellation, the fp16 weights variant and bad input.

// Measured differences are part of the test's output.
#![allow(clippy::print_stdout)]

use std::path::PathBuf;

use image::{GrayImage, Luma, RgbImage};
use inpaint_engine::EngineError;
use inpaint_engine::job::JobSpec;
use inpaint_engine::model_folder::LoadOptions;
use inpaint_engine::pipeline::{InpaintPipeline, StepControl};
use inpaint_engine::schedulers::SchedulerKind;
use tch::{Kind, Tensor};

mod pixels;
use pixels::{PixelDiff, pixel_diff};

fn model_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/parity/fixtures/models/tiny-sd-a")
}

fn pipeline() -> InpaintPipeline {
    InpaintPipeline::load(&model_dir(), &LoadOptions::default()).expect("load tiny-sd-a")
}

fn picture(w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([
            (x * 5 % 256) as u8,
            (y * 3 % 256) as u8,
            ((x ^ y) % 256) as u8,
        ])
    })
}

fn rect_mask(w: u32, h: u32, x0: u32, y0: u32, x1: u32, y1: u32) -> GrayImage {
    GrayImage::from_fn(w, h, |x, y| {
        Luma([if x >= x0 && x < x1 && y >= y0 && y < y1 {
            255
        } else {
            0
        }])
    })
}

fn spec(image: Option<RgbImage>, mask: Option<GrayImage>) -> JobSpec {
    JobSpec {
        prompt: "a red barn in a field".into(),
        negative_prompt: None,
        image,
        mask,
        width: None,
        height: None,
        num_inference_steps: 3,
        guidance_scale: 7.5,
        strength: 1.0,
        eta: 0.0,
        scheduler: SchedulerKind::Pndm,
        seeds: vec![7],
        preserve_unmasked: true,
        mask_grow_px: 0,
        mask_feather_px: 0,
        crop_to_mask: None,
        max_side: 64,
    }
}

fn go(p: &InpaintPipeline, s: &JobSpec) -> Result<inpaint_engine::job::JobImages, EngineError> {
    p.run_job(s, &mut |_, _| StepControl::Continue)
}

#[test]
fn unmasked_pixels_are_the_input_and_odd_sizes_come_back_unchanged() {
    let p = pipeline();
    let (image, mask) = (picture(37, 29), rect_mask(37, 29, 10, 8, 26, 20));
    let out = go(&p, &spec(Some(image.clone()), Some(mask.clone()))).expect("run");
    assert_eq!(out.inference_size, (32, 24));
    let result = &out.images[0];
    assert_eq!(result.dimensions(), (37, 29));
    let mut changed_inside = 0;
    for (x, y, pixel) in result.enumerate_pixels() {
        if mask.get_pixel(x, y).0[0] == 0 {
            assert_eq!(
                pixel,
                image.get_pixel(x, y),
                "pixel ({x},{y}) outside the mask changed"
            );
        } else if pixel != image.get_pixel(x, y) {
            changed_inside += 1;
        }
    }
    assert!(
        changed_inside > 100,
        "the masked region was repainted ({changed_inside} px)"
    );
}

#[test]
fn large_inputs_are_inpainted_through_a_crop_around_the_mask() {
    let p = pipeline();
    let (image, mask) = (picture(200, 120), rect_mask(200, 120, 120, 40, 150, 70));
    let out = go(&p, &spec(Some(image.clone()), Some(mask.clone()))).expect("run");
    let region = out.crop.expect("crop-to-mask ran");
    println!("crop {region:?} inferred at {:?}", out.inference_size);
    assert!(region.x <= 120 && region.x + region.width >= 150);
    assert_eq!(
        out.inference_size.0.max(out.inference_size.1),
        p.native_resolution()
    );
    let result = &out.images[0];
    assert_eq!(result.dimensions(), (200, 120));
    for (x, y, pixel) in result.enumerate_pixels() {
        if mask.get_pixel(x, y).0[0] == 0 {
            assert_eq!(pixel, image.get_pixel(x, y), "({x},{y})");
        }
    }
    assert_ne!(result.get_pixel(135, 55), image.get_pixel(135, 55));
}

#[test]
fn text_only_runs_at_native_resolution_and_reports_truncation() {
    let p = pipeline();
    let mut s = spec(None, None);
    s.prompt = "a very long prompt ".repeat(40);
    s.seeds = vec![1, 2];
    let out = go(&p, &s).expect("run");
    assert_eq!(out.images.len(), 2);
    assert_eq!(
        out.images[0].dimensions(),
        (p.native_resolution(), p.native_resolution())
    );
    assert!(out.prompt_truncated);
    assert_ne!(
        out.images[0], out.images[1],
        "different seeds, different images"
    );
}

#[test]
fn cancellation_between_steps_stops_the_run() {
    let p = pipeline();
    let s = spec(Some(picture(32, 32)), Some(rect_mask(32, 32, 8, 8, 24, 24)));
    let mut steps = 0;
    let err = p
        .run_job(&s, &mut |done, _| {
            steps = done;
            if done == 2 {
                StepControl::Cancel
            } else {
                StepControl::Continue
            }
        })
        .expect_err("cancelled");
    assert!(matches!(err, EngineError::Cancelled), "{err:?}");
    assert_eq!(steps, 2);
}

#[test]
fn bad_input_is_a_clear_error() {
    let p = pipeline();
    let image = picture(32, 32);
    let mask = rect_mask(32, 32, 8, 8, 24, 24);
    let cases: Vec<(JobSpec, &str)> = vec![
        (
            spec(Some(image.clone()), Some(rect_mask(16, 16, 0, 0, 8, 8))),
            "mask is 16x16 but image is 32x32",
        ),
        (
            spec(Some(image.clone()), None),
            "image and mask must be given together",
        ),
        (
            {
                let mut s = spec(Some(image.clone()), Some(mask.clone()));
                s.width = Some(36);
                s.height = Some(32);
                s
            },
            "multiples of 8",
        ),
        (
            {
                let mut s = spec(Some(image.clone()), Some(mask.clone()));
                s.width = Some(32);
                s
            },
            "width and height must be given together",
        ),
        (
            {
                let mut s = spec(Some(image.clone()), Some(mask.clone()));
                s.strength = 0.0;
                s
            },
            "strength must be in (0, 1]",
        ),
        (
            {
                let mut s = spec(Some(image.clone()), Some(mask.clone()));
                s.num_inference_steps = 0;
                s
            },
            "steps must be 1 to 1000",
        ),
        (
            {
                let mut s = spec(Some(image.clone()), Some(mask.clone()));
                s.seeds.clear();
                s
            },
            "at least one seed",
        ),
        (
            {
                let mut s = spec(Some(image.clone()), Some(GrayImage::new(32, 32)));
                s.crop_to_mask = Some(4);
                s
            },
            "the mask is empty",
        ),
        (
            {
                let mut s = spec(None, None);
                s.strength = 0.5;
                s
            },
            "text-only mode needs strength 1",
        ),
        (
            spec(Some(picture(5, 5)), Some(rect_mask(5, 5, 1, 1, 3, 3))),
            "smaller than the minimum size",
        ),
    ];
    for (s, expected) in cases {
        let err = go(&p, &s).expect_err(expected).to_string();
        assert!(err.contains(expected), "expected {expected:?} in {err:?}");
    }
}

#[test]
fn loading_errors_name_the_problem() {
    let err = InpaintPipeline::load(&model_dir().join("unet"), &LoadOptions::default())
        .expect_err("not a model");
    assert!(err.to_string().contains("no model_index.json"), "{err}");
    let dir = tempfile::tempdir().expect("tempdir");
    copy_dir(&model_dir(), dir.path());
    std::fs::remove_file(dir.path().join("vae/diffusion_pytorch_model.safetensors")).expect("rm");
    let err = InpaintPipeline::load(dir.path(), &LoadOptions::default()).expect_err("missing vae");
    assert!(
        err.to_string()
            .contains("vae/diffusion_pytorch_model.safetensors: missing"),
        "{err}"
    );
    let options = LoadOptions {
        variant: Some("fp16".into()),
        ..LoadOptions::default()
    };
    let err = InpaintPipeline::load(&model_dir(), &options).expect_err("no fp16 files");
    assert!(
        err.to_string().contains(".fp16.safetensors: missing"),
        "{err}"
    );
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            std::fs::create_dir_all(&target).expect("mkdir");
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

#[test]
fn fp16_variant_files_load_and_give_nearly_the_same_image() {
    // The published fp16 variant: every weights file as *.fp16.safetensors with half values.
    let dir = tempfile::tempdir().expect("tempdir");
    copy_dir(&model_dir(), dir.path());
    for (component, stem) in [
        ("unet", "diffusion_pytorch_model"),
        ("vae", "diffusion_pytorch_model"),
        ("text_encoder", "model"),
    ] {
        let full = dir
            .path()
            .join(component)
            .join(format!("{stem}.safetensors"));
        let tensors = Tensor::read_safetensors(&full).expect("read");
        let half: Vec<(String, Tensor)> = tensors
            .into_iter()
            .map(|(n, t)| (n, t.to_kind(Kind::Half)))
            .collect();
        let variant = dir
            .path()
            .join(component)
            .join(format!("{stem}.fp16.safetensors"));
        Tensor::write_safetensors(&half, &variant).expect("write");
        std::fs::remove_file(&full).expect("only the variant remains");
    }
    let options = LoadOptions {
        variant: Some("fp16".into()),
        ..LoadOptions::default()
    };
    let from_half = InpaintPipeline::load(dir.path(), &options).expect("load fp16 variant");
    let s = spec(Some(picture(32, 32)), Some(rect_mask(32, 32, 8, 8, 24, 24)));
    let a = go(&from_half, &s).expect("run").images.remove(0);
    let b = go(&pipeline(), &s).expect("run").images.remove(0);
    let PixelDiff { max, mean } = pixel_diff(&a, &b);
    println!("fp16-rounded weights vs fp32 weights: max |diff| = {max}, mean = {mean:.3}");
    // Only the weights' rounding to half precision differs; the images must stay close.
    assert!(mean < 1.0, "mean difference {mean}");
}

/// The load options `engine.channels_last` and `engine.vae_precision` map to, on the tiny
/// model: every scheduler's image with channels-last kernels against the dense ones (the same
/// values in another memory order: only the convolution algorithm may differ), and a bf16 VAE
/// against the f32 one (only the VAE's rounding differs).
#[test]
fn channels_last_and_vae_precision_keep_the_images() {
    let dense = pipeline();
    let nhwc = InpaintPipeline::load(
        &model_dir(),
        &LoadOptions {
            channels_last: true,
            ..LoadOptions::default()
        },
    )
    .expect("load channels-last");
    let bf16_vae = InpaintPipeline::load(
        &model_dir(),
        &LoadOptions {
            vae_kind: Kind::BFloat16,
            ..LoadOptions::default()
        },
    )
    .expect("load with a bf16 VAE");
    assert_eq!(bf16_vae.precision_summary(), "f32, VAE bf16");
    assert_eq!(nhwc.precision_summary(), "f32");
    for scheduler in SchedulerKind::ALL {
        let mut s = spec(Some(picture(32, 32)), Some(rect_mask(32, 32, 8, 8, 24, 24)));
        s.scheduler = scheduler;
        let reference = go(&dense, &s).expect("dense").images.remove(0);
        let PixelDiff { max, mean } =
            pixel_diff(&reference, &go(&nhwc, &s).expect("nhwc").images.remove(0));
        println!("{scheduler}: channels-last vs dense: max {max}, mean {mean:.4}");
        // Values are identical; summation order inside a convolution may differ by float
        // rounding, which stays far below one level in 8-bit pixels.
        assert!(
            max <= 1 && mean < 0.05,
            "{scheduler}: channels-last max {max}, mean {mean}"
        );
        let PixelDiff { max, mean } = pixel_diff(
            &reference,
            &go(&bf16_vae, &s).expect("bf16").images.remove(0),
        );
        println!("{scheduler}: bf16 VAE vs f32: max {max}, mean {mean:.3}");
        assert!(mean < 0.5, "{scheduler}: bf16 VAE mean difference {mean}");
    }
}
