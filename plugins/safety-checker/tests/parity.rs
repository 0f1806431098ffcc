//! Parity with diffusers' `StableDiffusionSafetyChecker` and transformers' `CLIPImageProcessor`
//! on the tiny random-weight checkers of `tests/parity/safety/` (see its `generate.py`).
//!
//! Bounds: preprocessing within 1e-6 (it is exact in practice), cosines within 1e-4, flags equal,
//! rounded scores equal up to one rounding step (0.001) when a cosine sits on a boundary.

// The tests print the measured differences so that regressions show their size.
#![allow(clippy::print_stdout)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use image::RgbImage;
use inpaint_engine::DeviceSpec;
use inpaint_plugin_api::{Chain, JobContext, OutputImage};
use inpaint_safety_checker::{NsfwAction, SafetyChecker, SafetyCheckerConfig};
use serde_json::Value;
use tch::{Device, Kind, Tensor};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/parity/safety/fixtures")
}

fn expected() -> Value {
    let text = std::fs::read_to_string(fixtures().join("expected.json")).expect("expected.json");
    serde_json::from_str(&text).expect("json")
}

fn images(expected: &Value) -> Vec<(String, RgbImage)> {
    expected["image_order"]
        .as_array()
        .expect("order")
        .iter()
        .map(|name| {
            let name = name.as_str().expect("name").to_owned();
            let path = fixtures().join("images").join(format!("{name}.png"));
            let image = image::open(&path).expect("png").to_rgb8();
            (name, image)
        })
        .collect()
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("number") as f32)
        .collect()
}

fn indices(v: &Value) -> Vec<usize> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_u64().expect("index") as usize)
        .collect()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn load(name: &str) -> SafetyChecker {
    let folder = fixtures().join(name);
    SafetyChecker::load(
        &folder.join("safety_checker"),
        &folder.join("feature_extractor"),
        Device::Cpu,
        Kind::Float,
    )
    .expect("load checker")
}

const CHECKERS: [&str; 2] = ["checker-a", "checker-b"];

#[test]
fn preprocessing_matches_transformers() {
    let expected = expected();
    let images = images(&expected);
    for name in CHECKERS {
        let checker = load(name);
        let reference: BTreeMap<String, Tensor> =
            Tensor::read_safetensors(fixtures().join(format!("pixels-{name}.safetensors")))
                .expect("pixels")
                .into_iter()
                .collect();
        let mut worst = 0f32;
        for (image_name, image) in &images {
            let mine = checker
                .preprocess(std::slice::from_ref(image))
                .expect("preprocess");
            let theirs = reference[image_name].unsqueeze(0);
            assert_eq!(mine.size(), theirs.size(), "{name}/{image_name}");
            let diff = (&mine - &theirs).abs().max().double_value(&[]) as f32;
            worst = worst.max(diff);
            assert!(
                diff <= 1e-6,
                "{name}/{image_name}: preprocessing differs by {diff}"
            );
        }
        println!("{name}: preprocessing max |diff| = {worst:e}");
    }
}

#[test]
fn scores_and_flags_match_diffusers() {
    let expected = expected();
    let images = images(&expected);
    let batch: Vec<RgbImage> = images.iter().map(|(_, i)| i.clone()).collect();
    for name in CHECKERS {
        let checker = load(name);
        let exp = &expected["checkers"][name];
        assert_eq!(
            checker.thresholds(),
            floats(&exp["concept_thresholds"]).as_slice()
        );
        assert_eq!(
            checker.special_thresholds(),
            floats(&exp["special_thresholds"]).as_slice()
        );
        let pixels = checker.preprocess(&batch).expect("preprocess");
        let cos = checker.cosine_scores(&pixels).expect("cosines");
        let results = checker.check(&batch).expect("check");
        let (mut cos_worst, mut score_worst, mut exact, mut total) = (0f32, 0f32, 0, 0);
        for (i, (image_name, _)) in images.iter().enumerate() {
            let e = &exp["images"][image_name];
            cos_worst = cos_worst
                .max(max_diff(&cos.concept[i], &floats(&e["cos_dist"])))
                .max(max_diff(&cos.special[i], &floats(&e["special_cos_dist"])));
            let r = &results[i];
            assert_eq!(
                r.nsfw,
                e["has_nsfw"].as_bool().expect("bool"),
                "{name}/{image_name}"
            );
            assert_eq!(
                r.flagged_concepts,
                indices(&e["bad_concepts"]),
                "{name}/{image_name}"
            );
            assert_eq!(
                r.special_care_concepts,
                indices(&e["special_care"]),
                "{name}/{image_name}"
            );
            for (mine, theirs) in r.concept_scores.iter().chain(&r.special_scores).zip(
                floats(&e["concept_scores"])
                    .iter()
                    .chain(&floats(&e["special_scores"])),
            ) {
                total += 1;
                exact += usize::from(mine == theirs);
                score_worst = score_worst.max((mine - theirs).abs());
            }
        }
        println!(
            "{name}: cos max |diff| = {cos_worst:e}; rounded scores equal {exact}/{total}, \
             max |diff| = {score_worst:e}; flags equal on {} images",
            images.len()
        );
        assert!(cos_worst <= 1e-4, "{name}: cosines differ by {cos_worst}");
        assert!(
            score_worst <= 1.001e-3,
            "{name}: scores differ by {score_worst}"
        );
        let flagged = results.iter().filter(|r| r.nsfw).count();
        assert!(
            flagged > 0 && flagged < images.len(),
            "{name}: fixture should mix verdicts"
        );
    }
}

#[test]
fn model_matches_on_the_reference_pixels() {
    // Separates the model from preprocessing: cosines from transformers' own pixel tensors.
    let expected = expected();
    for name in CHECKERS {
        let checker = load(name);
        let reference: BTreeMap<String, Tensor> =
            Tensor::read_safetensors(fixtures().join(format!("pixels-{name}.safetensors")))
                .expect("pixels")
                .into_iter()
                .collect();
        let order: Vec<String> = expected["image_order"]
            .as_array()
            .expect("order")
            .iter()
            .map(|v| v.as_str().expect("name").to_owned())
            .collect();
        let batch = Tensor::stack(&order.iter().map(|n| &reference[n]).collect::<Vec<_>>(), 0);
        let cos = checker.cosine_scores(&batch).expect("cosines");
        let mut worst = 0f32;
        for (i, image_name) in order.iter().enumerate() {
            let e = &expected["checkers"][name]["images"][image_name];
            worst = worst.max(max_diff(&cos.concept[i], &floats(&e["cos_dist"])));
        }
        println!("{name}: cos max |diff| on transformers' pixels = {worst:e}");
        assert!(worst <= 1e-4);
    }
}

#[test]
fn adjustment_makes_the_checker_stricter_or_looser() {
    let expected = expected();
    let batch: Vec<RgbImage> = images(&expected).into_iter().map(|(_, i)| i).collect();
    let count = |adjustment: f32| {
        load("checker-a")
            .with_adjustment(adjustment)
            .check(&batch)
            .expect("check")
            .iter()
            .filter(|r| r.nsfw)
            .count()
    };
    let base = count(0.0);
    assert_eq!(
        count(2.0),
        batch.len(),
        "everything flagged when very strict"
    );
    assert_eq!(count(-2.0), 0, "nothing flagged when very loose");
    assert!(count(0.05) >= base && count(-0.05) <= base);
}

fn stage(action: NsfwAction) -> Chain {
    let config = SafetyCheckerConfig {
        model: fixtures().join("checker-a"),
        device: DeviceSpec::Cpu,
        action,
        ..SafetyCheckerConfig::default()
    };
    Chain::new(vec![Box::new(config.build().expect("build stage"))])
}

#[test]
fn stage_blocks_blacks_out_or_blurs_flagged_images() {
    let expected = expected();
    let images = images(&expected);
    let flags: Vec<bool> = images
        .iter()
        .map(|(n, _)| expected["checkers"]["checker-a"]["images"][n]["has_nsfw"] == true)
        .collect();
    let outputs: Vec<OutputImage> = images
        .iter()
        .enumerate()
        .map(|(i, (_, img))| OutputImage::new(i as u32, 7, img.clone()))
        .collect();
    let ctx = JobContext::default();

    let outcome = stage(NsfwAction::Block)
        .after_output(&ctx, outputs.clone())
        .expect("runs");
    let kept: Vec<u32> = outcome.images.iter().map(|o| o.index).collect();
    let wanted: Vec<u32> = (0..flags.len() as u32)
        .filter(|i| !flags[*i as usize])
        .collect();
    assert_eq!(kept, wanted);
    assert_eq!(outcome.blocks.len(), flags.iter().filter(|f| **f).count());
    assert!(outcome.blocks.iter().all(|b| b.block.category == "nsfw"));
    for out in &outcome.images {
        assert_eq!(out.metadata_value("safety_checker.nsfw"), Some("false"));
        assert_eq!(out.reports[0].scores.len(), 17 + 3 + 2);
    }

    let outcome = stage(NsfwAction::BlackOut)
        .after_output(&ctx, outputs.clone())
        .expect("runs");
    assert_eq!(outcome.images.len(), flags.len());
    for (out, flagged) in outcome.images.iter().zip(&flags) {
        let black = out.image.pixels().all(|p| p.0 == [0, 0, 0]);
        assert_eq!(black, *flagged, "image {}", out.index);
        assert_eq!(
            out.image.dimensions(),
            outputs[out.index as usize].image.dimensions()
        );
    }

    let outcome = stage(NsfwAction::Blur)
        .after_output(&ctx, outputs.clone())
        .expect("runs");
    for (out, flagged) in outcome.images.iter().zip(&flags) {
        let changed = out.image != outputs[out.index as usize].image;
        assert_eq!(changed, *flagged, "image {}", out.index);
    }
}

#[test]
fn weight_problems_are_all_reported() {
    // A checker folder whose config says 3 layers for 2-layer weights.
    let dir = std::env::temp_dir().join(format!("safety-bad-{}", std::process::id()));
    let sc = dir.join("safety_checker");
    std::fs::create_dir_all(&sc).expect("mkdir");
    let src = fixtures().join("checker-a/safety_checker");
    std::fs::copy(src.join("model.safetensors"), sc.join("model.safetensors")).expect("copy");
    let mut config: Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).expect("read"))
            .expect("json");
    config["vision_config"]["num_hidden_layers"] = 3.into();
    config["vision_config"]["patch_size"] = 4.into();
    std::fs::write(sc.join("config.json"), config.to_string()).expect("write");
    let err = SafetyChecker::load(
        &sc,
        &fixtures().join("checker-a/feature_extractor"),
        Device::Cpu,
        Kind::Float,
    )
    .expect_err("mismatch")
    .to_string();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        err.contains("missing vision_model.encoder.layers.2"),
        "{err}"
    );
    assert!(err.contains("patch_embedding.weight: shape"), "{err}");
    assert!(err.contains("position_embedding.weight: shape"), "{err}");
}

#[test]
fn resize_matches_pillow_bit_for_bit() {
    use inpaint_safety_checker::config::Resample;
    use inpaint_safety_checker::preprocess::resize;
    let noise = image::open(fixtures().join("images/noise-53x37.png"))
        .expect("png")
        .to_rgb8();
    let cases =
        Tensor::read_safetensors(fixtures().join("resize-cases.safetensors")).expect("cases");
    assert!(cases.len() >= 16);
    let mut differing = 0usize;
    for (name, reference) in &cases {
        let (filter, size) = name.split_once('-').expect("name");
        let (w, h) = size.split_once('x').expect("size");
        let (w, h): (u32, u32) = (w.parse().expect("w"), h.parse().expect("h"));
        let resample = if filter == "bicubic" {
            Resample::Bicubic
        } else {
            Resample::Bilinear
        };
        let mine = resize(&noise, w, h, resample);
        let theirs = Vec::<u8>::try_from(&reference.flatten(0, -1)).expect("bytes");
        let diff = mine
            .as_raw()
            .iter()
            .zip(&theirs)
            .filter(|(a, b)| a != b)
            .count();
        assert_eq!(mine.as_raw().len(), theirs.len(), "{name}");
        differing += diff;
        assert_eq!(diff, 0, "{name}: {diff} bytes differ from Pillow");
    }
    println!(
        "PIL resize: {} cases, {differing} bytes differ",
        cases.len()
    );
}

#[test]
fn input_check_blocks_flagged_inputs_before_inference() {
    let expected = expected();
    let config = SafetyCheckerConfig {
        model: fixtures().join("checker-a"),
        device: DeviceSpec::Cpu,
        // The action applies to outputs; a flagged input blocks whatever it says.
        action: NsfwAction::BlackOut,
        check_input: true,
        ..SafetyCheckerConfig::default()
    };
    let chain = Chain::new(vec![Box::new(config.build().expect("build stage"))]);
    let (mut blocked, mut passed) = (0, 0);
    for (name, image) in images(&expected) {
        let flagged = expected["checkers"]["checker-a"]["images"][&name]["has_nsfw"] == true;
        let ctx = JobContext {
            input_image: Some(std::sync::Arc::new(image)),
            ..JobContext::default()
        };
        let outcome = chain.before_inference(ctx).expect("runs");
        assert_eq!(outcome.is_blocked(), flagged, "{name}");
        if let Some(record) = &outcome.block {
            blocked += 1;
            assert_eq!(record.block.category, "nsfw");
            assert!(record.block.reason.contains("input image"), "{name}");
            assert_eq!(record.block.scores.get("nsfw"), Some(&1.0));
        } else {
            passed += 1;
            assert_eq!(outcome.context.reports.len(), 1, "{name}");
            assert_eq!(outcome.context.reports[0].scores.len(), 17 + 3 + 2);
            assert_eq!(
                outcome
                    .context
                    .metadata
                    .get("safety_checker.input_nsfw")
                    .map(String::as_str),
                Some("false")
            );
        }
    }
    assert!(blocked > 0 && passed > 0, "fixture should mix verdicts");

    // Text-only jobs have nothing to check; a job whose image was not handed over fails closed.
    let text_only = JobContext {
        text_only: true,
        ..JobContext::default()
    };
    assert!(
        !chain
            .before_inference(text_only)
            .expect("runs")
            .is_blocked()
    );
    let err = chain
        .before_inference(JobContext::default())
        .expect_err("missing input image");
    assert!(err.to_string().contains("no input image"), "{err}");

    // Without `check_input` the stage does not look at the input.
    let outcome = stage(NsfwAction::Block)
        .before_inference(JobContext::default())
        .expect("runs");
    assert!(!outcome.is_blocked() && outcome.context.reports.is_empty());
}
