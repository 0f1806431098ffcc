//! Image handling around inference: decoding inputs within limits (pixel count read from the
//! header before any decoding), fitting them to the output size, and encoding outputs.

use std::io::Cursor;

use image::codecs::jpeg::JpegEncoder;
use image::codecs::png::PngEncoder;
use image::codecs::webp::WebPEncoder;
use image::imageops::FilterType;
use image::{GrayImage, ImageEncoder, ImageReader, RgbImage};
use inpaint_job::{ErrorCode, OutputFormat};

use crate::error::JobFailure;

/// Decodes an image, refusing one with more than `max_pixels` pixels from its header alone.
pub fn decode_rgb(bytes: &[u8], what: &str, max_pixels: u64) -> Result<RgbImage, JobFailure> {
    let undecodable = |e: image::ImageError| {
        JobFailure::permanent(ErrorCode::UndecodableImage, format!("{what}: {e}"))
    };
    let reader = || {
        ImageReader::new(Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| JobFailure::permanent(ErrorCode::UndecodableImage, format!("{what}: {e}")))
    };
    let (width, height) = reader()?.into_dimensions().map_err(undecodable)?;
    let pixels = u64::from(width) * u64::from(height);
    if pixels > max_pixels {
        return Err(JobFailure::permanent(
            ErrorCode::ImageTooLarge,
            format!(
                "{what} is {width}x{height} = {pixels} pixels, more than the {max_pixels} accepted"
            ),
        ));
    }
    let mut limited = reader()?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(width);
    limits.max_image_height = Some(height);
    limited.limits(limits);
    Ok(limited.decode().map_err(undecodable)?.to_rgb8())
}

/// The output size of a job: the requested width/height, else the input's size rounded down to
/// a multiple of 8 (512 in text-only mode), each side capped at `max_side`.
pub fn output_size(
    requested: (Option<u32>, Option<u32>),
    input: Option<(u32, u32)>,
    max_side: u32,
) -> Result<(u32, u32), JobFailure> {
    let fallback = input.unwrap_or((
        inpaint_job::job::TEXT_ONLY_DEFAULT_SIDE,
        inpaint_job::job::TEXT_ONLY_DEFAULT_SIDE,
    ));
    let side = |asked: Option<u32>, from_input: u32, field: &str| match asked {
        Some(side) if side > max_side => Err(JobFailure::permanent(
            ErrorCode::InvalidParameter,
            format!("params.{field}: {side} is above this worker's maximum of {max_side}"),
        )),
        Some(side) => Ok(side),
        None => {
            let rounded = (from_input / 8 * 8).min(max_side);
            if rounded < 64 {
                Err(JobFailure::permanent(
                    ErrorCode::InvalidParameter,
                    format!("params.{field}: the input is {from_input} pixels, smaller than 64"),
                ))
            } else {
                Ok(rounded)
            }
        }
    };
    Ok((
        side(requested.0, fallback.0, "width")?,
        side(requested.1, fallback.1, "height")?,
    ))
}

/// The image and mask at output size: unchanged when they already fit, else resized (Lanczos
/// for the image, nearest for the mask so that it stays binary).
pub fn fit(image: RgbImage, mask: GrayImage, size: (u32, u32)) -> (RgbImage, GrayImage) {
    let image = if image.dimensions() == size {
        image
    } else {
        image::imageops::resize(&image, size.0, size.1, FilterType::Lanczos3)
    };
    let mask = if mask.dimensions() == size {
        mask
    } else {
        image::imageops::resize(&mask, size.0, size.1, FilterType::Nearest)
    };
    (image, mask)
}

/// Encodes an output in the job's format.
pub fn encode(image: &RgbImage, format: OutputFormat) -> Result<Vec<u8>, JobFailure> {
    let mut out = Vec::new();
    let (w, h) = image.dimensions();
    let result = match format {
        OutputFormat::Png {} => PngEncoder::new(&mut out).write_image(
            image.as_raw(),
            w,
            h,
            image::ExtendedColorType::Rgb8,
        ),
        OutputFormat::Webp {} => WebPEncoder::new_lossless(&mut out).write_image(
            image.as_raw(),
            w,
            h,
            image::ExtendedColorType::Rgb8,
        ),
        OutputFormat::Jpeg { quality } => JpegEncoder::new_with_quality(&mut out, quality)
            .write_image(image.as_raw(), w, h, image::ExtendedColorType::Rgb8),
    };
    result.map_err(|e| JobFailure::internal(format!("encoding the output: {e}")))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(w: u32, h: u32) -> Vec<u8> {
        encode(&RgbImage::new(w, h), OutputFormat::Png {}).expect("png")
    }

    #[test]
    fn too_many_pixels_are_refused_from_the_header() {
        let bytes = png(100, 100);
        let err = decode_rgb(&bytes, "image", 9_999).expect_err("too big");
        assert_eq!(err.code, ErrorCode::ImageTooLarge);
        assert_eq!(
            decode_rgb(&bytes, "image", 10_000)
                .expect("fits")
                .dimensions(),
            (100, 100)
        );
        let err = decode_rgb(b"not an image", "mask", 10).expect_err("garbage");
        assert_eq!(err.code, ErrorCode::UndecodableImage);
        assert!(err.message.starts_with("mask"), "{}", err.message);
    }

    #[test]
    fn output_size_follows_input_and_caps() {
        assert_eq!(
            output_size((None, None), Some((517, 300)), 1024).expect("ok"),
            (512, 296)
        );
        assert_eq!(
            output_size((None, None), None, 1024).expect("ok"),
            (512, 512)
        );
        assert_eq!(
            output_size((None, None), Some((4000, 3000)), 1024).expect("ok"),
            (1024, 1024)
        );
        assert_eq!(
            output_size((Some(64), None), Some((128, 96)), 1024).expect("ok"),
            (64, 96)
        );
        let err = output_size((Some(2048), None), None, 1024).expect_err("above max");
        assert_eq!(err.code, ErrorCode::InvalidParameter);
    }

    #[test]
    fn every_format_encodes() {
        let image = RgbImage::from_pixel(16, 8, image::Rgb([10, 200, 30]));
        for format in [
            OutputFormat::Png {},
            OutputFormat::Webp {},
            OutputFormat::Jpeg { quality: 80 },
        ] {
            let bytes = encode(&image, format).expect("encode");
            let back = decode_rgb(&bytes, "out", 1 << 20).expect("decode");
            assert_eq!(back.dimensions(), (16, 8), "{format:?}");
        }
    }
}
