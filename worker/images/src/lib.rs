//! inpaint-images: the decoding of untrusted image and mask bytes, apart from the worker so that
//! it builds without libtorch (the fuzz target `image_decode` links only this crate).
//!
//! - [`decode_rgb`]: the pixel count read from the header and checked before any decoding, the
//!   decoder's own limits set to that header's size, then the EXIF orientation applied.
//! - [`orientation`]: turning a decoded image upright as its EXIF `Orientation` tag says.
//!
//! The worker (`inpaint_worker::images`) maps [`DecodeError`] to the job's error codes
//! (`image_too_large`, `undecodable_image`).

pub mod orientation;

use std::io::Cursor;

use image::{ImageError, ImageReader, RgbImage};

/// Why bytes did not become an image.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The header says more pixels than allowed; nothing past the header was decoded.
    #[error("{what} is {width}x{height} = {pixels} pixels, more than the {max_pixels} accepted")]
    TooLarge {
        /// What was decoded (`image`, `mask`), for the message.
        what: String,
        width: u32,
        height: u32,
        pixels: u64,
        max_pixels: u64,
    },
    /// Not an image in a format this build reads, or a corrupt one.
    #[error("{what}: {source}")]
    Undecodable {
        /// What was decoded (`image`, `mask`), for the message.
        what: String,
        #[source]
        source: ImageError,
    },
}

/// Decodes an image (PNG, JPEG or WebP), refusing one with more than `max_pixels` pixels from
/// its header alone, and turns it upright as its EXIF orientation says ([`orientation`]).
///
/// The decoder's limits are then set to the header's width and height, so a file whose data
/// claims more than its header cannot allocate past the check. `what` names the input in
/// messages.
pub fn decode_rgb(bytes: &[u8], what: &str, max_pixels: u64) -> Result<RgbImage, DecodeError> {
    let undecodable = |source: ImageError| DecodeError::Undecodable {
        what: what.to_owned(),
        source,
    };
    let reader = || {
        ImageReader::new(Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| undecodable(ImageError::IoError(e)))
    };
    let (width, height) = reader()?.into_dimensions().map_err(undecodable)?;
    let pixels = u64::from(width) * u64::from(height);
    if pixels > max_pixels {
        return Err(DecodeError::TooLarge {
            what: what.to_owned(),
            width,
            height,
            pixels,
            max_pixels,
        });
    }
    let mut limited = reader()?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(width);
    limits.max_image_height = Some(height);
    limited.limits(limits);
    Ok(orientation::decode_upright(limited)
        .map_err(undecodable)?
        .to_rgb8())
}

#[cfg(test)]
mod tests {
    use image::ImageEncoder;
    use image::codecs::png::PngEncoder;

    use super::*;

    fn png(w: u32, h: u32) -> Vec<u8> {
        let mut out = Vec::new();
        PngEncoder::new(&mut out)
            .write_image(
                RgbImage::new(w, h).as_raw(),
                w,
                h,
                image::ExtendedColorType::Rgb8,
            )
            .expect("png");
        out
    }

    #[test]
    fn too_many_pixels_are_refused_from_the_header() {
        let bytes = png(100, 100);
        match decode_rgb(&bytes, "image", 9_999) {
            Err(e @ DecodeError::TooLarge { pixels: 10_000, .. }) => {
                assert_eq!(
                    e.to_string(),
                    "image is 100x100 = 10000 pixels, more than the 9999 accepted"
                );
            }
            other => panic!("expected TooLarge, got {other:?}"),
        }
        let image = decode_rgb(&bytes, "image", 10_000).expect("fits");
        assert_eq!(image.dimensions(), (100, 100));
    }

    #[test]
    fn garbage_and_truncated_files_are_undecodable() {
        let bytes = png(40, 30);
        for (what, input) in [
            ("garbage", &b"not an image"[..]),
            ("empty", &[][..]),
            ("the header alone", &bytes[..40]),
            ("truncated data", &bytes[..bytes.len() - 20]),
        ] {
            match decode_rgb(input, "mask", 1 << 20) {
                Err(e @ DecodeError::Undecodable { .. }) => {
                    assert!(e.to_string().starts_with("mask: "), "{what}: {e}");
                }
                other => panic!("{what}: expected Undecodable, got {other:?}"),
            }
        }
    }
}
