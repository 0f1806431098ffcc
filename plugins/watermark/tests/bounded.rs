//! The default encoder's promise, on a generated set of photo-like images (smooth gradients,
//! saturated colours with hard edges, chroma checkerboards, noise, value-noise "scenes", text on
//! white, near-black, odd sizes), the parity fixtures' inputs, and several payloads:
//! - every pixel's change is at most [`MAX_CHANNEL_CHANGE`] per channel (the reference-exact
//!   encoder breaks that bound on the same images, so the check can fail);
//! - pixels change only as whole 2×2 quads, each by one saturated shift of G and B (the change
//!   that moves U alone), inside the crop that holds the blocks;
//! - the Rust detector (bit-identical to the package's decoder) reads the mark at least as well
//!   as from the reference-exact embedding, on every image.
//!
//! With `INPAINT_WATERMARK_BOUNDED_OUT=DIR` it also writes `DIR/input_<name>.png`,
//! `DIR/rust_<name>.png` (the default encoder's output) and `DIR/payload.txt` for
//! `tests/parity/watermark/generate.py --compare-bounded DIR`, which embeds the same payload with
//! the Python package and decodes both outputs with the package's decoder.

use std::path::PathBuf;

use image::{Rgb, RgbImage};
use inpaint_watermark::{
    DEFAULT_DETECT_THRESHOLD, MAX_CHANNEL_CHANGE, MAX_PIXEL_CHANGE, Payload, detect, encode,
    encode_reference_exact,
};

/// xorshift32: deterministic, dependency-free noise.
struct Rng(u32);

impl Rng {
    fn next(&mut self) -> u32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 17;
        self.0 ^= self.0 << 5;
        self.0
    }

    fn byte(&mut self) -> u8 {
        (self.next() >> 24) as u8
    }

    fn unit(&mut self) -> f64 {
        f64::from(self.next()) / f64::from(u32::MAX)
    }
}

/// Smooth multi-octave value noise in 0..1 (bilinear between random lattice values).
fn value_noise(rng: &mut Rng, width: u32, height: u32, octaves: u32) -> Vec<f64> {
    let mut out = vec![0.0; (width * height) as usize];
    let mut amplitude = 0.5;
    for octave in 0..octaves {
        let cell = (96 >> octave).max(4);
        let (gw, gh) = (width / cell + 2, height / cell + 2);
        let lattice: Vec<f64> = (0..gw * gh).map(|_| rng.unit()).collect();
        for y in 0..height {
            for x in 0..width {
                let (fx, fy) = (
                    f64::from(x) / f64::from(cell),
                    f64::from(y) / f64::from(cell),
                );
                let (ix, iy) = (fx as u32, fy as u32);
                let (tx, ty) = (fx - f64::from(ix), fy - f64::from(iy));
                let at = |i: u32, j: u32| lattice[(j * gw + i) as usize];
                let top = at(ix, iy) * (1.0 - tx) + at(ix + 1, iy) * tx;
                let bottom = at(ix, iy + 1) * (1.0 - tx) + at(ix + 1, iy + 1) * tx;
                out[(y * width + x) as usize] += amplitude * (top * (1.0 - ty) + bottom * ty);
            }
        }
        amplitude /= 2.0;
    }
    out
}

fn clamp(v: f64) -> u8 {
    v.round().clamp(0.0, 255.0) as u8
}

const SATURATED: [[u8; 3]; 8] = [
    [255, 0, 0],
    [0, 255, 0],
    [0, 0, 255],
    [0, 255, 255],
    [255, 0, 255],
    [255, 255, 0],
    [255, 255, 255],
    [0, 0, 0],
];

/// The generated set: `(name, image)`.
fn images() -> Vec<(String, RgbImage)> {
    let mut rng = Rng(0x9e37_79b9);
    let mut set = Vec::new();

    set.push((
        "gradient".to_owned(),
        RgbImage::from_fn(512, 512, |x, y| {
            Rgb([(x / 2) as u8, (y / 2) as u8, (255 - (x + y) / 4) as u8])
        }),
    ));

    // Bands of fully saturated colours crossed by diagonal stripes: hard edges in every
    // direction between colours at the gamut's corners.
    set.push((
        "saturated-edges".to_owned(),
        RgbImage::from_fn(512, 512, |x, y| {
            let band = SATURATED[(x / 64) as usize % 8];
            if (x + y) / 23 % 3 == 0 {
                SATURATED[((y / 64) as usize + 3) % 8].into()
            } else {
                band.into()
            }
        }),
    ));

    // Blue/yellow checkerboards at 1, 2 and 3 pixels: the largest U differences inside a quad.
    for cell in [1, 2, 3] {
        set.push((
            format!("checker-{cell}px"),
            RgbImage::from_fn(384, 384, |x, y| {
                if (x / cell + y / cell) % 2 == 0 {
                    Rgb([0, 0, 255])
                } else {
                    Rgb([255, 255, 0])
                }
            }),
        ));
    }

    let noise: Vec<u8> = (0..512 * 512 * 3).map(|_| rng.byte()).collect();
    set.push((
        "noise".to_owned(),
        RgbImage::from_raw(512, 512, noise).expect("buffer size"),
    ));

    // Natural-like scenes: value noise per channel, a sky band, grain; one at an odd size.
    for (name, width, height) in [("scene", 512, 512), ("scene-odd", 517, 389)] {
        let channels: Vec<Vec<f64>> = (0..3)
            .map(|_| value_noise(&mut rng, width, height, 5))
            .collect();
        let image = RgbImage::from_fn(width, height, |x, y| {
            let i = (y * width + x) as usize;
            let sky = y < height / 4;
            let grain = (rng.unit() - 0.5) * 12.0;
            Rgb(std::array::from_fn(|c| {
                let base = if sky {
                    [120.0, 170.0, 235.0][c] + f64::from(y) * 0.2
                } else {
                    channels[c][i] * 300.0 - 20.0
                };
                clamp(base + grain)
            }))
        });
        set.push((name.to_owned(), image));
    }

    // Saturated photo-like: strongly coloured value-noise blobs pushed into clipping.
    let (w, h) = (512, 512);
    let blobs: Vec<Vec<f64>> = (0..3).map(|_| value_noise(&mut rng, w, h, 3)).collect();
    set.push((
        "vivid".to_owned(),
        RgbImage::from_fn(w, h, |x, y| {
            let i = (y * w + x) as usize;
            Rgb(std::array::from_fn(|c| {
                clamp((blobs[c][i] - 0.5) * 900.0 + 128.0)
            }))
        }),
    ));

    // Text-like: black strokes on white, and a near-black image with faint noise.
    set.push((
        "text-on-white".to_owned(),
        RgbImage::from_fn(512, 512, |x, y| {
            let stroke = (y % 24 < 14) && ((x * 7 + y * 3) % 19 < 3 || y % 24 == 6);
            if stroke {
                Rgb([0, 0, 0])
            } else {
                Rgb([255, 255, 255])
            }
        }),
    ));
    set.push((
        "near-black".to_owned(),
        RgbImage::from_fn(512, 512, |_, _| {
            let v = rng.byte() % 6;
            Rgb([v, v / 2, v])
        }),
    ));

    // The parity fixtures' inputs (written by generate.py: blobs, a scene, saturated bands
    // with noise, 1024x64).
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/parity/watermark/fixtures");
    for name in ["gradient", "scene", "saturated", "wide"] {
        let path = fixtures.join(format!("input_{name}.png"));
        let image = image::open(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .to_rgb8();
        set.push((format!("fixture-{name}"), image));
    }
    set
}

fn payloads() -> Vec<(&'static str, Vec<bool>)> {
    let mut rng = Rng(77);
    vec![
        ("default", Payload::default().bits().to_vec()),
        ("random48", (0..48).map(|_| rng.next() & 1 == 1).collect()),
        ("ones", vec![true; 32]),
    ]
}

/// The largest change per channel between two images of the same size.
fn max_change(a: &RgbImage, b: &RgbImage) -> [u8; 3] {
    let mut max = [0u8; 3];
    for (p, q) in a.pixels().zip(b.pixels()) {
        for c in 0..3 {
            max[c] = max[c].max(p[c].abs_diff(q[c]));
        }
    }
    max
}

#[test]
fn every_pixel_changes_at_most_the_bound() {
    let mut reference_over_bound = Vec::new();
    let mut largest = [0u8; 3];
    for (name, image) in images() {
        for (payload_name, bits) in payloads() {
            let marked = encode(&image, &bits).expect("encode");
            let change = max_change(&image, &marked);
            for c in 0..3 {
                assert!(
                    change[c] <= MAX_CHANNEL_CHANGE[c],
                    "{name}/{payload_name}: channel {c} changed by {}, bound {}",
                    change[c],
                    MAX_CHANNEL_CHANGE[c]
                );
                largest[c] = largest[c].max(change[c]);
            }
            let reference = encode_reference_exact(&image, &bits).expect("reference");
            let reference_change = max_change(&image, &reference);
            if reference_change.iter().any(|&c| c > MAX_PIXEL_CHANGE) {
                reference_over_bound.push(format!("{name}/{payload_name}: {reference_change:?}"));
            }
        }
    }
    // The bound is reached (it is not loose), and the reference's own embedding breaks it on
    // the saturated and edge images: the check above would catch a return of its corruption.
    assert_eq!(largest, MAX_CHANNEL_CHANGE, "largest change seen");
    for name in ["saturated-edges", "checker-3px", "vivid"] {
        assert!(
            reference_over_bound.iter().any(|r| r.starts_with(name)),
            "{name}: the reference-exact encoder stayed within the bound: {reference_over_bound:?}"
        );
    }
}

#[test]
fn changes_come_as_one_saturated_shift_per_quad() {
    let bits = Payload::default().bits().to_vec();
    let mut rows = Vec::new();
    for (name, image) in images() {
        let marked = encode(&image, &bits).expect("encode");
        let (w, h) = image.dimensions();
        let mut changed_quads = 0;
        for qy in 0..h / 2 {
            for qx in 0..w / 2 {
                let quad = [(0, 0), (1, 0), (0, 1), (1, 1)].map(|(dx, dy)| {
                    let (x, y) = (2 * qx + dx, 2 * qy + dy);
                    (image.get_pixel(x, y).0, marked.get_pixel(x, y).0)
                });
                if quad.iter().all(|(a, b)| a == b) {
                    continue;
                }
                changed_quads += 1;
                // One shift [0, g, b] (what moves U alone), saturated per pixel, explains all
                // four pixels: the quad's chroma moved as a whole, nothing else did.
                let explains = |g: i32, b: i32| {
                    quad.iter().all(|(before, after)| {
                        [0, g, b].iter().enumerate().all(|(c, d)| {
                            (i32::from(before[c]) + d).clamp(0, 255) == i32::from(after[c])
                        })
                    })
                };
                let found = (-5..=5).any(|g| (-30..=30).any(|b| explains(g, b)));
                assert!(found, "{name} quad ({qx}, {qy}): {quad:?}");
                // Only inside the crop to multiples of 8 that holds the blocks.
                assert!(qx < w / 8 * 4 && qy < h / 8 * 4, "{name} quad ({qx}, {qy})");
            }
        }
        let quads = (w / 2) * (h / 2);
        rows.push(format!(
            "{name}: {changed_quads} of {quads} quads changed ({:.1} %)",
            100.0 * f64::from(changed_quads) / f64::from(quads)
        ));
    }
    eprintln!("{}", rows.join("\n"));
}

#[test]
fn the_rust_detector_reads_the_bounded_mark_at_least_as_well() {
    let out_dir = std::env::var_os("INPAINT_WATERMARK_BOUNDED_OUT").map(PathBuf::from);
    let bits = Payload::default().bits().to_vec();
    if let Some(dir) = &out_dir {
        std::fs::create_dir_all(dir).expect("out dir");
        let text: String = bits.iter().map(|&b| if b { '1' } else { '0' }).collect();
        std::fs::write(dir.join("payload.txt"), text).expect("payload");
    }
    let mut rows = Vec::new();
    let mut worse = Vec::new();
    for (name, image) in images() {
        let ours = encode(&image, &bits).expect("encode");
        let reference = encode_reference_exact(&image, &bits).expect("reference");
        let read = |img: &RgbImage| {
            detect(img, &bits, DEFAULT_DETECT_THRESHOLD)
                .expect("detect")
                .bits_matched
        };
        let (o, r) = (read(&ours), read(&reference));
        rows.push(format!("{name}: bounded {o}, reference-exact {r}"));
        if o < r {
            worse.push(name.clone());
        }
        if let Some(dir) = &out_dir {
            image
                .save(dir.join(format!("input_{name}.png")))
                .expect("write input");
            ours.save(dir.join(format!("rust_{name}.png")))
                .expect("write output");
        }
    }
    eprintln!(
        "bits matched of {} (Rust detector):\n{}",
        bits.len(),
        rows.join("\n")
    );
    assert!(
        worse.is_empty(),
        "the bounded mark reads worse on {worse:?}:\n{}",
        rows.join("\n")
    );
}
