//! Measures how the dwtDct watermark survives common transformations, and how unmarked images
//! read. Prints a table of bits matched (payload `StableDiffusionV1-Inpainting`, 224 bits).
//!
//! ```text
//! cargo run --release -p inpaint-watermark --example robustness [-- --write DIR]
//! ```
//!
//! `--write DIR` also writes the unmarked test images to `DIR` so that
//! `tests/parity/watermark/generate.py --measure DIR` can measure Pillow's JPEG with 4:2:0 and
//! 4:4:4 chroma on the same images (the `image` crate's JPEG encoder only writes 4:4:4).
//!
//! The images are procedural (multi-octave value noise, soft blobs, hard edges, flat areas) plus
//! the parity fixtures' inputs: a stand-in for model outputs, not a sample of them.

// An operator tool that prints its measurements.
#![allow(clippy::print_stdout)]

use std::io::Cursor;
use std::path::{Path, PathBuf};

use image::codecs::jpeg::JpegEncoder;
use image::imageops::{self, FilterType};
use image::{ImageFormat, Rgb, RgbImage};
use inpaint_watermark::{Payload, decode, encode};

/// xorshift32: small, deterministic, good enough for test pictures.
struct Rng(u32);

impl Rng {
    fn next(&mut self) -> u32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 17;
        self.0 ^= self.0 << 5;
        self.0
    }

    fn unit(&mut self) -> f64 {
        f64::from(self.next()) / f64::from(u32::MAX)
    }
}

/// Bilinear value noise: a `cells × cells` lattice of random colours, interpolated.
fn value_noise(rng: &mut Rng, size: u32, cells: u32, amplitude: f64) -> Vec<[f64; 3]> {
    let lattice: Vec<[f64; 3]> = (0..(cells + 1) * (cells + 1))
        .map(|_| [rng.unit() - 0.5, rng.unit() - 0.5, rng.unit() - 0.5])
        .collect();
    let at = |i: u32, j: u32| lattice[(i * (cells + 1) + j) as usize];
    let mut out = Vec::with_capacity((size * size) as usize);
    for y in 0..size {
        for x in 0..size {
            let fy = f64::from(y) * f64::from(cells) / f64::from(size);
            let fx = f64::from(x) * f64::from(cells) / f64::from(size);
            let (i, j) = (fy as u32, fx as u32);
            let (ty, tx) = (fy - f64::from(i), fx - f64::from(j));
            let mut px = [0.0; 3];
            for (c, value) in px.iter_mut().enumerate() {
                let top = at(i, j)[c] * (1.0 - tx) + at(i, j + 1)[c] * tx;
                let bottom = at(i + 1, j)[c] * (1.0 - tx) + at(i + 1, j + 1)[c] * tx;
                *value = (top * (1.0 - ty) + bottom * ty) * amplitude;
            }
            out.push(px);
        }
    }
    out
}

fn procedural(seed: u32, size: u32) -> RgbImage {
    let mut rng = Rng(seed.wrapping_mul(2_654_435_761).max(1));
    let base = [
        60.0 + 140.0 * rng.unit(),
        60.0 + 140.0 * rng.unit(),
        60.0 + 140.0 * rng.unit(),
    ];
    let octaves = [(3, 160.0), (9, 70.0), (27, 30.0), (81, 12.0)];
    let mut acc = vec![base; (size * size) as usize];
    for (cells, amplitude) in octaves {
        for (px, noise) in acc
            .iter_mut()
            .zip(value_noise(&mut rng, size, cells, amplitude))
        {
            for c in 0..3 {
                px[c] += noise[c];
            }
        }
    }
    let mut image = RgbImage::from_fn(size, size, |x, y| {
        let px = acc[(y * size + x) as usize];
        let grain = (rng.unit() - 0.5) * 6.0;
        Rgb(px.map(|v| (v + grain).clamp(0.0, 255.0) as u8))
    });
    // A hard-edged rectangle and a flat sky band, as in many pictures.
    let colour = Rgb([rng.next() as u8, rng.next() as u8, rng.next() as u8]);
    let (x0, y0) = (rng.next() % (size / 2), rng.next() % (size / 2));
    for y in y0..y0 + size / 4 {
        for x in x0..x0 + size / 3 {
            image.put_pixel(x, y, colour);
        }
    }
    if seed.is_multiple_of(2) {
        let sky = Rgb([120, 170, 230]);
        for y in 0..size / 6 {
            for x in 0..size {
                image.put_pixel(x, y, sky);
            }
        }
    }
    image
}

fn png_round_trip(image: &RgbImage) -> RgbImage {
    let mut bytes = Cursor::new(Vec::new());
    image
        .write_to(&mut bytes, ImageFormat::Png)
        .expect("encode PNG");
    image::load_from_memory(bytes.get_ref())
        .expect("decode PNG")
        .to_rgb8()
}

fn jpeg_round_trip(image: &RgbImage, quality: u8) -> RgbImage {
    let mut bytes = Vec::new();
    JpegEncoder::new_with_quality(&mut bytes, quality)
        .encode_image(image)
        .expect("encode JPEG");
    image::load_from_memory(&bytes)
        .expect("decode JPEG")
        .to_rgb8()
}

/// Bits matched, as text; `-` where the image is too small to read.
fn matched(image: &RgbImage, payload: &Payload) -> String {
    match decode(image, payload.len()) {
        Ok(bits) => bits
            .iter()
            .zip(payload.bits())
            .filter(|(a, b)| a == b)
            .count()
            .to_string(),
        Err(_) => "-".to_owned(),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let write_dir = args
        .iter()
        .position(|a| a == "--write")
        .and_then(|i| args.get(i + 1))
        .map(PathBuf::from);

    let fixtures =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/parity/watermark/fixtures");
    let mut images: Vec<(String, RgbImage)> = (1..=8)
        .map(|seed| (format!("proc{seed}-512"), procedural(seed, 512)))
        .collect();
    for name in ["gradient", "scene", "saturated"] {
        let path = fixtures.join(format!("input_{name}.png"));
        if let Ok(image) = image::open(&path) {
            images.push((format!("fixture-{name}"), image.to_rgb8()));
        }
    }
    if let Some(dir) = &write_dir {
        std::fs::create_dir_all(dir).expect("create --write dir");
        for (name, image) in &images {
            image
                .save(dir.join(format!("{name}.png")))
                .expect("write image");
        }
    }

    let payload = Payload::default();
    println!(
        "bits matched of {} (payload StableDiffusionV1-Inpainting, {} of its bits are 1)",
        payload.len(),
        payload.bits().iter().filter(|&&b| b).count()
    );
    let columns = [
        "none", "png", "jpeg95", "jpeg90", "jpeg75", "half+up", "0.75x", "crop2px", "unmarked",
        "ones-rd",
    ];
    print!("{:<18}", "image");
    for c in columns {
        print!("{c:>9}");
    }
    println!();
    for (name, image) in &images {
        let marked = encode(image, payload.bits()).expect("encode");
        let (w, h) = marked.dimensions();
        let half_up = imageops::resize(
            &imageops::resize(&marked, w / 2, h / 2, FilterType::Triangle),
            w,
            h,
            FilterType::Triangle,
        );
        let smaller = imageops::resize(&marked, w * 3 / 4, h * 3 / 4, FilterType::Lanczos3);
        let cropped = imageops::crop_imm(&marked, 2, 0, w - 2, h).to_image();
        let unmarked_ones = decode(image, payload.len())
            .map(|bits| bits.iter().filter(|&&b| b).count().to_string())
            .unwrap_or_else(|_| "-".to_owned());
        let row = [
            matched(&marked, &payload),
            matched(&png_round_trip(&marked), &payload),
            matched(&jpeg_round_trip(&marked, 95), &payload),
            matched(&jpeg_round_trip(&marked, 90), &payload),
            matched(&jpeg_round_trip(&marked, 75), &payload),
            matched(&half_up, &payload),
            matched(&smaller, &payload),
            matched(&cropped, &payload),
            matched(image, &payload),
            unmarked_ones,
        ];
        print!("{name:<18}");
        for value in row {
            print!("{value:>9}");
        }
        println!();
    }
    println!(
        "none: straight after embedding; png: PNG round trip; jpegNN: image-crate JPEG (4:4:4) at \
         quality NN; half+up: halved and scaled back (triangle); 0.75x: Lanczos3 to 75 % (read at \
         the new size); crop2px: 2 columns cut from the left; unmarked: the image before \
         embedding; ones-rd: 1-bits read from the unmarked image"
    );
}
