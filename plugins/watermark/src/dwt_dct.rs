//! The `dwtDct` method of invisible-watermark (`imwatermark/maxDct.py`, class `EmbedMaxDct`):
//! [`encode`], [`votes`], [`decode`], [`detect`].
//!
//! What the reference does, step by step (and so what this module does):
//! 1. Convert the image to YUV with OpenCV's fixed-point formulas (module `color`); only the
//!    U channel is watermarked (the default scales are `[0, 36, 36]`, the loop covers channels
//!    0 and 1, and scale 0 skips Y).
//! 2. Crop U to multiples of 4 rows and columns and apply a one-level Haar DWT
//!    (module `haar`).
//! 3. Cut the approximation band `cA` into 4×4 blocks in raster order; block `n` carries bit
//!    `n % len`. Despite the name, **no DCT is applied**: in each block the coefficient of
//!    largest magnitude other than `[0][0]` (the first one on ties) gets magnitude
//!    `(floor(|v| / 36) + 0.25 + 0.5 * bit) * 36`, keeping its sign.
//! 4. Inverse DWT with the horizontal and vertical detail bands **swapped** (a quirk of the
//!    package: for Haar this transposes every 2×2 quad of U), written back into the 8-bit U
//!    channel by truncation (a C cast: towards zero, then modulo 256), then YUV → RGB.
//!
//! Reading repeats steps 1–3 and votes per block: `1` if `|v| mod 36 > 18`. A bit is 1 when the
//! mean of its votes, times 255, exceeds 127; a bit without votes reads 0 (NumPy's mean of an
//! empty list is NaN, and NaN compares false).
//!
//! **Two ways to write the mark back.** Step 4 of the reference corrupts pixels: a U value past
//! 0 or 255 wraps around (a near-white pixel's blue channel can become 0), the swapped bands
//! exchange the chroma of diagonal neighbours along every edge, and every pixel goes through the
//! lossy 8-bit YUV round trip (pure red becomes (221, 17, 1)). So:
//! - [`encode`] (the default, and the only mode the worker uses) writes the same kind of mark
//!   as a *saturating change* of the original RGB pixels. Per block it moves the largest
//!   approximation coefficient's magnitude to the **nearest** centre of a bin that reads the
//!   bit (the reference rounds down; the decoder only reads `|v| mod 36`), or to the centre on
//!   the other side when saturation keeps the pixels from reaching the nearest (near-black
//!   pixels cannot lose blue); when the move leaves another coefficient the largest (the
//!   reference's 0-bits flip that way), it quantises that one too, until the largest is
//!   quantised. Each coefficient owns one 2×2 quad, whose four U values move by half the
//!   coefficient's move; each of those pixels gets the RGB change that moves U by that much
//!   ([`color::rgb_delta_for_u`]: R unchanged, G by `-0.395`, B by `2.032` times it, rounded),
//!   added with saturation at 0 and 255. Nothing else changes: a pixel moves at most once, by
//!   at most [`MAX_CHANNEL_CHANGE`] levels per channel (R 0, G 5, B 27), and pixels of
//!   unquantised quads keep their bytes. The package's decoder reads the mark (it only looks
//!   at `|v| mod 36` of each block's largest coefficient), better than the package's own
//!   output (numbers in the crate README).
//! - [`encode_reference_exact`] repeats the package byte for byte, wrap-around included. It
//!   exists for the parity tests only; the stage and the worker never call it.

use image::RgbImage;

use crate::color::{self, rgb_to_yuv, yuv_to_rgb};
use crate::error::WatermarkError;
use crate::haar::{self, Quad};

/// Quantisation step of the U channel (`scales[1]` of `EmbedMaxDct`).
pub const SCALE: f64 = 36.0;
/// Side of the square blocks of the approximation band (`block` of `EmbedMaxDct`).
pub const BLOCK: usize = 4;
/// Fewest pixels (`width * height`) the reference accepts: `r*c < 256*256` raises.
pub const MIN_PIXELS: u64 = 256 * 256;

/// The most [`encode`] changes any pixel, per channel `[r, g, b]`, in 8-bit levels.
///
/// Derivation: a quantised coefficient moves by at most `Δ = 27` (`0.75 * 36`: to the nearest
/// centre of a bin that reads its bit, at most 18 away, or where saturation keeps the pixels
/// from getting there, to the centre on the other side if that is at most 27 away, the
/// reference's own largest move); each pixel changes at most once (one coefficient per 2×2
/// quad); the inverse Haar spreads `Δ` over the quad as `Δ · (1/√2)² = Δ / 2`, at most 13.5 in
/// U per pixel; OpenCV's YUV→RGB turns a U change `d` into `0` in R, `-0.395 d` in G
/// (`round(5.33) = 5`) and `2.032 d` in B (`round(27.43) = 27`). Saturation only shortens a
/// change. Unit tests recompute these numbers; `tests/bounded.rs` checks them on images.
pub const MAX_CHANNEL_CHANGE: [u8; 3] = [0, 5, 27];

/// The most [`encode`] changes any channel of any pixel: the largest of
/// [`MAX_CHANNEL_CHANGE`], 27 levels (in blue).
pub const MAX_PIXEL_CHANGE: u8 = 27;

/// The largest change of one approximation coefficient by [`encode`]: `0.75 * SCALE`, as the
/// reference's own quantisation. The nearest bin centre is at most `0.5 * SCALE` away; the
/// centre on the other side is used when saturation keeps the pixels from reaching the
/// nearest, and only if it is within this distance.
const MAX_COEFFICIENT_CHANGE: f64 = 0.75 * SCALE;

/// The votes of the blocks that carry one payload bit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BitVotes {
    /// Blocks that read 1.
    pub ones: u32,
    /// Blocks that carry this bit.
    pub total: u32,
}

impl BitVotes {
    /// The bit, decided like the reference: `mean * 255 > 127` in f64; no votes read 0.
    pub fn bit(self) -> bool {
        // Same operations as `np.array(votes).mean() * 255 > 127`; NaN (no votes) is false.
        (f64::from(self.ones) / f64::from(self.total)) * 255.0 > 127.0
    }
}

/// The result of [`detect`]: how many decoded bits equal the expected payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Detection {
    /// Decoded bits equal to the expected bit at the same position.
    pub bits_matched: usize,
    /// Bits compared (the expected payload's length).
    pub total: usize,
    /// Whether `bits_matched >= threshold * total`: the image is considered watermarked.
    pub verdict: bool,
}

impl Detection {
    /// `bits_matched / total`.
    pub fn matched_fraction(&self) -> f64 {
        if self.total == 0 {
            return 0.0;
        }
        self.bits_matched as f64 / self.total as f64
    }
}

/// Default fraction of bits that must match for [`detect`] to say "watermarked".
///
/// Measured (see the crate README): unmarked images match the default payload in 48–58 % of
/// its bits, marked images straight after embedding in 57–88 % (smooth images lose many
/// 0-bits even without any attack). No threshold separates all of them; 0.65 (146 of 224 bits,
/// 4.5 standard deviations above chance) keeps false positives rare and detects most marked
/// images.
pub const DEFAULT_DETECT_THRESHOLD: f64 = 0.65;

/// How many 4×4 blocks (payload bit slots) an image of this size holds.
///
/// U is cropped to multiples of 4, the approximation band is half that, and blocks are 4×4:
/// `(height / 8) * (width / 8)`. A payload longer than this loses its last bits.
pub fn capacity(width: u32, height: u32) -> usize {
    (height as usize / 8) * (width as usize / 8)
}

fn check_size(image: &RgbImage) -> Result<(), WatermarkError> {
    let (width, height) = image.dimensions();
    if u64::from(width) * u64::from(height) < MIN_PIXELS {
        return Err(WatermarkError::TooSmall { width, height });
    }
    Ok(())
}

/// Embeds `payload_bits` into `image` with the `dwtDct` quantisation, changing each pixel by at
/// most [`MAX_CHANNEL_CHANGE`] (saturating, never wrapping); see the module docs.
///
/// The mark is the reference's: the package's decoder (and [`decode`]) read the same
/// coefficients as from [`encode_reference_exact`]'s output. Only the pixels of the quantised
/// coefficients' 2×2 quads change (4 of every 64); every other pixel keeps its bytes.
///
/// Errors: [`WatermarkError::TooSmall`] under [`MIN_PIXELS`] pixels (as the reference),
/// [`WatermarkError::EmptyPayload`]. A payload longer than [`capacity`] is embedded partially,
/// as the reference does; the stage refuses that case.
pub fn encode(image: &RgbImage, payload_bits: &[bool]) -> Result<RgbImage, WatermarkError> {
    check_size(image)?;
    if payload_bits.is_empty() {
        return Err(WatermarkError::EmptyPayload);
    }
    let (width, height) = (image.width() as usize, image.height() as usize);
    let yuv: Vec<[u8; 3]> = image.pixels().map(|p| rgb_to_yuv(p.0)).collect();
    let mut bands = Bands::of_u(&yuv, width, height);
    let mut marked = image.clone();
    for (n, block) in bands.blocks().enumerate() {
        let bit = payload_bits[n % payload_bits.len()];
        // Quantise the block's largest coefficient, as the reference does. Lowering it can
        // leave another coefficient the largest, which the decoder then reads instead (the
        // reference's 0-bits flip that way): quantise that one too, until the largest is one
        // already quantised. Each coefficient is its own 2×2 quad of pixels, so a pixel still
        // changes at most once and the bound holds.
        let mut quantised = [false; BLOCK * BLOCK];
        loop {
            let position = max_position(&bands.ca, block);
            if quantised[position] {
                break;
            }
            quantised[position] = true;
            let index = block.index(position);
            let (row, col) = (index / bands.cols, index % bands.cols);
            let quad = Quad2x2::at(&marked, row, col);
            let (pixels, read) = quad.best_shift(bands.ca[index], bit);
            quad.write(&mut marked, pixels);
            // What the decoder will compute for this coefficient, so the next round's choice
            // of the largest sees the real values.
            bands.ca[index] = read;
        }
    }
    Ok(marked)
}

/// Embeds `payload_bits` into `image` exactly like
/// `WatermarkEncoder().set_by_bits(bits); encode(bgr, 'dwtDct')` on the same pixels in BGR order,
/// **including its pixel corruption** (wrap-around past 0 and 255, chroma of 2×2 quads
/// transposed, every pixel through the 8-bit YUV round trip).
///
/// For parity tests against the package only: outputs should use [`encode`]. Same errors as
/// [`encode`].
pub fn encode_reference_exact(
    image: &RgbImage,
    payload_bits: &[bool],
) -> Result<RgbImage, WatermarkError> {
    check_size(image)?;
    if payload_bits.is_empty() {
        return Err(WatermarkError::EmptyPayload);
    }
    let (width, height) = (image.width() as usize, image.height() as usize);
    let mut yuv: Vec<[u8; 3]> = image.pixels().map(|p| rgb_to_yuv(p.0)).collect();

    let mut bands = Bands::of_u(&yuv, width, height);
    for (n, block) in bands.blocks().enumerate() {
        embed_block(&mut bands.ca, block, payload_bits[n % payload_bits.len()]);
    }
    bands.write_u_swapped(&mut yuv, width);

    let pixels: Vec<u8> = yuv.iter().flat_map(|&p| yuv_to_rgb(p)).collect();
    // The buffer has exactly width * height * 3 bytes, so this cannot fail.
    RgbImage::from_raw(image.width(), image.height(), pixels).ok_or_else(|| {
        WatermarkError::InvalidPayload("internal error: image buffer size mismatch".into())
    })
}

/// The per-bit votes of `image` for a payload of `bit_count` bits (the reference's `scores`).
pub fn votes(image: &RgbImage, bit_count: usize) -> Result<Vec<BitVotes>, WatermarkError> {
    check_size(image)?;
    if bit_count == 0 {
        return Err(WatermarkError::EmptyPayload);
    }
    let (width, height) = (image.width() as usize, image.height() as usize);
    let yuv: Vec<[u8; 3]> = image.pixels().map(|p| rgb_to_yuv(p.0)).collect();
    let bands = Bands::of_u(&yuv, width, height);
    let mut votes = vec![BitVotes::default(); bit_count];
    for (n, block) in bands.blocks().enumerate() {
        let vote = &mut votes[n % bit_count];
        vote.total += 1;
        vote.ones += u32::from(read_block(&bands.ca, block));
    }
    Ok(votes)
}

/// Reads `bit_count` bits from `image`, exactly like `WatermarkDecoder('bits', bit_count)
/// .decode(bgr, 'dwtDct')`.
pub fn decode(image: &RgbImage, bit_count: usize) -> Result<Vec<bool>, WatermarkError> {
    Ok(votes(image, bit_count)?
        .into_iter()
        .map(BitVotes::bit)
        .collect())
}

/// Decodes as many bits as `expected_bits` holds and counts the matches; the verdict is
/// `bits_matched >= threshold * total` (`threshold` in `0..=1`, e.g.
/// [`DEFAULT_DETECT_THRESHOLD`]).
///
/// Compare by matched bits, never by equality: even unattacked images lose a few 0-bits.
pub fn detect(
    image: &RgbImage,
    expected_bits: &[bool],
    threshold: f64,
) -> Result<Detection, WatermarkError> {
    if !(0.0..=1.0).contains(&threshold) {
        return Err(WatermarkError::InvalidThreshold(threshold));
    }
    let bits = decode(image, expected_bits.len())?;
    let bits_matched = bits
        .iter()
        .zip(expected_bits)
        .filter(|(got, want)| got == want)
        .count();
    let total = expected_bits.len();
    Ok(Detection {
        bits_matched,
        total,
        verdict: bits_matched as f64 >= threshold * total as f64,
    })
}

/// The Haar bands of the cropped U channel, row-major, `rows × cols` each.
struct Bands {
    rows: usize,
    cols: usize,
    ca: Vec<f64>,
    ch: Vec<f64>,
    cv: Vec<f64>,
    cd: Vec<f64>,
}

/// Where a 4×4 block of the approximation band starts: `(row, col)` of its top-left entry, and
/// the band's row length.
#[derive(Clone, Copy)]
struct BlockAt {
    row: usize,
    col: usize,
    stride: usize,
}

impl BlockAt {
    fn index(self, i: usize) -> usize {
        (self.row + i / BLOCK) * self.stride + self.col + i % BLOCK
    }
}

impl Bands {
    /// `pywt.dwt2(yuv[:row//4*4, :col//4*4, 1], 'haar')`.
    fn of_u(yuv: &[[u8; 3]], width: usize, height: usize) -> Self {
        let rows = height / 4 * 2;
        let cols = width / 4 * 2;
        let mut bands = Self {
            rows,
            cols,
            ca: Vec::with_capacity(rows * cols),
            ch: Vec::with_capacity(rows * cols),
            cv: Vec::with_capacity(rows * cols),
            cd: Vec::with_capacity(rows * cols),
        };
        let u = |row: usize, col: usize| f64::from(yuv[row * width + col][1]);
        for k in 0..rows {
            for m in 0..cols {
                let (r, c) = (2 * k, 2 * m);
                let q = haar::forward(u(r, c), u(r, c + 1), u(r + 1, c), u(r + 1, c + 1));
                bands.ca.push(q.ca);
                bands.ch.push(q.ch);
                bands.cv.push(q.cv);
                bands.cd.push(q.cd);
            }
        }
        bands
    }

    /// The 4×4 blocks of `ca` in raster order; block `n` carries payload bit `n % len`.
    fn blocks(&self) -> impl Iterator<Item = BlockAt> + use<> {
        let (block_cols, stride) = (self.cols / BLOCK, self.cols);
        (0..(self.rows / BLOCK) * block_cols).map(move |n| BlockAt {
            row: n / block_cols * BLOCK,
            col: n % block_cols * BLOCK,
            stride,
        })
    }

    /// `yuv[:row//4*4, :col//4*4, 1] = pywt.idwt2((cA, (cV, cH, cD)), 'haar')`: the reference
    /// passes the detail bands in swapped order; the float result is cast to uint8.
    fn write_u_swapped(&self, yuv: &mut [[u8; 3]], width: usize) {
        for k in 0..self.rows {
            for m in 0..self.cols {
                let i = k * self.cols + m;
                let quad = haar::inverse(Quad {
                    ca: self.ca[i],
                    ch: self.cv[i],
                    cv: self.ch[i],
                    cd: self.cd[i],
                });
                for (dr, row) in quad.iter().enumerate() {
                    for (dc, &value) in row.iter().enumerate() {
                        yuv[(2 * k + dr) * width + 2 * m + dc][1] = cast_to_u8(value);
                    }
                }
            }
        }
    }
}

/// NumPy's float64 → uint8 assignment: truncate towards zero, then keep the low 8 bits (what
/// the C cast does on x86-64; measured with NumPy 2.4). In-range values just truncate.
fn cast_to_u8(value: f64) -> u8 {
    // `as i64` truncates towards zero; `as u8` keeps the low byte.
    (value as i64) as u8
}

/// Position (0..16, row-major within the block) of the largest-magnitude entry other than
/// `[0][0]`; the first one wins ties (`np.argmax(abs(block.flatten()[1:])) + 1`).
fn max_position(ca: &[f64], block: BlockAt) -> usize {
    let mut best = 1;
    let mut best_abs = ca[block.index(1)].abs();
    for i in 2..BLOCK * BLOCK {
        let a = ca[block.index(i)].abs();
        if a > best_abs {
            best = i;
            best_abs = a;
        }
    }
    best
}

/// Python/NumPy floor division of floats (`npy_divmod`): exact floor of the quotient, also
/// where `a / b` would round up to an integer.
fn floor_div(a: f64, b: f64) -> f64 {
    let modulus = a % b;
    let mut div = (a - modulus) / b;
    if modulus != 0.0 && ((b < 0.0) != (modulus < 0.0)) {
        div -= 1.0;
    }
    if div == 0.0 {
        return 0.0_f64.copysign(a / b);
    }
    let floor = div.floor();
    if div - floor > 0.5 {
        floor + 1.0
    } else {
        floor
    }
}

/// The four pixels of one approximation coefficient: band `(row, col)` covers pixels
/// `(2 row .. 2 row + 1, 2 col .. 2 col + 1)`, all inside the image (the bands cover its crop to
/// multiples of 4).
struct Quad2x2 {
    row: usize,
    col: usize,
    /// `[top-left, top-right, bottom-left, bottom-right]`, RGB.
    pixels: [[u8; 3]; 4],
}

impl Quad2x2 {
    const OFFSETS: [(usize, usize); 4] = [(0, 0), (0, 1), (1, 0), (1, 1)];

    fn at(image: &RgbImage, row: usize, col: usize) -> Self {
        let pixels = Self::OFFSETS.map(|(y, x)| {
            image
                .get_pixel((2 * col + x) as u32, (2 * row + y) as u32)
                .0
        });
        Self { row, col, pixels }
    }

    fn write(&self, image: &mut RgbImage, pixels: [[u8; 3]; 4]) {
        for ((y, x), rgb) in Self::OFFSETS.into_iter().zip(pixels) {
            image.put_pixel(
                (2 * self.col + x) as u32,
                (2 * self.row + y) as u32,
                image::Rgb(rgb),
            );
        }
    }

    /// The quad after moving its coefficient by `delta`: each pixel shifted by the RGB change
    /// that moves U by `delta / 2` (the inverse Haar of a change of cA alone), saturated; and
    /// the coefficient the decoder computes from those pixels.
    fn shifted(&self, delta: f64) -> ([[u8; 3]; 4], f64) {
        let shift = color::rgb_delta_for_u(delta * 0.5);
        let pixels = self
            .pixels
            .map(|rgb| std::array::from_fn(|c| (i32::from(rgb[c]) + shift[c]).clamp(0, 255) as u8));
        let [a, b, c, d] = pixels.map(|rgb| f64::from(rgb_to_yuv(rgb)[1]));
        (pixels, haar::forward(a, b, c, d).ca)
    }

    /// Quantises the quad's coefficient `value` to `bit`: to the nearest bin centre that reads
    /// it, or, when saturation keeps the pixels from getting there (near-black pixels cannot
    /// lose blue, near-white ones cannot gain it), to the centre on the other side if that is
    /// at most [`MAX_COEFFICIENT_CHANGE`] away and reads better. Returns the pixels and the
    /// coefficient the decoder will read.
    fn best_shift(&self, value: f64, bit: bool) -> ([[u8; 3]; 4], f64) {
        let [nearest, other] = bin_centres(value, bit);
        let (pixels, read) = self.shifted(nearest - value);
        let miss = (read - nearest).abs();
        // A quarter bin: the read still lands well inside the bit's half of the bin.
        if miss <= 0.125 * SCALE || (other - value).abs() > MAX_COEFFICIENT_CHANGE {
            return (pixels, read);
        }
        let (other_pixels, other_read) = self.shifted(other - value);
        if (other_read - other).abs() < miss {
            (other_pixels, other_read)
        } else {
            (pixels, read)
        }
    }
}

/// The two bin centres nearest to `value` whose magnitude reads `bit` (`36 j + 9` for 0,
/// `36 j + 27` for 1, `j >= 0`), sign kept: `[nearest, next nearest]`.
///
/// The reference always rounds down (`floor(|v| / 36)`), a move of up to 27 that lowers most
/// 0-bit coefficients; the decoder only reads `|v| mod 36`, so any centre reads the same. The
/// nearest is at most 18 away when `|v| >= 27`, and every approximation coefficient of an
/// 8-bit image is at least 33 (U >= 17 for every RGB colour, and cA is the quad's U sum over
/// 2; a unit test checks both).
fn bin_centres(value: f64, bit: bool) -> [f64; 2] {
    let offset = if bit { 0.75 * SCALE } else { 0.25 * SCALE };
    let magnitude = value.abs();
    let below = floor_div(magnitude - offset, SCALE) * SCALE + offset;
    let above = below + SCALE;
    let [nearest, other] = if below >= 0.0 && magnitude - below <= above - magnitude {
        [below, above]
    } else if below >= 0.0 {
        [above, below]
    } else {
        [above, above + SCALE]
    };
    let sign = if value >= 0.0 { 1.0 } else { -1.0 };
    [sign * nearest, sign * other]
}

/// `EmbedMaxDct.diffuse_dct_matrix`: quantises the block's largest coefficient.
fn embed_block(ca: &mut [f64], block: BlockAt, bit: bool) {
    quantise(ca, block.index(max_position(ca, block)), bit);
}

/// The reference's quantisation of one coefficient: magnitude `(floor(|v| / 36) + 0.25 + 0.5 *
/// bit) * 36`, sign kept. Returns the change (`new - old`, at most [`MAX_COEFFICIENT_CHANGE`]
/// in magnitude).
fn quantise(ca: &mut [f64], index: usize, bit: bool) -> f64 {
    let value = ca[index];
    let bit = if bit { 1.0 } else { 0.0 };
    let magnitude = (floor_div(value.abs(), SCALE) + 0.25 + 0.5 * bit) * SCALE;
    ca[index] = if value >= 0.0 { magnitude } else { -magnitude };
    ca[index] - value
}

/// `EmbedMaxDct.infer_dct_matrix`: `(|v| mod 36) > 18`.
fn read_block(ca: &[f64], block: BlockAt) -> bool {
    let value = ca[block.index(max_position(ca, block))].abs();
    value % SCALE > 0.5 * SCALE
}

#[cfg(test)]
mod tests {
    use super::*;

    fn test_image(width: u32, height: u32) -> RgbImage {
        RgbImage::from_fn(width, height, |x, y| {
            image::Rgb([
                (x * 7 + y * 3 % 256) as u8,
                ((x ^ y) * 5 % 256) as u8,
                (128 + (x as i32 - y as i32) / 3).clamp(0, 255) as u8,
            ])
        })
    }

    #[test]
    fn refuses_what_the_reference_refuses() {
        let small = RgbImage::new(255, 256);
        assert!(matches!(
            encode(&small, &[true]),
            Err(WatermarkError::TooSmall {
                width: 255,
                height: 256
            })
        ));
        assert!(decode(&small, 8).is_err());
        // The reference compares the pixel count, not each side.
        let wide = test_image(1024, 64);
        assert!(encode(&wide, &[true]).is_ok());
        assert!(encode(&test_image(256, 256), &[]).is_err());
        assert!(decode(&test_image(256, 256), 0).is_err());
    }

    #[test]
    fn round_trip_recovers_the_payload() {
        let image = test_image(264, 260);
        let payload = crate::Payload::default();
        let marked = encode(&image, payload.bits()).expect("encode");
        assert_eq!(marked.dimensions(), image.dimensions());
        let detection = detect(&marked, payload.bits(), DEFAULT_DETECT_THRESHOLD).expect("detect");
        assert!(detection.verdict, "{detection:?}");
        assert!(detect(&image, payload.bits(), 1.5).is_err());
    }

    #[test]
    fn the_change_bound_follows_from_the_quantisation_and_the_conversion() {
        // Every coefficient of an 8-bit image is at least 2 * min U (the Haar approximation is
        // the quad's sum over 2), and min U over all 2^24 colours is 17.
        let mut min_u = u8::MAX;
        for rgb in 0..1u32 << 24 {
            let [_, r, g, b] = rgb.to_be_bytes();
            min_u = min_u.min(rgb_to_yuv([r, g, b])[1]);
        }
        assert_eq!(min_u, 17);
        let smallest_coefficient = haar::forward(17.0, 17.0, 17.0, 17.0).ca;
        assert!(smallest_coefficient > 33.9, "{smallest_coefficient}");
        // From there up, the nearest centre is at most 18 away, the other one further; both
        // read the bit and keep the sign. The reference's rounding down moves up to 27.
        let (mut largest, mut reference_largest): (f64, f64) = (0.0, 0.0);
        for step in 0..20_000 {
            let magnitude = smallest_coefficient + f64::from(step) * 0.0731;
            for value in [magnitude, -magnitude] {
                for bit in [false, true] {
                    let [nearest, other] = bin_centres(value, bit);
                    for centre in [nearest, other] {
                        assert_eq!(centre.abs() % SCALE > 0.5 * SCALE, bit, "{value} {bit}");
                        assert_eq!(centre.signum(), value.signum());
                    }
                    assert!((nearest - value).abs() <= (other - value).abs());
                    largest = largest.max((nearest - value).abs());
                    let mut reference = vec![value];
                    let moved = quantise(&mut reference, 0, bit).abs();
                    reference_largest = reference_largest.max(moved);
                }
            }
        }
        assert!(largest <= 0.5 * SCALE && largest > 17.9, "{largest}");
        assert!(reference_largest > 26.9, "{reference_largest}");
        assert!(reference_largest <= MAX_COEFFICIENT_CHANGE);
        // Half of it per pixel of the quad, in U; the RGB change of every U change up to that.
        let mut max = [0u8; 3];
        for step in -864..=864 {
            let delta = color::rgb_delta_for_u(f64::from(step) / 64.0);
            for c in 0..3 {
                max[c] = max[c].max(delta[c].unsigned_abs() as u8);
            }
        }
        assert_eq!(
            max,
            MAX_CHANNEL_CHANGE,
            "U change up to {}",
            MAX_COEFFICIENT_CHANGE / 2.0
        );
        assert_eq!(MAX_PIXEL_CHANGE, *max.iter().max().expect("three channels"));
    }

    #[test]
    fn capacity_counts_blocks() {
        assert_eq!(capacity(256, 256), 1024);
        assert_eq!(capacity(512, 512), 4096);
        assert_eq!(capacity(263, 263), 32 * 32);
        assert_eq!(capacity(65536, 1), 0);
    }

    #[test]
    fn floor_div_is_exact() {
        assert_eq!(floor_div(71.9, 36.0), 1.0);
        assert_eq!(floor_div(72.0, 36.0), 2.0);
        assert_eq!(floor_div(0.0, 36.0), 0.0);
        // The largest f64 below 72: a / b rounds to 2.0, floor division must say 1.
        let below = f64::from_bits(72.0_f64.to_bits() - 1);
        assert_eq!(floor_div(below, 36.0), 1.0);
    }

    #[test]
    fn votes_decide_like_numpy() {
        let bit = |ones, total| BitVotes { ones, total }.bit();
        assert!(!bit(0, 0));
        assert!(bit(1, 2));
        assert!(!bit(127, 255));
        assert!(bit(128, 255));
        assert!(!bit(0, 4));
    }

    #[test]
    fn cast_wraps_like_numpy() {
        // Values measured with NumPy 2.4 (see the module docs).
        for (value, want) in [
            (-0.5, 0),
            (-1.3, 255),
            (255.9, 255),
            (256.0, 0),
            (300.7, 44),
        ] {
            assert_eq!(cast_to_u8(value), want, "{value}");
        }
    }
}
