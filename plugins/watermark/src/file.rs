//! Operator helpers behind the worker's `watermark embed` and `watermark detect` subcommands:
//! [`embed_file`] and [`detect_file`].
//!
//! Files are read with the `image` crate and converted to 8-bit RGB (alpha dropped, 16-bit
//! samples reduced), like `cv2.imread` does by default for the reference's command line.

use std::path::Path;

use image::ImageFormat;

use crate::dwt_dct::{self, Detection};
use crate::error::WatermarkError;
use crate::payload::{Payload, to_hex};

/// What [`detect_file`] found.
#[derive(Debug, Clone, PartialEq)]
pub struct FileDetection {
    /// Matched bits and verdict against the expected payload.
    pub detection: Detection,
    /// The bits read, as many as the expected payload has.
    pub bits: Vec<bool>,
    /// The bits read, packed MSB first, in hex.
    pub hex: String,
    /// The bits read as UTF-8 text, when they are whole bytes of valid UTF-8.
    pub text: Option<String>,
}

fn read_rgb(path: &Path) -> Result<image::RgbImage, WatermarkError> {
    let image = image::open(path).map_err(|source| WatermarkError::Image {
        path: path.to_owned(),
        source,
    })?;
    Ok(image.to_rgb8())
}

/// Reads `input`, embeds `payload` and writes `output` (PNG, or lossless WebP, chosen by the
/// extension; JPEG is refused because it damages the mark). Returns the read-back check of the
/// written pixels against [`dwt_dct::DEFAULT_DETECT_THRESHOLD`].
pub fn embed_file(
    input: &Path,
    output: &Path,
    payload: &Payload,
) -> Result<Detection, WatermarkError> {
    if let Ok(format @ ImageFormat::Jpeg) = ImageFormat::from_path(output) {
        return Err(WatermarkError::LossyOutput {
            path: output.to_owned(),
            format: format!("{format:?}"),
        });
    }
    let image = read_rgb(input)?;
    let marked = dwt_dct::encode(&image, payload.bits())?;
    let check = dwt_dct::detect(&marked, payload.bits(), dwt_dct::DEFAULT_DETECT_THRESHOLD)?;
    marked
        .save(output)
        .map_err(|source| WatermarkError::Image {
            path: output.to_owned(),
            source,
        })?;
    Ok(check)
}

/// Reads `path` and looks for `expected` in it; `threshold` is the fraction of bits that must
/// match (see [`dwt_dct::detect`]).
pub fn detect_file(
    path: &Path,
    expected: &Payload,
    threshold: f64,
) -> Result<FileDetection, WatermarkError> {
    let image = read_rgb(path)?;
    let detection = dwt_dct::detect(&image, expected.bits(), threshold)?;
    let bits = dwt_dct::decode(&image, expected.len())?;
    let bytes = crate::payload::bits_to_bytes(&bits);
    let text = bits
        .len()
        .is_multiple_of(8)
        .then(|| String::from_utf8(bytes.clone()).ok())
        .flatten();
    Ok(FileDetection {
        detection,
        hex: to_hex(&bytes),
        bits,
        text,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embed_then_detect_through_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let input = dir.path().join("in.png");
        let output = dir.path().join("out.png");
        let image = image::RgbImage::from_fn(300, 260, |x, y| {
            image::Rgb([(x % 256) as u8, (y % 256) as u8, ((x * y) % 251) as u8])
        });
        image.save(&input).expect("write input");
        let payload = Payload::from_bytes(b"operator-7").expect("payload");
        let check = embed_file(&input, &output, &payload).expect("embed");
        assert!(check.verdict, "{check:?}");

        let found =
            detect_file(&output, &payload, crate::DEFAULT_DETECT_THRESHOLD).expect("detect");
        assert!(found.detection.verdict);
        assert_eq!(found.bits.len(), 80);
        let unmarked =
            detect_file(&input, &payload, crate::DEFAULT_DETECT_THRESHOLD).expect("detect");
        assert!(!unmarked.detection.verdict, "{unmarked:?}");

        let jpeg = dir.path().join("out.jpg");
        assert!(matches!(
            embed_file(&input, &jpeg, &payload),
            Err(WatermarkError::LossyOutput { .. })
        ));
        assert!(matches!(
            detect_file(&dir.path().join("missing.png"), &payload, 0.9),
            Err(WatermarkError::Image { .. })
        ));
    }
}
