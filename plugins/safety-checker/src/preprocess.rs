//! `CLIPImageProcessor` (transformers' PIL backend) in Rust: resize with PIL's antialiased
//! resampling on 8-bit pixels, center crop (zero padding when the image is smaller), rescale and
//! normalise.
//!
//! The resize reproduces Pillow's `ImagingResample` for 8-bit images: a separable convolution,
//! two passes in Pillow 13's order (see [`resize`]), each rounded back to 8 bits. For an output pixel `i` the filter
//! is centred on `(i + 0.5) * scale` in input coordinates, its support widened by the downscale
//! factor (`support * max(scale, 1)`, which is the antialiasing), its weights normalised to sum
//! 1, then turned into 22-bit fixed point (`±0.5` rounding away from zero); sums start at half an
//! output step and are shifted back and clamped to 0..=255. Bicubic uses `a = -0.5`, support 2.
//!
//! The float steps then follow numpy's arithmetic in transformers: `float32(uint8 * float64
//! rescale)`, then `(x - mean) / std` in float32. The result equals transformers' pixel values
//! exactly (the parity tests measure the difference).

use image::RgbImage;

use crate::config::{PreprocessorConfig, Resample, ResizeTo};
use crate::error::SafetyError;

const PRECISION_BITS: u32 = 32 - 8 - 2;

fn filter(resample: Resample, x: f64) -> f64 {
    let x = x.abs();
    match resample {
        Resample::Bilinear => {
            if x < 1.0 {
                1.0 - x
            } else {
                0.0
            }
        }
        Resample::Bicubic => {
            const A: f64 = -0.5;
            if x < 1.0 {
                ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
            } else if x < 2.0 {
                (((x - 5.0) * x + 8.0) * x - 4.0) * A
            } else {
                0.0
            }
        }
    }
}

fn support(resample: Resample) -> f64 {
    match resample {
        Resample::Bilinear => 1.0,
        Resample::Bicubic => 2.0,
    }
}

/// Fixed-point weights of one output pixel: the first input index and one weight per input.
struct Tap {
    first: usize,
    weights: Vec<i32>,
}

/// PIL's `precompute_coeffs` + `normalize_coeffs_8bpc` for a full-image box.
fn coefficients(in_size: usize, out_size: usize, resample: Resample) -> Vec<Tap> {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = support(resample) * filterscale;
    let ss = 1.0 / filterscale;
    let one = f64::from(1u32 << PRECISION_BITS);
    (0..out_size)
        .map(|xx| {
            let center = (xx as f64 + 0.5) * scale;
            // C's (int) casts truncate toward zero, as `as` does.
            let first = ((center - support + 0.5) as i64).max(0);
            let end = ((center + support + 0.5) as i64).min(in_size as i64);
            let raw: Vec<f64> = (first..end.max(first))
                .map(|x| filter(resample, (x as f64 - center + 0.5) * ss))
                .collect();
            let total: f64 = raw.iter().sum();
            let weights = raw
                .iter()
                .map(|w| {
                    let w = if total != 0.0 { w / total } else { *w };
                    if w < 0.0 {
                        (-0.5 + w * one) as i32
                    } else {
                        (0.5 + w * one) as i32
                    }
                })
                .collect();
            Tap {
                first: first as usize,
                weights,
            }
        })
        .collect()
}

fn clip8(sum: i32) -> u8 {
    (sum >> PRECISION_BITS).clamp(0, 255) as u8
}

/// One resampling pass over interleaved RGB rows. `along_x`: convolve within rows; otherwise
/// across rows. Returns the new buffer and its size.
fn pass(
    src: &[u8],
    (width, height): (usize, usize),
    out_len: usize,
    along_x: bool,
    resample: Resample,
) -> Vec<u8> {
    let in_len = if along_x { width } else { height };
    let taps = coefficients(in_len, out_len, resample);
    let (out_w, out_h) = if along_x {
        (out_len, height)
    } else {
        (width, out_len)
    };
    let mut out = vec![0u8; out_w * out_h * 3];
    let half = 1i32 << (PRECISION_BITS - 1);
    for y in 0..out_h {
        for x in 0..out_w {
            let tap = if along_x { &taps[x] } else { &taps[y] };
            let mut sums = [half; 3];
            for (k, &w) in tap.weights.iter().enumerate() {
                let (sx, sy) = if along_x {
                    (tap.first + k, y)
                } else {
                    (x, tap.first + k)
                };
                let base = (sy * width + sx) * 3;
                for (c, sum) in sums.iter_mut().enumerate() {
                    *sum = sum.wrapping_add(i32::from(src[base + c]).wrapping_mul(w));
                }
            }
            let base = (y * out_w + x) * 3;
            for (c, sum) in sums.iter().enumerate() {
                out[base + c] = clip8(*sum);
            }
        }
    }
    out
}

/// PIL's `Image.resize((width, height), resample)` for an RGB image (no reducing gap).
///
/// Pillow 13 runs the vertical pass first when the height shrinks by more than twice as many
/// pixels as the width (`in_h - out_h > 0 && in_h - out_h > 2 * (in_w - out_w)`), else the
/// horizontal pass first (the only order of Pillow 12 and earlier). Each pass rounds to 8 bits,
/// so the order changes results by one level here and there: this follows Pillow 13.
pub fn resize(image: &RgbImage, width: u32, height: u32, resample: Resample) -> RgbImage {
    let (in_w, in_h) = (image.width() as usize, image.height() as usize);
    let (out_w, out_h) = (width as usize, height as usize);
    let shrink_h = in_h as i64 - out_h as i64;
    let shrink_w = in_w as i64 - out_w as i64;
    let vertical_first = shrink_h > 0 && shrink_h > shrink_w * 2;
    let mut buf = image.as_raw().clone();
    let mut size = (in_w, in_h);
    let horizontal = |buf: &mut Vec<u8>, size: &mut (usize, usize)| {
        if out_w != in_w {
            *buf = pass(buf, *size, out_w, true, resample);
            size.0 = out_w;
        }
    };
    let vertical = |buf: &mut Vec<u8>, size: &mut (usize, usize)| {
        if out_h != in_h {
            *buf = pass(buf, *size, out_h, false, resample);
            size.1 = out_h;
        }
    };
    if vertical_first {
        vertical(&mut buf, &mut size);
        horizontal(&mut buf, &mut size);
    } else {
        horizontal(&mut buf, &mut size);
        vertical(&mut buf, &mut size);
    }
    // Sizes match the buffer by construction; an impossible mismatch yields an empty image.
    RgbImage::from_raw(width, height, buf).unwrap_or_default()
}

/// The size `get_resize_output_image_size(default_to_square=False)` computes: the shortest side
/// becomes `target`, the other `int(target * long / short)`.
pub fn shortest_edge_size(width: u32, height: u32, target: u32) -> (u32, u32) {
    let (short, long) = if width <= height {
        (width, height)
    } else {
        (height, width)
    };
    let new_long = (f64::from(target) * f64::from(long) / f64::from(short)) as u32;
    if width <= height {
        (target, new_long)
    } else {
        (new_long, target)
    }
}

/// Preprocesses one image into `[3, H, W]` float32 values (channel-major), with the output size.
pub fn preprocess(
    image: &RgbImage,
    config: &PreprocessorConfig,
) -> Result<(Vec<f32>, (u32, u32)), SafetyError> {
    let (w, h) = image.dimensions();
    if w == 0 || h == 0 {
        return Err(SafetyError::InvalidInput(format!("image is {w}x{h}")));
    }
    let resized;
    let image = match config.resize {
        Some(target) => {
            let (nw, nh) = match target {
                ResizeTo::ShortestEdge(s) => shortest_edge_size(w, h, s),
                ResizeTo::Exact { height, width } => (width, height),
            };
            if nw == 0 || nh == 0 {
                return Err(SafetyError::InvalidInput(format!(
                    "image {w}x{h} resizes to {nw}x{nh}"
                )));
            }
            if (nw, nh) == (w, h) {
                image
            } else {
                resized = resize(image, nw, nh, config.resample);
                &resized
            }
        }
        None => image,
    };
    let (w, h) = image.dimensions();
    let (out_h, out_w) = config.crop.unwrap_or((h, w));
    // Python's floor division; a negative offset means zero padding on that side.
    let top = (i64::from(h) - i64::from(out_h)).div_euclid(2);
    let left = (i64::from(w) - i64::from(out_w)).div_euclid(2);
    let plane = (out_h as usize) * (out_w as usize);
    let mut out = vec![0f32; 3 * plane];
    let raw = image.as_raw();
    for y in 0..out_h as usize {
        let sy = top + y as i64;
        for x in 0..out_w as usize {
            let sx = left + x as i64;
            let inside = (0..i64::from(h)).contains(&sy) && (0..i64::from(w)).contains(&sx);
            for c in 0..3 {
                let v = if inside {
                    raw[((sy as usize) * (w as usize) + sx as usize) * 3 + c]
                } else {
                    0
                };
                let mut value = match config.rescale {
                    Some(factor) => (f64::from(v) * factor) as f32,
                    None => f32::from(v),
                };
                if let Some((mean, std)) = &config.normalize {
                    value = (value - mean[c]) / std[c];
                }
                out[c * plane + y * out_w as usize + x] = value;
            }
        }
    }
    Ok((out, (out_w, out_h)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shortest_edge_truncates_like_python_int() {
        assert_eq!(shortest_edge_size(512, 512, 224), (224, 224));
        assert_eq!(shortest_edge_size(640, 480, 224), (298, 224));
        assert_eq!(shortest_edge_size(17, 13, 32), (41, 32));
        assert_eq!(shortest_edge_size(20, 50, 32), (32, 80));
    }

    #[test]
    fn constant_images_stay_constant() {
        let image = RgbImage::from_pixel(37, 23, image::Rgb([200, 17, 0]));
        for (w, h) in [(11, 7), (80, 50), (37, 5)] {
            let out = resize(&image, w, h, Resample::Bicubic);
            assert!(out.pixels().all(|p| p.0 == [200, 17, 0]), "{w}x{h}");
        }
    }

    #[test]
    fn bicubic_weights_sum_to_one_in_fixed_point() {
        for (i, o) in [(100, 7), (7, 100), (224, 224), (13, 32)] {
            for tap in coefficients(i, o, Resample::Bicubic) {
                let sum: i32 = tap.weights.iter().sum();
                assert!((sum - (1 << PRECISION_BITS)).abs() <= tap.weights.len() as i32);
            }
        }
    }
}
