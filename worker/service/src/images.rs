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

/// Provenance to write into an output file: the provenance stage's fields (PNG text chunks; the
/// source of the EXIF summary in JPEG and WebP) and its XMP packet (every format), from the
/// stage's metadata (empty when the chain has no provenance stage).
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

/// Encodes an output in the job's format and writes the provenance into the encoded file, byte
/// level, without re-encoding pixels (`inpaint_provenance`):
/// - PNG: one `iTXt` chunk per field and the XMP packet (`iTXt` `XML:com.adobe.xmp`);
/// - JPEG: an EXIF `APP1` segment (AI-generated statement, software and model, licence, job,
///   seed, parameters) and an XMP `APP1` segment;
/// - WebP: converted to the extended format (`VP8X`) with `EXIF` and `XMP ` chunks.
///
/// With no provenance stage in the chain the file is written as encoded. A provenance block
/// the container cannot hold (an XMP packet over JPEG's 65,504 bytes) fails the job as an
/// internal error rather than publishing an unmarked output.
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
    if provenance.is_empty() {
        return Ok(out);
    }
    let fields = &provenance.fields;
    let xmp = provenance.xmp.as_deref().unwrap_or_default();
    let (embedded, container) = match format {
        OutputFormat::Png {} => (inpaint_provenance::embed_png(&out, fields, xmp), "PNG"),
        OutputFormat::Jpeg { .. } => (inpaint_provenance::embed_jpeg(&out, fields, xmp), "JPEG"),
        OutputFormat::Webp {} => (inpaint_provenance::embed_webp(&out, fields, xmp), "WebP"),
    };
    embedded
        .map_err(|e| JobFailure::internal(format!("writing provenance into the {container}: {e}")))
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

    /// What the provenance stage would record, as the worker hands it to `encode`.
    fn provenance() -> Provenance {
        let fields: Vec<(String, String)> = [
            ("provenance.ai_generated", "true"),
            (
                "provenance.digital_source_type",
                inpaint_provenance::DIGITAL_SOURCE_TYPE_COMPOSITE,
            ),
            ("provenance.job_id", "00000000-0000-0000-0000-00000000002a"),
            ("provenance.seed", "77"),
            ("provenance.model_id", "sd-inpainting"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let xmp = inpaint_provenance::xmp_packet(&fields);
        Provenance { fields, xmp }
    }

    fn contains(bytes: &[u8], needle: &[u8]) -> bool {
        bytes.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn png_outputs_carry_the_provenance() {
        let image = RgbImage::from_pixel(16, 8, image::Rgb([10, 200, 30]));
        let bytes = encode(&image, OutputFormat::Png {}, &provenance()).expect("encode");
        assert!(contains(&bytes, b"iTXtprovenance.ai_generated"));
        assert!(contains(&bytes, b"iTXtXML:com.adobe.xmp"));
        let back = decode_rgb(&bytes, "out", 1 << 20).expect("decode");
        assert_eq!(back, image, "pixels unchanged");
    }

    #[test]
    fn jpeg_and_webp_outputs_carry_exif_and_xmp() {
        use image::ImageDecoder;
        use image::codecs::jpeg::JpegDecoder;
        use image::codecs::webp::WebPDecoder;

        let image = RgbImage::from_fn(16, 8, |x, y| image::Rgb([x as u8 * 16, y as u8 * 32, 99]));
        let provenance = provenance();
        let xmp = provenance.xmp.clone().expect("packet");
        for format in [OutputFormat::Jpeg { quality: 90 }, OutputFormat::Webp {}] {
            let plain = encode(&image, format, &Provenance::default()).expect("encode");
            let bytes = encode(&image, format, &provenance).expect("encode");
            let cursor = Cursor::new(bytes.as_slice());
            let (exif, read_xmp) = if matches!(format, OutputFormat::Webp {}) {
                assert_eq!(&bytes[12..16], b"VP8X", "extended WebP");
                let mut decoder = WebPDecoder::new(cursor).expect("decoder");
                (decoder.exif_metadata(), decoder.xmp_metadata())
            } else {
                let mut decoder = JpegDecoder::new(cursor).expect("decoder");
                (decoder.exif_metadata(), decoder.xmp_metadata())
            };
            let exif = exif.expect("reads EXIF").expect("has EXIF");
            assert!(contains(&exif, b"AI-generated image"), "{format:?}");
            assert!(contains(&exif, b"sd-inpainting"), "{format:?}");
            assert!(contains(&exif, b"seed=77"), "{format:?}");
            assert_eq!(read_xmp.expect("reads XMP"), Some(xmp.clone().into_bytes()));
            // Same pixels as the file without provenance: metadata was added, nothing re-encoded.
            assert_eq!(
                decode_rgb(&bytes, "out", 1 << 20).expect("decode"),
                decode_rgb(&plain, "out", 1 << 20).expect("decode"),
                "{format:?}"
            );
        }
    }

    #[test]
    fn without_a_provenance_stage_files_carry_none() {
        let image = RgbImage::from_pixel(4, 4, image::Rgb([1, 2, 3]));
        for format in [
            OutputFormat::Png {},
            OutputFormat::Webp {},
            OutputFormat::Jpeg { quality: 80 },
        ] {
            let bytes = encode(&image, format, &Provenance::default()).expect("encode");
            assert!(!contains(&bytes, b"AI-generated"), "{format:?}");
            assert!(!contains(&bytes, b"xap/1.0"), "{format:?}");
        }
    }
}
