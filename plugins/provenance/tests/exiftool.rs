//! Cross-check with ExifTool, an independent reader: PNG, JPEG and WebP outputs annotated by
//! this crate show the AI-generated marker, model, licence and job in EXIF/XMP/PNG tags, and
//! `exiftool -validate` reports no error or warning. Skips, with a note on stderr, where the
//! `exiftool` command is absent (`apt-get install libimage-exiftool-perl`).

use std::io::Cursor;
use std::path::Path;
use std::process::Command;

use image::{ImageFormat, Rgb, RgbImage};
use inpaint_provenance::{
    DIGITAL_SOURCE_TYPE_COMPOSITE, XMP_NAMESPACE, embed_jpeg, embed_png, embed_webp, xmp_packet,
};
use serde_json::Value;

fn fields() -> Vec<(String, String)> {
    [
        ("provenance.ai_generated", "true"),
        (
            "provenance.digital_source_type",
            DIGITAL_SOURCE_TYPE_COMPOSITE,
        ),
        ("provenance.license", "CreativeML OpenRAIL-M"),
        ("provenance.job_id", "00000000-0000-0000-0000-00000000002a"),
        ("provenance.seed", "1234"),
        (
            "provenance.model_id",
            "stable-diffusion-v1-5/stable-diffusion-inpainting",
        ),
        ("provenance.weights_sha256", &"ab".repeat(32)),
        (
            "provenance.parameters",
            r#"{"steps":30,"guidance_scale":7.5}"#,
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

fn exiftool(args: &[&str], file: &Path) -> Option<String> {
    let output = Command::new("exiftool")
        .args(args)
        .arg(file)
        .output()
        .ok()?;
    Some(String::from_utf8_lossy(&output.stdout).into_owned())
}

#[test]
fn exiftool_reads_every_format() {
    if Command::new("exiftool").arg("-ver").output().is_err() {
        eprintln!("note: exiftool not found; skipping the ExifTool cross-check");
        return;
    }
    let image = RgbImage::from_fn(32, 24, |x, y| Rgb([x as u8 * 8, y as u8 * 10, 128]));
    let fields = fields();
    let xmp = xmp_packet(&fields).expect("packet");
    let dir = tempfile::tempdir().expect("temp dir");
    for (format, name) in [
        (ImageFormat::Png, "out.png"),
        (ImageFormat::Jpeg, "out.jpg"),
        (ImageFormat::WebP, "out.webp"),
    ] {
        let mut encoded = Vec::new();
        image
            .write_to(&mut Cursor::new(&mut encoded), format)
            .expect("encode");
        let annotated = match format {
            ImageFormat::Png => embed_png(&encoded, &fields, &xmp),
            ImageFormat::Jpeg => embed_jpeg(&encoded, &fields, &xmp),
            _ => embed_webp(&encoded, &fields, &xmp),
        }
        .expect("embed");
        let path = dir.path().join(name);
        std::fs::write(&path, &annotated).expect("write");

        let json = exiftool(&["-j", "-G1", "-a", "-struct"], &path).expect("exiftool runs");
        eprintln!("exiftool -j -G1 -a {name}:\n{json}");
        let tags: Value = serde_json::from_str(&json).expect("exiftool JSON");
        let tags = &tags[0];
        assert_eq!(
            tags["XMP-iptcExt:DigitalSourceType"], DIGITAL_SOURCE_TYPE_COMPOSITE,
            "{name}"
        );
        assert_eq!(
            tags["XMP-dc:Identifier"],
            "00000000-0000-0000-0000-00000000002a"
        );
        assert!(
            tags["XMP-dc:Rights"]
                .as_str()
                .is_some_and(|r| r.starts_with("CreativeML OpenRAIL-M")),
            "{name}"
        );
        // The crate's own namespace: every field, with exiftool's capitalised tag names.
        assert_eq!(tags["XMP-inpaint:Seed"], 1234, "{name}");
        assert_eq!(
            tags["XMP-inpaint:Weights_sha256"],
            "ab".repeat(32),
            "{name}"
        );
        if format != ImageFormat::Png {
            assert!(
                tags["IFD0:ImageDescription"]
                    .as_str()
                    .is_some_and(|d| d.starts_with("AI-generated image")),
                "{name}"
            );
            assert!(
                tags["IFD0:Software"]
                    .as_str()
                    .is_some_and(|s| s.contains("stable-diffusion-inpainting")),
                "{name}"
            );
            assert!(tags["IFD0:Copyright"].is_string(), "{name}");
            assert!(tags["ExifIFD:UserComment"].is_string(), "{name}");
        }
        let validate =
            exiftool(&["-validate", "-warning", "-error", "-a"], &path).expect("exiftool runs");
        eprintln!("exiftool -validate {name}:\n{validate}");
        assert!(
            validate.contains("Validate                        : OK"),
            "{name}: {validate}"
        );
    }
    assert!(XMP_NAMESPACE.ends_with('/'));
}
