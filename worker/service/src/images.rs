//! Image handling around inference: decoding inputs within limits (pixel count read from the
//! header before any decoding), encoding outputs with their provenance, and signing them with
//! a C2PA manifest when configured ([`Signer`]). Output sizes, crop-to-mask and compositing
//! are the engine's (`inpaint_engine::job`).

use image::codecs::jpeg::JpegEncoder;
use image::codecs::png::PngEncoder;
use image::codecs::webp::WebPEncoder;
use image::{ImageEncoder, RgbImage};
use inpaint_job::{ErrorCode, OutputFormat};

// Decoding untrusted bytes lives in its own crate, without libtorch, so that it can be fuzzed
// cheaply (fuzz/fuzz_targets/image_decode.rs); its EXIF-orientation module stays reachable here.
pub use inpaint_images::orientation;

use crate::error::JobFailure;
use crate::settings::{Settings, SettingsError};

/// Decodes an image, refusing one with more than `max_pixels` pixels from its header alone, and
/// turns it upright as its EXIF orientation says ([`inpaint_images::decode_rgb`]): too many
/// pixels is `image_too_large`, anything else that is not an image `undecodable_image`.
pub fn decode_rgb(bytes: &[u8], what: &str, max_pixels: u64) -> Result<RgbImage, JobFailure> {
    inpaint_images::decode_rgb(bytes, what, max_pixels).map_err(|e| {
        let code = match e {
            inpaint_images::DecodeError::TooLarge { .. } => ErrorCode::ImageTooLarge,
            inpaint_images::DecodeError::Undecodable { .. } => ErrorCode::UndecodableImage,
        };
        JobFailure::permanent(code, e.to_string())
    })
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
    /// What the provenance stage recorded on `output` (its typed report).
    pub fn of(output: &inpaint_plugin_api::OutputImage) -> Self {
        let fields = output
            .provenance()
            .map(|report| report.fields.clone())
            .unwrap_or_default();
        // Without the provenance stage compiled in, no output carries fields.
        #[cfg(feature = "stage-provenance")]
        let xmp = inpaint_stages::provenance::xmp_packet(&fields);
        #[cfg(not(feature = "stage-provenance"))]
        let xmp = None;
        Self { fields, xmp }
    }

    fn is_empty(&self) -> bool {
        self.fields.is_empty() && self.xmp.is_none()
    }
}

/// Encodes an output in the job's format and writes the provenance into the encoded file, byte
/// level, without re-encoding pixels (the provenance crate, through `inpaint_stages::provenance`):
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
    #[cfg(not(feature = "stage-provenance"))]
    {
        // Fail closed: never publish an output without the provenance it was meant to carry.
        Err(JobFailure::internal(
            "the output has provenance fields but this build cannot write them (cargo feature \
             stage-provenance)",
        ))
    }
    #[cfg(feature = "stage-provenance")]
    {
        use inpaint_stages::provenance::{embed_jpeg, embed_png, embed_webp};
        let fields = &provenance.fields;
        let xmp = provenance.xmp.as_deref().unwrap_or_default();
        let (embedded, container) = match format {
            OutputFormat::Png {} => (embed_png(&out, fields, xmp), "PNG"),
            OutputFormat::Jpeg { .. } => (embed_jpeg(&out, fields, xmp), "JPEG"),
            OutputFormat::Webp {} => (embed_webp(&out, fields, xmp), "WebP"),
        };
        embedded.map_err(|e| {
            JobFailure::internal(format!("writing provenance into the {container}: {e}"))
        })
    }
}

/// Signs encoded outputs with a C2PA manifest when the `[c2pa]` section is configured, and
/// passes them through unchanged otherwise. Built once at start-up by [`Signer::build`];
/// cloning shares the credentials (an `Arc`), so every upload gets a handle.
#[derive(Clone, Debug, Default)]
pub struct Signer {
    #[cfg(feature = "c2pa")]
    c2pa: Option<std::sync::Arc<inpaint_stages::provenance::C2paSigner>>,
}

impl Signer {
    /// Reads the credentials named in `settings.c2pa` and signs and validates a test image
    /// with them, so that a missing file, a CA certificate, a mismatched key or a wrong
    /// algorithm stops the worker at start-up, naming the key. No section: a signer that
    /// passes outputs through. Blocking (file reads, one signature, tens of milliseconds).
    pub fn build(settings: &Settings) -> Result<Self, SettingsError> {
        #[cfg(feature = "c2pa")]
        {
            let Some(config) = &settings.c2pa else {
                return Ok(Self::default());
            };
            // The provenance crate reads the files too; opening them here first lets the
            // message name the key that points at a missing or unreadable file.
            for (key, path) in [
                ("c2pa.cert_chain", &config.cert_chain),
                ("c2pa.private_key", &config.private_key),
            ] {
                std::fs::File::open(path).map_err(|e| SettingsError::Invalid {
                    key: key.into(),
                    message: format!("cannot read {}: {e}", path.display()),
                })?;
            }
            let signer = config.build().map_err(|e| SettingsError::Invalid {
                key: "c2pa".into(),
                message: format!(
                    "the credentials in c2pa.cert_chain, c2pa.private_key and c2pa.algorithm \
                     cannot sign: {e}"
                ),
            })?;
            Ok(Self {
                c2pa: Some(std::sync::Arc::new(signer)),
            })
        }
        #[cfg(not(feature = "c2pa"))]
        {
            // `Settings::validate` refuses the section already; a worker started from
            // unvalidated settings must not publish unsigned outputs either.
            match settings.c2pa {
                Some(_) => Err(SettingsError::Invalid {
                    key: "c2pa".into(),
                    message: crate::settings::NO_C2PA_SUPPORT.into(),
                }),
                None => Ok(Self::default()),
            }
        }
    }

    /// Whether outputs get a C2PA manifest.
    pub fn is_signing(&self) -> bool {
        #[cfg(feature = "c2pa")]
        {
            self.c2pa.is_some()
        }
        #[cfg(not(feature = "c2pa"))]
        {
            false
        }
    }

    /// Returns `encoded` (an output [`encode`] wrote, provenance included) with a signed C2PA
    /// manifest embedded whose data hash covers every other byte, or unchanged when no signer
    /// is configured. Sign last: any later change to the bytes invalidates the manifest.
    ///
    /// The credentials were proven at start-up, so a failure here is a bug (or provenance
    /// the manifest cannot describe, also ours): an internal, permanent job failure, never a
    /// retry and never an unsigned output.
    pub fn sign(
        &self,
        encoded: Vec<u8>,
        format: OutputFormat,
        provenance: &Provenance,
    ) -> Result<Vec<u8>, JobFailure> {
        #[cfg(feature = "c2pa")]
        if let Some(signer) = &self.c2pa {
            return signer
                .sign(&encoded, format.content_type(), &provenance.fields)
                .map_err(|e| {
                    JobFailure::internal(format!(
                        "signing the {} output with C2PA: {e}",
                        format.content_type()
                    ))
                });
        }
        let _ = (format, provenance);
        Ok(encoded)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

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
                inpaint_stages::provenance::DIGITAL_SOURCE_TYPE_COMPOSITE,
            ),
            ("provenance.job_id", "00000000-0000-0000-0000-00000000002a"),
            ("provenance.seed", "77"),
            ("provenance.model_id", "sd-inpainting"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let xmp = inpaint_stages::provenance::xmp_packet(&fields);
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

    #[cfg(not(feature = "c2pa"))]
    #[test]
    fn without_the_feature_a_c2pa_section_builds_no_signer() {
        let settings = Settings {
            c2pa: Some(serde_json::json!({ "cert_chain": "/c.pem", "private_key": "/k.pem" })),
            ..Settings::default()
        };
        match Signer::build(&settings) {
            Err(SettingsError::Invalid { key, message }) => {
                assert_eq!(key, "c2pa");
                assert!(message.contains("--features c2pa"), "{message}");
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        let signer = Signer::build(&Settings::default()).expect("no section");
        assert!(!signer.is_signing());
        let bytes = png(2, 2);
        let same = signer
            .sign(bytes.clone(), OutputFormat::Png {}, &provenance())
            .expect("pass-through");
        assert_eq!(same, bytes);
    }

    #[cfg(feature = "c2pa")]
    mod c2pa {
        use std::path::Path;
        use std::process::Command;

        use image::ImageDecoder;
        use inpaint_stages::provenance::{C2paConfig, C2paValidationState, read_manifest};
        use serde_json::Value;

        use super::*;

        /// Throwaway credentials from the provenance crate's fixture script (needs `openssl`).
        fn credentials() -> tempfile::TempDir {
            let dir = tempfile::tempdir().expect("temp dir");
            let script = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../plugins/provenance/tests/fixtures/c2pa-test-certs.sh");
            let status = Command::new("bash")
                .arg(script)
                .arg(dir.path())
                .status()
                .expect("bash runs");
            assert!(
                status.success(),
                "generating test certificates failed; these tests need the openssl CLI"
            );
            dir
        }

        fn settings(dir: &Path) -> Settings {
            Settings {
                c2pa: Some(C2paConfig {
                    cert_chain: dir.join("chain.pem"),
                    private_key: dir.join("signer.key"),
                    algorithm: Default::default(),
                    tsa_url: None,
                    training_mining: Default::default(),
                    training_mining_constraint: None,
                }),
                ..Settings::default()
            }
        }

        fn xmp_of(bytes: &[u8], format: OutputFormat) -> Option<Vec<u8>> {
            use image::codecs::{jpeg::JpegDecoder, png::PngDecoder, webp::WebPDecoder};
            let cursor = Cursor::new(bytes);
            match format {
                OutputFormat::Png {} => PngDecoder::new(cursor).expect("png").xmp_metadata(),
                OutputFormat::Jpeg { .. } => JpegDecoder::new(cursor).expect("jpeg").xmp_metadata(),
                OutputFormat::Webp {} => WebPDecoder::new(cursor).expect("webp").xmp_metadata(),
            }
            .expect("reads XMP")
        }

        #[test]
        fn every_format_is_signed_and_reads_back_trusted() {
            let dir = credentials();
            let signer = Signer::build(&settings(dir.path())).expect("signer");
            assert!(signer.is_signing());
            let ca = std::fs::read_to_string(dir.path().join("ca.pem")).expect("ca");
            let image =
                RgbImage::from_fn(24, 16, |x, y| image::Rgb([x as u8 * 10, y as u8 * 15, 60]));
            let provenance = provenance();
            for format in [
                OutputFormat::Png {},
                OutputFormat::Jpeg { quality: 90 },
                OutputFormat::Webp {},
            ] {
                let mime = format.content_type();
                let encoded = encode(&image, format, &provenance).expect("encode");
                // What the runner does inside its encoding task, shared signer included.
                let shared = signer.clone();
                let signed = shared
                    .sign(encoded.clone(), format, &provenance)
                    .expect("sign");
                assert!(signed.len() > encoded.len(), "{mime}: a manifest was added");

                let reader = read_manifest(&signed, mime, Some(&ca)).expect("read");
                assert_eq!(
                    reader.validation_state(),
                    C2paValidationState::Trusted,
                    "{mime}: {}",
                    reader.json()
                );
                let store: Value = serde_json::from_str(&reader.json()).expect("JSON");
                let label = store["active_manifest"].as_str().expect("active manifest");
                let manifest = &store["manifests"][label];
                assert_eq!(
                    manifest["title"], "00000000-0000-0000-0000-00000000002a",
                    "{mime}"
                );
                let json = reader.json();
                assert!(
                    json.contains(inpaint_stages::provenance::DIGITAL_SOURCE_TYPE_COMPOSITE),
                    "{mime}: {json}"
                );
                assert!(json.contains("cawg.training-mining"), "{mime}");

                // Same pixels, and the provenance written before signing is still there.
                assert_eq!(
                    decode_rgb(&signed, "out", 1 << 20).expect("decode"),
                    decode_rgb(&encoded, "out", 1 << 20).expect("decode"),
                    "{mime}"
                );
                assert_eq!(
                    xmp_of(&signed, format),
                    provenance.xmp.clone().map(String::into_bytes),
                    "{mime}"
                );
            }
        }

        #[test]
        fn bad_credentials_name_their_key_and_a_failed_signature_is_internal() {
            let dir = credentials();
            let key_of = |settings: &Settings| match Signer::build(settings) {
                Err(SettingsError::Invalid { key, message }) => (key, message),
                other => panic!("expected a refusal, got {other:?}"),
            };
            let mut missing = settings(dir.path());
            if let Some(c2pa) = &mut missing.c2pa {
                c2pa.private_key = dir.path().join("nope.key");
            }
            let (key, message) = key_of(&missing);
            assert_eq!(key, "c2pa.private_key");
            assert!(message.contains("nope.key"), "{message}");
            // A CA certificate is no signing certificate: caught by the start-up test signature.
            let mut ca = settings(dir.path());
            if let Some(c2pa) = &mut ca.c2pa {
                c2pa.cert_chain = dir.path().join("ca.pem");
                c2pa.private_key = dir.path().join("ca.key");
            }
            let (key, message) = key_of(&ca);
            assert_eq!(key, "c2pa");
            assert!(message.contains("self-signed"), "{message}");
            assert!(!message.contains("PRIVATE KEY"), "{message}");

            // Outputs without the provenance stage's record cannot be described: a bug in the
            // worker's configuration checks, so internal and not retried.
            let signer = Signer::build(&settings(dir.path())).expect("signer");
            let encoded = png(4, 4);
            let err = signer
                .sign(encoded, OutputFormat::Png {}, &Provenance::default())
                .expect_err("no source type");
            assert_eq!(err.code, ErrorCode::Internal);
            assert!(!err.transient);
            assert!(err.message.contains("C2PA"), "{}", err.message);
        }
    }
}
