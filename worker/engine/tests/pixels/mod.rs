//! How far apart two images are: the comparisons the engine's integration tests share.

// Each test crate uses the part it needs.
#![allow(dead_code)]

use image::RgbImage;

/// The largest and the mean absolute difference over every channel of every pixel, in levels.
#[derive(Clone, Copy, Debug)]
pub struct PixelDiff {
    pub max: u8,
    pub mean: f64,
}

pub fn pixel_diff(a: &RgbImage, b: &RgbImage) -> PixelDiff {
    assert_eq!(a.dimensions(), b.dimensions(), "images of different sizes");
    let (mut max, mut sum) = (0u8, 0u64);
    for (x, y) in a.as_raw().iter().zip(b.as_raw()) {
        let d = x.abs_diff(*y);
        max = max.max(d);
        sum += u64::from(d);
    }
    let count = a.as_raw().len().max(1);
    PixelDiff {
        max,
        mean: sum as f64 / count as f64,
    }
}

pub fn max_channel_diff(a: &RgbImage, b: &RgbImage) -> u8 {
    pixel_diff(a, b).max
}
