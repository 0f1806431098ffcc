//! OpenCV's 8-bit `COLOR_BGR2YUV` / `COLOR_YUV2BGR` conversions, in the same fixed point.
//!
//! OpenCV converts 8-bit images with integer coefficients scaled by 2^14 and rounds with
//! `(x + 2^13) >> 14` (arithmetic shift, so negative sums round towards minus infinity), then
//! saturates to 0..=255. The coefficients below are the ones OpenCV uses for the YUV (not YCrCb)
//! variant; `tests/parity/watermark/generate.py` checks these formulas against `cv2.cvtColor`
//! on all 2^24 inputs of both directions.
//!
//! Pixels here are RGB (the order of [`image::RgbImage`]); OpenCV's BGR order only changes which
//! byte is which.

const SHIFT: u32 = 14;
const ROUND: i32 = 1 << (SHIFT - 1);
/// 128 (the chroma offset) in fixed point.
const CHROMA_DELTA: i32 = 128 << SHIFT;

// RGB -> YUV: 0.299, 0.587, 0.114; U = 0.492 (B - Y), V = 0.877 (R - Y).
const R2Y: i32 = 4899;
const G2Y: i32 = 9617;
const B2Y: i32 = 1868;
const B2U: i32 = 8061;
const R2V: i32 = 14369;

// YUV -> RGB: R = Y + 1.140 V', G = Y - 0.395 U' - 0.581 V', B = Y + 2.032 U'.
const V2R: i32 = 18678;
const V2G: i32 = -9519;
const U2G: i32 = -6472;
const U2B: i32 = 33292;

fn descale(x: i32) -> i32 {
    (x + ROUND) >> SHIFT
}

fn saturate(x: i32) -> u8 {
    x.clamp(0, 255) as u8
}

/// `cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV)` of one pixel given as `[r, g, b]`; returns `[y, u, v]`.
pub(crate) fn rgb_to_yuv([r, g, b]: [u8; 3]) -> [u8; 3] {
    let (r, g, b) = (i32::from(r), i32::from(g), i32::from(b));
    let y = descale(b * B2Y + g * G2Y + r * R2Y);
    let u = descale((b - y) * B2U + CHROMA_DELTA);
    let v = descale((r - y) * R2V + CHROMA_DELTA);
    [saturate(y), saturate(u), saturate(v)]
}

/// `cv2.cvtColor(yuv, cv2.COLOR_YUV2BGR)` of one pixel; returns `[r, g, b]`.
pub(crate) fn yuv_to_rgb([y, u, v]: [u8; 3]) -> [u8; 3] {
    let y = i32::from(y);
    let u = i32::from(u) - 128;
    let v = i32::from(v) - 128;
    let b = y + descale(u * U2B);
    let g = y + descale(u * U2G + v * V2G);
    let r = y + descale(v * V2R);
    [saturate(r), saturate(g), saturate(b)]
}

/// The change of `[r, g, b]` that moves U by `du` and leaves Y and V (nearly) unchanged: the
/// derivative of [`yuv_to_rgb`] along U, with OpenCV's coefficients, rounded to whole levels.
///
/// R does not depend on U; G changes by `-0.395 du` and B by `2.032 du`. Because the change is
/// a function of `du` alone, its largest value over `|du| <= 13.5` (the most the watermark
/// moves one pixel's U, see `dwt_dct`) is the bound [`crate::MAX_CHANNEL_CHANGE`].
pub(crate) fn rgb_delta_for_u(du: f64) -> [i32; 3] {
    let scale = f64::from(1 << SHIFT);
    // The values are at most 2.1 * |du| in magnitude, far inside i32.
    [
        0,
        (du * f64::from(U2G) / scale).round() as i32,
        (du * f64::from(U2B) / scale).round() as i32,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values() {
        // Values read from cv2.cvtColor (OpenCV 5.0.0) by hand.
        assert_eq!(rgb_to_yuv([0, 0, 0]), [0, 128, 128]);
        assert_eq!(rgb_to_yuv([255, 255, 255]), [255, 128, 128]);
        assert_eq!(rgb_to_yuv([0, 0, 255]), [29, 239, 103]);
        assert_eq!(rgb_to_yuv([255, 255, 0]), [226, 17, 153]);
        assert_eq!(yuv_to_rgb([0, 128, 128]), [0, 0, 0]);
        assert_eq!(yuv_to_rgb([29, 239, 103]), [0, 0, 255]);
    }

    #[test]
    fn round_trip_is_lossy_most_for_saturated_red() {
        // V saturates at 255 for strong reds, so the reference's BGR -> YUV -> BGR round trip
        // (which every watermarked image goes through) turns pure red into (221, 17, 1).
        assert_eq!(yuv_to_rgb(rgb_to_yuv([255, 0, 0])), [221, 17, 1]);
        assert_eq!(yuv_to_rgb(rgb_to_yuv([128, 128, 128])), [128, 128, 128]);
        let mut changed = 0;
        for r in (0..=255).step_by(5) {
            for g in (0..=255).step_by(5) {
                for b in (0..=255).step_by(5) {
                    changed += usize::from(yuv_to_rgb(rgb_to_yuv([r, g, b])) != [r, g, b]);
                }
            }
        }
        assert!(changed > 0);
    }

    #[test]
    fn the_u_delta_moves_u_and_hardly_y_or_v() {
        // Away from the gamut's edges, rgb_to_yuv of the shifted pixel reads U moved by the
        // rounded delta (within one level of rounding) and Y, V within one level.
        for du in [-13.5, -7.25, -1.0, 0.5, 6.0, 13.5] {
            let [dr, dg, db] = rgb_delta_for_u(du);
            let shift = |c: u8, d: i32| (i32::from(c) + d) as u8;
            for rgb in [[100, 120, 110], [60, 90, 200], [200, 50, 40]] {
                let [y0, u0, v0] = rgb_to_yuv(rgb);
                let [y1, u1, v1] =
                    rgb_to_yuv([shift(rgb[0], dr), shift(rgb[1], dg), shift(rgb[2], db)]);
                let moved = f64::from(u1) - f64::from(u0);
                assert!((moved - du).abs() <= 1.5, "{rgb:?} {du}: U moved {moved}");
                assert!(
                    (i32::from(y1) - i32::from(y0)).abs() <= 1,
                    "{rgb:?} {du}: Y"
                );
                assert!(
                    (i32::from(v1) - i32::from(v0)).abs() <= 1,
                    "{rgb:?} {du}: V"
                );
            }
        }
    }
}
