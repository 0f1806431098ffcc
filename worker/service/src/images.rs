//! Image handling around inference: decoding inputs within limits (pixel count read from the
//! header before any decoding) and encoding outputs. Output sizes, crop-to-mask and compositing
//! are the engine's (`inpaint_engine::job`).

use std::io::Cursor;

use image::codecs::jpeg::JpegEncoder;
use image::codecs::png::PngEncoder;
use image::codecs::webp::WebPEncoder;
use image::{ImageEncoder, ImageReader, RgbImage};
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

/// Provenance to write into an output file: text fields and an XMP packet, from the
/// provenance stage's metadata (empty when the chain has no provenance stage).
#[derive(Clone, Debug, Default)]
pub struct Provenance {
    pub fields: Vec<(String, String)>,
    pub xmp: Option<String>,
}

impl Provenance {
    /// What the provenance stage recorded on `output`.
    pub fn of(output: &inpaint_plugin_api::OutputImage) -> Self {
        Self {
            fields: inpaint_provenance::png_fields(output),
            xmp: inpaint_provenance::xmp_for(output),
        }
    }

    fn is_empty(&self) -> bool {
        self.fields.is_empty() && self.xmp.is_none()
    }
}

/// Encodes an output in the job's format. PNG outputs carry the provenance as iTXt chunks and
/// an XMP packet; JPEG and WebP outputs do not carry it yet.
pub fn encode(
    image: &RgbImage,
    format: OutputFormat,
    provenance: &Provenance,
) -> Result<Vec<u8>, JobFailure> {
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
    if matches!(format, OutputFormat::Png {}) && !provenance.is_empty() {
        out = inpaint_provenance::embed_png(
            &out,
            &provenance.fields,
            provenance.xmp.as_deref().unwrap_or_default(),
        )
        .map_err(|e| JobFailure::internal(format!("writing provenance into the PNG: {e}")))?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(w: u32, h: u32) -> Vec<u8> {
        encode(
            &RgbImage::new(w, h),
            OutputFormat::Png {},
            &Provenance::default(),
        )
        .expect("png")
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
    fn every_format_encodes() {
        let image = RgbImage::from_pixel(16, 8, image::Rgb([10, 200, 30]));
        for format in [
            OutputFormat::Png {},
            OutputFormat::Webp {},
            OutputFormat::Jpeg { quality: 80 },
        ] {
            let bytes = encode(&image, format, &Provenance::default()).expect("encode");
            let back = decode_rgb(&bytes, "out", 1 << 20).expect("decode");
            assert_eq!(back.dimensions(), (16, 8), "{format:?}");
        }
    }

    #[test]
    fn png_outputs_carry_the_provenance() {
        let image = RgbImage::from_pixel(16, 8, image::Rgb([10, 200, 30]));
        let provenance = Provenance {
            fields: vec![("provenance.ai_generated".into(), "true".into())],
            xmp: Some("<x:xmpmeta xmlns:x=\"adobe:ns:meta/\"></x:xmpmeta>".into()),
        };
        let bytes = encode(&image, OutputFormat::Png {}, &provenance).expect("encode");
        let contains = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
        assert!(contains(b"iTXtprovenance.ai_generated"));
        assert!(contains(b"iTXtXML:com.adobe.xmp"));
        let back = decode_rgb(&bytes, "out", 1 << 20).expect("decode");
        assert_eq!(back, image, "pixels unchanged");
    }
}
