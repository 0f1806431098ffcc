//! Putting generated pixels back into the input: mask growth, inward feathering and the
//! `preserve_unmasked` composite, plus the crop-to-mask region (diffusers' `padding_mask_crop`).
//!
//! Feathering only ever fades *inside* the (grown) mask, so with `preserve_unmasked` every pixel
//! outside it is the input pixel, exactly: users ask for no colour shift outside the mask.

use image::{GrayImage, Luma, RgbImage};

/// The repaint mask binarised at 0.5 (255 = repaint), as the pipeline conditions on it.
pub fn binarize(mask: &GrayImage) -> GrayImage {
    GrayImage::from_fn(mask.width(), mask.height(), |x, y| {
        Luma([if mask.get_pixel(x, y).0[0] >= 128 {
            255
        } else {
            0
        }])
    })
}

/// Chessboard distance from each pixel of `region` to the nearest pixel outside it (0 outside;
/// a region without outside pixels keeps a large distance everywhere).
fn inside_distance(region: &GrayImage) -> Vec<u32> {
    let (w, h) = (region.width() as usize, region.height() as usize);
    let big = (w + h) as u32;
    let mut d: Vec<u32> = region
        .as_raw()
        .iter()
        .map(|&v| if v > 0 { big } else { 0 })
        .collect();
    // Two passes of the chessboard chamfer. Beyond the image border there is nothing to fade
    // into or grow from, so the border is neither inside nor outside.
    for y in 0..h {
        for x in 0..w {
            let i = y * w + x;
            if d[i] == 0 {
                continue;
            }
            let mut best = d[i];
            if x > 0 {
                best = best.min(d[i - 1] + 1);
            }
            if y > 0 {
                best = best.min(d[i - w] + 1);
                if x > 0 {
                    best = best.min(d[i - w - 1] + 1);
                }
                if x + 1 < w {
                    best = best.min(d[i - w + 1] + 1);
                }
            }
            d[i] = d[i].min(best);
        }
    }
    for y in (0..h).rev() {
        for x in (0..w).rev() {
            let i = y * w + x;
            if d[i] == 0 {
                continue;
            }
            let mut best = d[i];
            if x + 1 < w {
                best = best.min(d[i + 1] + 1);
            }
            if y + 1 < h {
                best = best.min(d[i + w] + 1);
                if x + 1 < w {
                    best = best.min(d[i + w + 1] + 1);
                }
                if x > 0 {
                    best = best.min(d[i + w - 1] + 1);
                }
            }
            d[i] = best;
        }
    }
    d
}

/// The blend weight of the generated image (255 = all generated, 0 = all input): the binarised
/// mask grown by `grow_px` (chessboard distance), then faded linearly over `feather_px` pixels
/// inward from its edge.
pub fn blend_alpha(mask: &GrayImage, grow_px: u32, feather_px: u32) -> GrayImage {
    let binary = binarize(mask);
    let grown = if grow_px == 0 {
        binary
    } else {
        let mut outside = binary.clone();
        for v in outside.iter_mut() {
            *v = 255 - *v;
        }
        let distance_to_mask = inside_distance(&outside);
        let raw: Vec<u8> = distance_to_mask
            .iter()
            .map(|&d| if d <= grow_px { 255 } else { 0 })
            .collect();
        GrayImage::from_raw(mask.width(), mask.height(), raw).unwrap_or(binary)
    };
    if feather_px == 0 {
        return grown;
    }
    let inside = inside_distance(&grown);
    let raw: Vec<u8> = inside
        .iter()
        .map(|&d| {
            if d == 0 {
                0
            } else {
                let t = (f64::from(d) / f64::from(feather_px + 1)).min(1.0);
                (t * 255.0).round() as u8
            }
        })
        .collect();
    GrayImage::from_raw(mask.width(), mask.height(), raw).unwrap_or(grown)
}

/// `generated * a + input * (1 - a)` per pixel with `a = alpha / 255`, rounded: alpha 0 gives
/// the input pixel, alpha 255 the generated one, bit for bit.
pub fn composite(input: &RgbImage, generated: &RgbImage, alpha: &GrayImage) -> RgbImage {
    RgbImage::from_fn(input.width(), input.height(), |x, y| {
        let a = u32::from(alpha.get_pixel(x, y).0[0]);
        let (i, g) = (input.get_pixel(x, y).0, generated.get_pixel(x, y).0);
        let mix =
            |c: usize| ((u32::from(g[c]) * a + u32::from(i[c]) * (255 - a) + 127) / 255) as u8;
        image::Rgb([mix(0), mix(1), mix(2)])
    })
}

/// A rectangle of the input image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
}

/// The part of the image to inpaint at model resolution: the bounding box of the mask's
/// non-zero pixels, padded by `padding` on every side, widened to the aspect ratio
/// `aspect` (`(w, h)`; None keeps the padded box's own shape) and kept inside the image
/// (diffusers' `get_crop_region` rules). None when the mask is empty.
pub fn crop_region(mask: &GrayImage, padding: u32, aspect: Option<(u32, u32)>) -> Option<Region> {
    let (w, h) = mask.dimensions();
    let mut bounds: Option<(u32, u32, u32, u32)> = None;
    for (x, y, p) in mask.enumerate_pixels() {
        if p.0[0] > 0 {
            bounds = Some(match bounds {
                None => (x, y, x, y),
                Some((x0, y0, x1, y1)) => (x0.min(x), y0.min(y), x1.max(x), y1.max(y)),
            });
        }
    }
    let (x0, y0, x1, y1) = bounds?;
    let mut x0 = i64::from(x0) - i64::from(padding);
    let mut y0 = i64::from(y0) - i64::from(padding);
    let mut x1 = i64::from(x1) + 1 + i64::from(padding);
    let mut y1 = i64::from(y1) + 1 + i64::from(padding);
    let (w, h) = (i64::from(w), i64::from(h));
    // Widen the shorter side (around the centre) until the region has the target aspect.
    let (rw, rh) = (x1 - x0, y1 - y0);
    let (aw, ah) = aspect.map_or((rw, rh), |(aw, ah)| {
        (i64::from(aw.max(1)), i64::from(ah.max(1)))
    });
    if rw * ah < rh * aw {
        let want = (rh * aw + ah - 1) / ah;
        let grow = want - rw;
        x0 -= grow / 2;
        x1 += grow - grow / 2;
    } else if rw * ah > rh * aw {
        let want = (rw * ah + aw - 1) / aw;
        let grow = want - rh;
        y0 -= grow / 2;
        y1 += grow - grow / 2;
    }
    // Shift inside the image, then clamp what still does not fit.
    let shift = |lo: &mut i64, hi: &mut i64, max: i64| {
        if *lo < 0 {
            *hi -= *lo;
            *lo = 0;
        }
        if *hi > max {
            *lo -= *hi - max;
            *hi = max;
        }
        *lo = (*lo).max(0);
    };
    shift(&mut x0, &mut x1, w);
    shift(&mut y0, &mut y1, h);
    Some(Region {
        x: x0 as u32,
        y: y0 as u32,
        width: (x1 - x0) as u32,
        height: (y1 - y0) as u32,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn square_mask(size: u32, from: u32, to: u32) -> GrayImage {
        GrayImage::from_fn(size, size, |x, y| {
            Luma([if (from..to).contains(&x) && (from..to).contains(&y) {
                255
            } else {
                0
            }])
        })
    }

    #[test]
    fn composite_keeps_unmasked_pixels_exactly() {
        let input = RgbImage::from_fn(16, 16, |x, y| image::Rgb([x as u8 * 9, y as u8 * 7, 3]));
        let generated = RgbImage::from_pixel(16, 16, image::Rgb([200, 10, 90]));
        let mask = square_mask(16, 4, 12);
        for (grow, feather) in [(0, 0), (2, 0), (0, 3), (2, 3)] {
            let alpha = blend_alpha(&mask, grow, feather);
            let out = composite(&input, &generated, &alpha);
            for (x, y, p) in out.enumerate_pixels() {
                if alpha.get_pixel(x, y).0[0] == 0 {
                    assert_eq!(
                        p,
                        input.get_pixel(x, y),
                        "({x},{y}) grow {grow} feather {feather}"
                    );
                }
            }
            // The mask's centre is fully generated.
            assert_eq!(out.get_pixel(8, 8), generated.get_pixel(8, 8));
        }
    }

    #[test]
    fn growth_extends_and_feather_fades_inward_only() {
        let mask = square_mask(16, 6, 10);
        let grown = blend_alpha(&mask, 2, 0);
        assert_eq!(grown.get_pixel(4, 4).0[0], 255);
        assert_eq!(grown.get_pixel(3, 8).0[0], 0);
        let feathered = blend_alpha(&square_mask(16, 4, 12), 0, 2);
        assert_eq!(feathered.get_pixel(3, 8).0[0], 0, "outside stays untouched");
        let edge = feathered.get_pixel(4, 8).0[0];
        assert!(edge > 0 && edge < 255, "edge is partial: {edge}");
        assert_eq!(feathered.get_pixel(8, 8).0[0], 255);
    }

    #[test]
    fn binarises_at_half() {
        let mask = GrayImage::from_raw(3, 1, vec![127, 128, 255]).expect("raw");
        assert_eq!(binarize(&mask).into_raw(), vec![0, 255, 255]);
    }

    #[test]
    fn crop_region_pads_fits_aspect_and_stays_inside() {
        let mask = square_mask(100, 40, 50);
        let r = crop_region(&mask, 5, Some((1, 1))).expect("region");
        assert_eq!(
            r,
            Region {
                x: 35,
                y: 35,
                width: 20,
                height: 20
            }
        );
        let wide = crop_region(&mask, 0, Some((2, 1))).expect("region");
        assert_eq!(wide.width, 2 * wide.height);
        assert!(wide.x <= 40 && wide.x + wide.width >= 50);
        let corner = crop_region(&square_mask(100, 0, 10), 20, None).expect("region");
        assert_eq!((corner.x, corner.y), (0, 0));
        assert!(crop_region(&GrayImage::new(8, 8), 4, None).is_none());
    }
}
