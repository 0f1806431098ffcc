//! [`exif_tiff`]: the small EXIF block (a little-endian TIFF structure) that JPEG and WebP
//! outputs carry next to their XMP packet, so that EXIF-only tools also see that the image is
//! AI-generated, by what, under which licence.
//!
//! EXIF is a summary, not the record: its text tags are 7-bit ASCII (anything else becomes
//! `?`) and it leaves out the prompt. The full field set, verbatim, is in the XMP packet
//! ([`xmp_packet`](crate::xmp_packet)).
//!
//! What it holds:
//! - IFD0 `ImageDescription` (0x010E): "AI-generated image ..." with the IPTC digital source
//!   type;
//! - IFD0 `Software` (0x0131): [`creator_tool`] (worker, version, model id);
//! - IFD0 `Copyright` (0x8298): the licence and where its use restrictions are;
//! - Exif IFD `UserComment` (0x9286, ASCII): `key=value` pairs for the job id, seed, model id,
//!   weights hash and parameters that the fields carry;
//! - the tags EXIF 2.32 requires of a primary image, so that `exiftool -validate` passes:
//!   `XResolution`/`YResolution` 72, `ResolutionUnit` inches, `ExifVersion` 0232,
//!   `FlashpixVersion` 0100, `ColorSpace` sRGB, `PixelXDimension`/`PixelYDimension` (when the
//!   size is known) and, for JPEG (YCbCr data), `YCbCrPositioning` centred and
//!   `ComponentsConfiguration` Y Cb Cr.

use crate::error::ProvenanceError;
use crate::stage::{LICENCE, LICENCE_RESTRICTIONS, creator_tool, field};

/// IFD0 `ImageDescription`.
pub const TAG_IMAGE_DESCRIPTION: u16 = 0x010E;
/// IFD0 `XResolution`.
pub const TAG_X_RESOLUTION: u16 = 0x011A;
/// IFD0 `YResolution`.
pub const TAG_Y_RESOLUTION: u16 = 0x011B;
/// IFD0 `ResolutionUnit`.
pub const TAG_RESOLUTION_UNIT: u16 = 0x0128;
/// IFD0 `Software`.
pub const TAG_SOFTWARE: u16 = 0x0131;
/// IFD0 `YCbCrPositioning`.
pub const TAG_YCBCR_POSITIONING: u16 = 0x0213;
/// IFD0 `Copyright`.
pub const TAG_COPYRIGHT: u16 = 0x8298;
/// IFD0 pointer to the Exif IFD.
pub const TAG_EXIF_IFD: u16 = 0x8769;
/// Exif IFD `ExifVersion`.
pub const TAG_EXIF_VERSION: u16 = 0x9000;
/// Exif IFD `ComponentsConfiguration`.
pub const TAG_COMPONENTS_CONFIGURATION: u16 = 0x9101;
/// Exif IFD `UserComment`.
pub const TAG_USER_COMMENT: u16 = 0x9286;
/// Exif IFD `FlashpixVersion`.
pub const TAG_FLASHPIX_VERSION: u16 = 0xA000;
/// Exif IFD `ColorSpace`.
pub const TAG_COLOR_SPACE: u16 = 0xA001;
/// Exif IFD `PixelXDimension`.
pub const TAG_PIXEL_X_DIMENSION: u16 = 0xA002;
/// Exif IFD `PixelYDimension`.
pub const TAG_PIXEL_Y_DIMENSION: u16 = 0xA003;

/// What the EXIF block says about the image it sits in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ExifImage {
    /// Width and height in pixels, when the container's header gave them.
    pub size: Option<(u32, u32)>,
    /// The image data is YCbCr in JPEG (adds `YCbCrPositioning` and `ComponentsConfiguration`,
    /// which describe only that).
    pub jpeg: bool,
}
/// The fields (after `provenance.`) that `UserComment` lists, in order.
const USER_COMMENT_FIELDS: [&str; 5] =
    ["job_id", "seed", "model_id", "weights_sha256", "parameters"];

/// One IFD entry's value, of the TIFF types this block uses.
enum Value {
    /// Type 2: NUL-terminated 7-bit ASCII (the NUL is added on writing).
    Ascii(Vec<u8>),
    /// Type 3: one unsigned 16-bit integer.
    Short(u16),
    /// Type 4: one unsigned 32-bit integer.
    Long(u32),
    /// Type 5: one unsigned fraction.
    Rational(u32, u32),
    /// Type 7: raw bytes.
    Undefined(Vec<u8>),
}

impl Value {
    /// TIFF type code, count (of values, not bytes), and the value's bytes.
    fn encode(&self) -> (u16, usize, Vec<u8>) {
        match self {
            Value::Ascii(text) => {
                let mut bytes = text.clone();
                bytes.push(0);
                (2, bytes.len(), bytes)
            }
            Value::Short(n) => (3, 1, n.to_le_bytes().to_vec()),
            Value::Long(n) => (4, 1, n.to_le_bytes().to_vec()),
            Value::Rational(numerator, denominator) => {
                let mut bytes = numerator.to_le_bytes().to_vec();
                bytes.extend_from_slice(&denominator.to_le_bytes());
                (5, 1, bytes)
            }
            Value::Undefined(bytes) => (7, bytes.len(), bytes.clone()),
        }
    }
}

/// The EXIF block (TIFF header and IFDs, without JPEG's `Exif\0\0` prefix) summarising the
/// provenance `fields` for an image described by `image`; `None` when there are no fields.
pub fn exif_tiff(
    fields: &[(String, String)],
    image: ExifImage,
) -> Result<Option<Vec<u8>>, ProvenanceError> {
    if fields.is_empty() {
        return Ok(None);
    }
    let description = match field(fields, "digital_source_type") {
        Some(source) => format!(
            "AI-generated image: made with a trained model (IPTC digital source type {source})."
        ),
        None => "AI-generated image: made with a trained model.".to_owned(),
    };
    let comment: Vec<String> = USER_COMMENT_FIELDS
        .iter()
        .filter_map(|name| field(fields, name).map(|value| format!("{name}={value}")))
        .collect();
    // Character code "ASCII" padded to 8 bytes, then the text (EXIF 2.32, 4.6.5).
    let mut user_comment = b"ASCII\0\0\0".to_vec();
    user_comment.extend(ascii(&comment.join("; ")));

    let mut exif_ifd = vec![
        (TAG_EXIF_VERSION, Value::Undefined(b"0232".to_vec())),
        (TAG_USER_COMMENT, Value::Undefined(user_comment)),
        (TAG_FLASHPIX_VERSION, Value::Undefined(b"0100".to_vec())),
        (TAG_COLOR_SPACE, Value::Short(1)), // sRGB
    ];
    if let Some((width, height)) = image.size {
        exif_ifd.push((TAG_PIXEL_X_DIMENSION, Value::Long(width)));
        exif_ifd.push((TAG_PIXEL_Y_DIMENSION, Value::Long(height)));
    }
    let mut ifd0 = vec![
        (TAG_IMAGE_DESCRIPTION, Value::Ascii(ascii(&description))),
        // 72 dpi: EXIF's default, i.e. no real print size.
        (TAG_X_RESOLUTION, Value::Rational(72, 1)),
        (TAG_Y_RESOLUTION, Value::Rational(72, 1)),
        (TAG_RESOLUTION_UNIT, Value::Short(2)), // inches
        (TAG_SOFTWARE, Value::Ascii(ascii(&creator_tool(fields)))),
        (
            TAG_COPYRIGHT,
            Value::Ascii(ascii(&format!("{LICENCE}. {LICENCE_RESTRICTIONS}."))),
        ),
    ];
    if image.jpeg {
        ifd0.push((TAG_YCBCR_POSITIONING, Value::Short(1))); // centred
        exif_ifd.push((
            TAG_COMPONENTS_CONFIGURATION,
            Value::Undefined(vec![1, 2, 3, 0]),
        ));
    }
    // Placeholder: the offset is only known once IFD0's size is.
    ifd0.push((TAG_EXIF_IFD, Value::Long(0)));
    const HEADER_LEN: usize = 8;
    let exif_ifd_offset = to_u32(HEADER_LEN + ifd_len(&ifd0))?;
    if let Some(entry) = ifd0.last_mut() {
        entry.1 = Value::Long(exif_ifd_offset);
    }

    // "II", 42, offset of IFD0.
    let mut tiff = vec![b'I', b'I', 42, 0];
    tiff.extend_from_slice(&to_u32(HEADER_LEN)?.to_le_bytes());
    write_ifd(&mut tiff, &ifd0)?;
    write_ifd(&mut tiff, &exif_ifd)?;
    Ok(Some(tiff))
}

/// `text` as 7-bit printable ASCII: other characters (line breaks included) become `?` so the
/// tag stays valid for strict readers.
fn ascii(text: &str) -> Vec<u8> {
    text.chars()
        .map(|c| match c {
            ' '..='~' => c as u8,
            _ => b'?',
        })
        .collect()
}

/// Bytes an IFD with `entries` takes, values stored outside it included (each padded to an
/// even length, as TIFF wants offsets word-aligned).
fn ifd_len(entries: &[(u16, Value)]) -> usize {
    2 + 12 * entries.len()
        + 4
        + entries
            .iter()
            .map(|(_, value)| {
                let len = value.encode().2.len();
                if len > 4 { len + len % 2 } else { 0 }
            })
            .sum::<usize>()
}

/// Appends an IFD (entries sorted by tag, as TIFF requires; no next IFD) and its out-of-line
/// values to `tiff`, whose length so far is the IFD's offset.
fn write_ifd(tiff: &mut Vec<u8>, entries: &[(u16, Value)]) -> Result<(), ProvenanceError> {
    let count = u16::try_from(entries.len()).map_err(|_| too_large(entries.len()))?;
    let mut sorted: Vec<&(u16, Value)> = entries.iter().collect();
    sorted.sort_by_key(|(tag, _)| *tag);
    let mut data_at = tiff.len() + 2 + 12 * entries.len() + 4;
    let mut data = Vec::new();
    tiff.extend_from_slice(&count.to_le_bytes());
    for (tag, value) in sorted {
        let (kind, count, bytes) = value.encode();
        tiff.extend_from_slice(&tag.to_le_bytes());
        tiff.extend_from_slice(&kind.to_le_bytes());
        tiff.extend_from_slice(&to_u32(count)?.to_le_bytes());
        if bytes.len() <= 4 {
            // Values of up to four bytes sit in the entry, left-aligned.
            let mut inline = [0u8; 4];
            inline[..bytes.len()].copy_from_slice(&bytes);
            tiff.extend_from_slice(&inline);
        } else {
            tiff.extend_from_slice(&to_u32(data_at)?.to_le_bytes());
            data.extend_from_slice(&bytes);
            if bytes.len() % 2 == 1 {
                data.push(0);
            }
            data_at += bytes.len() + bytes.len() % 2;
        }
    }
    tiff.extend_from_slice(&0u32.to_le_bytes());
    tiff.extend_from_slice(&data);
    Ok(())
}

/// `n` as a TIFF offset or count.
fn to_u32(n: usize) -> Result<u32, ProvenanceError> {
    u32::try_from(n).map_err(|_| too_large(n))
}

fn too_large(len: usize) -> ProvenanceError {
    ProvenanceError::TooLarge {
        what: "EXIF",
        len,
        max: u32::MAX as usize,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields() -> Vec<(String, String)> {
        crate::test_support::fields()
    }

    fn jpeg_image() -> ExifImage {
        ExifImage {
            size: Some((640, 480)),
            jpeg: true,
        }
    }

    /// Reads `tiff` with kamadak-exif, an independent parser: (tag number, IFD, display value).
    fn parse(tiff: &[u8]) -> Vec<(u16, exif::In, exif::Value)> {
        let exif = exif::Reader::new()
            .read_raw(tiff.to_vec())
            .expect("kamadak-exif parses the block");
        exif.fields()
            .map(|f| (f.tag.number(), f.ifd_num, f.value.clone()))
            .collect()
    }

    fn ascii_of(value: &exif::Value) -> String {
        match value {
            exif::Value::Ascii(parts) => {
                assert_eq!(parts.len(), 1);
                String::from_utf8(parts[0].clone()).expect("ASCII")
            }
            other => panic!("not ASCII: {other:?}"),
        }
    }

    #[test]
    fn block_parses_with_the_summary_tags() {
        let tiff = exif_tiff(&fields(), jpeg_image())
            .expect("builds")
            .expect("fields given");
        assert_eq!(&tiff[..8], b"II*\0\x08\0\0\0");
        let parsed = parse(&tiff);
        let get = |tag: u16| {
            parsed
                .iter()
                .find(|(t, _, _)| *t == tag)
                .unwrap_or_else(|| panic!("tag {tag:#06x}"))
        };
        let description = ascii_of(&get(TAG_IMAGE_DESCRIPTION).2);
        assert!(
            description.starts_with("AI-generated image"),
            "{description}"
        );
        assert!(description.contains(crate::DIGITAL_SOURCE_TYPE_COMPOSITE));
        let software = ascii_of(&get(TAG_SOFTWARE).2);
        assert_eq!(
            software,
            format!(
                "inpaint-worker {}; model sd-inpainting ?",
                env!("CARGO_PKG_VERSION")
            )
        );
        let copyright = ascii_of(&get(TAG_COPYRIGHT).2);
        assert!(copyright.starts_with(LICENCE) && copyright.contains("Attachment A"));
        let (_, ifd, version) = get(TAG_EXIF_VERSION);
        assert_eq!(*ifd, exif::In::PRIMARY);
        assert!(matches!(version, exif::Value::Undefined(v, _) if v == b"0232"));
        let exif::Value::Undefined(comment, _) = &get(TAG_USER_COMMENT).2 else {
            panic!("UserComment is UNDEFINED");
        };
        let comment = std::str::from_utf8(comment).expect("ASCII");
        assert_eq!(
            comment,
            "ASCII\0\0\0job_id=4f1c-job; seed=1234; model_id=sd-inpainting ?; parameters={\"steps\":30}"
        );
        assert!(!String::from_utf8_lossy(&tiff).contains("secret"));
    }

    #[test]
    fn every_text_is_printable_ascii_and_offsets_are_even() {
        let mut fields = fields();
        fields.push(("provenance.weights_sha256".into(), "ab".repeat(32)));
        fields[5].1 = "line\nbreak\0é".into();
        let tiff = exif_tiff(&fields, jpeg_image())
            .expect("builds")
            .expect("fields given");
        let parsed = parse(&tiff);
        for (tag, _, value) in &parsed {
            if let exif::Value::Ascii(parts) = value {
                assert!(
                    parts[0].iter().all(|b| (0x20..0x7F).contains(b)),
                    "{tag:#x}"
                );
            }
        }
        assert!(
            parsed
                .iter()
                .any(|(_, _, v)| ascii_of_opt(v).is_some_and(|s| s.ends_with("model line?break??")))
        );
        // Every out-of-line value offset is word-aligned.
        let count = u16::from_le_bytes([tiff[8], tiff[9]]) as usize;
        for i in 0..count {
            let entry = &tiff[10 + 12 * i..22 + 12 * i];
            let len = u32::from_le_bytes(entry[4..8].try_into().expect("4")) as usize;
            if len > 4 {
                assert_eq!(
                    u32::from_le_bytes(entry[8..12].try_into().expect("4")) % 2,
                    0
                );
            }
        }
    }

    fn ascii_of_opt(value: &exif::Value) -> Option<String> {
        match value {
            exif::Value::Ascii(parts) => String::from_utf8(parts[0].clone()).ok(),
            _ => None,
        }
    }

    #[test]
    fn required_tags_follow_the_image() {
        let tags = |image| -> Vec<(u16, exif::In)> {
            let tiff = exif_tiff(&fields(), image)
                .expect("builds")
                .expect("fields");
            parse(&tiff)
                .into_iter()
                .map(|(t, ifd, _)| (t, ifd))
                .collect()
        };
        let jpeg = tags(jpeg_image());
        for tag in [
            TAG_X_RESOLUTION,
            TAG_Y_RESOLUTION,
            TAG_RESOLUTION_UNIT,
            TAG_YCBCR_POSITIONING,
            TAG_COMPONENTS_CONFIGURATION,
            TAG_FLASHPIX_VERSION,
            TAG_COLOR_SPACE,
            TAG_PIXEL_X_DIMENSION,
            TAG_PIXEL_Y_DIMENSION,
        ] {
            assert!(jpeg.iter().any(|(t, _)| *t == tag), "{tag:#06x}");
        }
        let tiff = exif_tiff(&fields(), jpeg_image())
            .expect("builds")
            .expect("fields");
        let parsed = exif::Reader::new().read_raw(tiff).expect("parses");
        let uint = |tag| {
            parsed
                .get_field(tag, exif::In::PRIMARY)
                .and_then(|f| f.value.get_uint(0))
        };
        assert_eq!(uint(exif::Tag::PixelXDimension), Some(640));
        assert_eq!(uint(exif::Tag::PixelYDimension), Some(480));
        assert_eq!(uint(exif::Tag::ColorSpace), Some(1));
        let webp = tags(ExifImage {
            size: None,
            jpeg: false,
        });
        for tag in [
            TAG_YCBCR_POSITIONING,
            TAG_COMPONENTS_CONFIGURATION,
            TAG_PIXEL_X_DIMENSION,
        ] {
            assert!(!webp.iter().any(|(t, _)| *t == tag), "{tag:#06x}");
        }
        assert_eq!(jpeg.len(), webp.len() + 4);
    }

    #[test]
    fn no_fields_no_block() {
        assert_eq!(exif_tiff(&[], jpeg_image()), Ok(None));
    }
}
