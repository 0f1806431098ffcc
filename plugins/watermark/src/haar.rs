//! One-level 2-D Haar transform on 2×2 pixel quads, in PyWavelets' operation order.
//!
//! `pywt.dwt2(x, 'haar')` filters along rows first (axis 0), then along columns (axis 1); each
//! output coefficient is `c0 * x0 + c1 * x1` with both products rounded to f64 and then added.
//! `pywt.idwt2` undoes axis 1 first, then axis 0. The watermark's bit decisions compare
//! coefficients against multiples of 18, and its output is *truncated* to integers, so a
//! different (mathematically equal) order of operations changes results; this module repeats
//! PyWavelets' order exactly (checked against the package by the parity fixtures).
//!
//! For the Haar wavelet every 2×2 quad transforms on its own, so the functions here work on one
//! quad at a time.

/// `pywt.Wavelet('haar').dec_lo[0]`: 0.7071067811865476, which is 1/√2 rounded to f64.
pub(crate) const S: f64 = std::f64::consts::FRAC_1_SQRT_2;

/// The four coefficients of one quad, named like `pywt.dwt2`'s result
/// `cA, (cH, cV, cD)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Quad {
    /// Approximation (low-pass along both axes).
    pub(crate) ca: f64,
    /// Horizontal detail: high-pass along axis 0, low-pass along axis 1.
    pub(crate) ch: f64,
    /// Vertical detail: low-pass along axis 0, high-pass along axis 1.
    pub(crate) cv: f64,
    /// Diagonal detail: high-pass along both axes.
    pub(crate) cd: f64,
}

/// Low-pass of a pair: `dec_lo = [s, s]`.
fn lo(first: f64, second: f64) -> f64 {
    first * S + second * S
}

/// High-pass of a pair: `dec_hi = [-s, s]`, applied as `s * first - s * second`.
fn hi(first: f64, second: f64) -> f64 {
    first * S - second * S
}

/// `pywt.dwt2` of the quad `[[x00, x01], [x10, x11]]` (row, column).
pub(crate) fn forward(x00: f64, x01: f64, x10: f64, x11: f64) -> Quad {
    // Axis 0: pair each column's two rows.
    let lo_left = lo(x00, x10);
    let lo_right = lo(x01, x11);
    let hi_left = hi(x00, x10);
    let hi_right = hi(x01, x11);
    // Axis 1: pair the two columns.
    Quad {
        ca: lo(lo_left, lo_right),
        cv: hi(lo_left, lo_right),
        ch: lo(hi_left, hi_right),
        cd: hi(hi_left, hi_right),
    }
}

/// `pywt.idwt2((ca, (ch, cv, cd)), 'haar')` of one quad: `[[x00, x01], [x10, x11]]`.
pub(crate) fn inverse(q: Quad) -> [[f64; 2]; 2] {
    // rec_lo = [s, s], rec_hi = [s, -s]: even output = L*s + H*s, odd output = L*s - H*s.
    // Axis 1 first: (cA, cV) -> low rows, (cH, cD) -> high rows.
    let (lo_left, lo_right) = (lo(q.ca, q.cv), hi(q.ca, q.cv));
    let (hi_left, hi_right) = (lo(q.ch, q.cd), hi(q.ch, q.cd));
    // Then axis 0.
    [
        [lo(lo_left, hi_left), lo(lo_right, hi_right)],
        [hi(lo_left, hi_left), hi(lo_right, hi_right)],
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coefficient_is_pywt_haar() {
        assert_eq!(S.to_string(), "0.7071067811865476");
    }

    #[test]
    fn inverse_undoes_forward_up_to_rounding() {
        let q = forward(10.0, 20.0, 30.0, 45.0);
        assert!((q.ca - 52.5).abs() < 1e-12);
        // Detail along axis 0 (rows differ by 20 and 25) and along axis 1.
        assert!((q.ch - (-22.5)).abs() < 1e-12);
        assert!((q.cv - (-12.5)).abs() < 1e-12);
        let back = inverse(q);
        for (got, want) in back.iter().flatten().zip([10.0, 20.0, 30.0, 45.0]) {
            assert!((got - want).abs() < 1e-12, "{got} vs {want}");
        }
    }

    #[test]
    fn swapping_the_details_transposes_the_quad() {
        let q = forward(10.0, 20.0, 30.0, 45.0);
        let back = inverse(Quad {
            ch: q.cv,
            cv: q.ch,
            ..q
        });
        for (got, want) in back.iter().flatten().zip([10.0, 30.0, 20.0, 45.0]) {
            assert!((got - want).abs() < 1e-12, "{got} vs {want}");
        }
    }
}
