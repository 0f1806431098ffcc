//! Micro-benchmark of the safety checker on CPU with the tiny parity checker (`checker-a`):
//! preprocessing and the whole check, per image, for batches of 1 and 8; plus the Rust
//! preprocessing of a 512x512 output to SD-1.5's 224x224 input (the real size).
//!
//! ```sh
//! cargo test -p inpaint-safety-checker --release --test bench -- --ignored --nocapture
//! ```
//!
//! The tiny model says nothing about ViT-L/14 (24 layers, 257 tokens, ~300M parameters): that
//! cost must be measured with the real weights, on the GPU the worker uses.

// The benchmark's output is its figures.
#![allow(clippy::print_stdout)]

use std::path::Path;
use std::time::Instant;

use image::RgbImage;
use inpaint_safety_checker::SafetyChecker;
use inpaint_safety_checker::config::{PreprocessorConfig, Resample, ResizeTo};
use inpaint_safety_checker::preprocess::preprocess;
use tch::{Device, Kind};

fn noise(width: u32, height: u32, seed: u32) -> RgbImage {
    let mut state = seed.wrapping_mul(2_654_435_761).max(1);
    RgbImage::from_fn(width, height, |_, _| {
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            (state >> 24) as u8
        };
        image::Rgb([next(), next(), next()])
    })
}

fn time_per_item(iterations: u32, items: usize, mut f: impl FnMut()) -> f64 {
    f();
    let start = Instant::now();
    for _ in 0..iterations {
        f();
    }
    start.elapsed().as_secs_f64() * 1e3 / f64::from(iterations) / items as f64
}

#[test]
#[ignore = "benchmark: run with --ignored --nocapture (release)"]
fn checker_cost_per_image() {
    tch::set_num_threads(1);
    let folder =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/parity/safety/fixtures/checker-a");
    let checker = SafetyChecker::load(
        &folder.join("safety_checker"),
        &folder.join("feature_extractor"),
        Device::Cpu,
        Kind::Float,
    )
    .expect("load");
    for batch in [1usize, 8] {
        let images: Vec<RgbImage> = (0..batch).map(|i| noise(512, 512, i as u32 + 1)).collect();
        let pre = time_per_item(20, batch, || {
            let _ = checker.preprocess(&images).expect("preprocess");
        });
        let total = time_per_item(20, batch, || {
            checker.check(&images).expect("check");
        });
        println!(
            "tiny checker-a, CPU 1 thread, 512x512 inputs, batch {batch}: preprocess \
             {pre:.3} ms/image, whole check {total:.3} ms/image"
        );
    }
    let sd15 = PreprocessorConfig {
        resize: Some(ResizeTo::ShortestEdge(224)),
        resample: Resample::Bicubic,
        crop: Some((224, 224)),
        rescale: Some(1.0 / 255.0),
        normalize: Some((
            [0.481_454_66, 0.457_827_5, 0.408_210_73],
            [0.268_629_54, 0.261_302_6, 0.275_777_1],
        )),
    };
    let image = noise(512, 512, 9);
    let ms = time_per_item(20, 1, || {
        preprocess(&image, &sd15).expect("preprocess");
    });
    println!("SD-1.5 preprocessing (512x512 -> 224x224, bicubic): {ms:.3} ms/image");
}
