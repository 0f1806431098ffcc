//! [`embed_jpeg`]: inserts an EXIF `APP1` segment ([`exif_tiff`]) and an XMP `APP1` segment
//! into an already-encoded JPEG, byte for byte, without touching its entropy-coded data.
//!
//! The segments go right after `SOI`, or after the `JFIF` (and `JFXX`) `APP0` segments that
//! open the file, which JFIF requires to come first; EXIF readers accept `APP1` there (it is
//! where cameras and exiftool put it). The XMP segment follows Adobe's XMP specification part 3
//! (1.1.3): namespace `http://ns.adobe.com/xap/1.0/` and NUL, then the packet.
//!
//! **Size.** A marker segment holds at most 65,533 bytes after its length field, so the XMP
//! packet may be at most 65,504 bytes. Larger packets are an error
//! ([`ProvenanceError::TooLarge`]) rather than Extended XMP: the stage's packet stays far
//! below (a few KB; even a 4,096-character prompt and negative prompt, escaped, stay near
//! 40 KB), and Extended XMP (split by GUID across segments) is read by fewer tools.

use crate::error::ProvenanceError;
use crate::exif::{ExifImage, exif_tiff};

/// What opens an EXIF `APP1` segment's payload.
pub const EXIF_HEADER: &[u8] = b"Exif\0\0";
/// What opens an XMP `APP1` segment's payload.
pub const XMP_JPEG_HEADER: &[u8] = b"http://ns.adobe.com/xap/1.0/\0";
/// Most bytes a marker segment carries after its two length bytes.
pub const MAX_SEGMENT_PAYLOAD: usize = 65_533;

/// `SOI`.
const SOI: [u8; 2] = [0xFF, 0xD8];
/// `APP0`, `APP1`, start of scan, end of image.
const APP0: u8 = 0xE0;
const APP1: u8 = 0xE1;
const SOS: u8 = 0xDA;
const EOI: u8 = 0xD9;

/// Returns `jpeg` with an EXIF `APP1` segment summarising `fields` (left out when there are no
/// fields) and an XMP `APP1` segment holding `xmp` (left out when empty), inserted after `SOI`
/// and any leading `JFIF`/`JFXX` `APP0` segments. Everything else is copied unchanged.
///
/// Walks the marker segments up to the first start of scan and refuses a file whose segments
/// are malformed or truncated, that has no scan, or that already has the kind of segment it
/// would add (two EXIF or XMP blocks would contradict each other).
pub fn embed_jpeg(
    jpeg: &[u8],
    fields: &[(String, String)],
    xmp: &str,
) -> Result<Vec<u8>, ProvenanceError> {
    let layout = walk(jpeg)?;
    let mut segments = Vec::new();
    let image = ExifImage {
        size: layout.size,
        jpeg: true,
    };
    if let Some(tiff) = exif_tiff(fields, image)? {
        if layout.has_exif {
            return Err(bad("it already has an EXIF APP1 segment"));
        }
        write_app1(&mut segments, EXIF_HEADER, &tiff, "EXIF")?;
    }
    if !xmp.is_empty() {
        if layout.has_xmp {
            return Err(bad("it already has an XMP APP1 segment"));
        }
        write_app1(&mut segments, XMP_JPEG_HEADER, xmp.as_bytes(), "XMP packet")?;
    }
    let mut out = Vec::with_capacity(jpeg.len() + segments.len());
    out.extend_from_slice(&jpeg[..layout.insert_at]);
    out.extend_from_slice(&segments);
    out.extend_from_slice(&jpeg[layout.insert_at..]);
    Ok(out)
}

/// What [`walk`] learned about the header segments.
struct Layout {
    /// Offset just past `SOI` and the leading `JFIF`/`JFXX` `APP0` segments.
    insert_at: usize,
    has_exif: bool,
    has_xmp: bool,
    /// Width and height from the start-of-frame segment (`None` when the height is deferred
    /// to a `DNL` segment, i.e. 0).
    size: Option<(u32, u32)>,
}

/// Checks `SOI` and every marker segment up to the first `SOS`.
fn walk(jpeg: &[u8]) -> Result<Layout, ProvenanceError> {
    if jpeg.get(..3) != Some(&[SOI[0], SOI[1], 0xFF][..]) {
        return Err(ProvenanceError::NotJpeg);
    }
    let mut layout = Layout {
        insert_at: SOI.len(),
        has_exif: false,
        has_xmp: false,
        size: None,
    };
    let mut leading_app0 = true;
    let mut at = SOI.len();
    loop {
        if jpeg.get(at) != Some(&0xFF) {
            return Err(bad(&format!("no marker at offset {at}")));
        }
        // Any number of 0xFF fill bytes may precede a marker.
        while jpeg.get(at + 1) == Some(&0xFF) {
            at += 1;
        }
        let marker = *jpeg
            .get(at + 1)
            .ok_or_else(|| bad("the file ends before the first scan"))?;
        match marker {
            SOS => return Ok(layout),
            EOI => return Err(bad("end of image before any scan")),
            0x00 | 0x01 | 0xD0..=0xD7 => {
                return Err(bad(&format!(
                    "unexpected marker FF {marker:02X} before the first scan"
                )));
            }
            _ => {}
        }
        let length = jpeg
            .get(at + 2..at + 4)
            .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
            .ok_or_else(|| bad("the file ends inside a segment length"))?;
        let end = at + 2 + length;
        if length < 2 || end > jpeg.len() {
            return Err(bad(&format!(
                "segment FF {marker:02X} at offset {at} has a bad length {length}"
            )));
        }
        let payload = &jpeg[at + 4..end];
        let is_jfif =
            marker == APP0 && (payload.starts_with(b"JFIF\0") || payload.starts_with(b"JFXX\0"));
        if leading_app0 && is_jfif {
            layout.insert_at = end;
        } else {
            leading_app0 = false;
        }
        if marker == APP1 {
            layout.has_exif |= payload.starts_with(EXIF_HEADER);
            layout.has_xmp |= payload.starts_with(XMP_JPEG_HEADER);
        }
        // SOF0 to SOF15, except DHT (C4), JPG (C8) and DAC (CC): precision, height, width.
        if matches!(marker, 0xC0..=0xCF) && !matches!(marker, 0xC4 | 0xC8 | 0xCC) {
            let field = |i: usize| {
                payload
                    .get(i..i + 2)
                    .map(|b| u16::from_be_bytes([b[0], b[1]]))
            };
            layout.size = match (field(3), field(1)) {
                (Some(width), Some(height)) if width > 0 && height > 0 => {
                    Some((u32::from(width), u32::from(height)))
                }
                _ => None,
            };
        }
        at = end;
    }
}

/// Appends an `APP1` segment with `header` + `body` as payload.
fn write_app1(
    out: &mut Vec<u8>,
    header: &[u8],
    body: &[u8],
    what: &'static str,
) -> Result<(), ProvenanceError> {
    let payload_len = header.len() + body.len();
    let length = u16::try_from(payload_len + 2)
        .ok()
        .filter(|_| payload_len <= MAX_SEGMENT_PAYLOAD)
        .ok_or(ProvenanceError::TooLarge {
            what,
            len: body.len(),
            max: MAX_SEGMENT_PAYLOAD - header.len(),
        })?;
    out.extend_from_slice(&[0xFF, APP1]);
    out.extend_from_slice(&length.to_be_bytes());
    out.extend_from_slice(header);
    out.extend_from_slice(body);
    Ok(())
}

fn bad(why: &str) -> ProvenanceError {
    ProvenanceError::BadJpeg(why.to_owned())
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use image::codecs::jpeg::JpegEncoder;
    use image::{ImageDecoder, Rgb, RgbImage};

    use super::*;

    /// (marker, payload) of every segment before the scan; checks that lengths chain.
    fn segments(jpeg: &[u8]) -> Vec<(u8, Vec<u8>)> {
        assert_eq!(&jpeg[..2], &SOI);
        let mut out = Vec::new();
        let mut at = 2;
        loop {
            assert_eq!(jpeg[at], 0xFF, "marker at {at}");
            let marker = jpeg[at + 1];
            if marker == SOS {
                return out;
            }
            let length = usize::from(u16::from_be_bytes([jpeg[at + 2], jpeg[at + 3]]));
            out.push((marker, jpeg[at + 4..at + 2 + length].to_vec()));
            at += 2 + length;
        }
    }

    fn sample() -> (RgbImage, Vec<u8>) {
        let image = RgbImage::from_fn(19, 11, |x, y| Rgb([x as u8 * 13, y as u8 * 23, 90]));
        let mut jpeg = Vec::new();
        JpegEncoder::new_with_quality(&mut jpeg, 90)
            .encode_image(&image)
            .expect("encode");
        (image, jpeg)
    }

    fn fields() -> Vec<(String, String)> {
        crate::test_support::fields()
    }

    fn decode(jpeg: &[u8]) -> image::codecs::jpeg::JpegDecoder<Cursor<&[u8]>> {
        image::codecs::jpeg::JpegDecoder::new(Cursor::new(jpeg)).expect("decoder")
    }

    #[test]
    fn segments_follow_jfif_and_the_pixels_do_not_change() {
        let (_, jpeg) = sample();
        let xmp = crate::xmp_packet(&fields()).expect("packet");
        let out = embed_jpeg(&jpeg, &fields(), &xmp).expect("embed");

        let before = segments(&jpeg);
        let after = segments(&out);
        assert_eq!(before[0].0, APP0, "the encoder writes JFIF first");
        assert!(before[0].1.starts_with(b"JFIF\0"));
        assert_eq!(after[0], before[0]);
        assert_eq!(after[1].0, APP1);
        assert!(after[1].1.starts_with(EXIF_HEADER));
        assert_eq!(after[2].0, APP1);
        assert_eq!(&after[2].1[..XMP_JPEG_HEADER.len()], XMP_JPEG_HEADER);
        assert_eq!(&after[2].1[XMP_JPEG_HEADER.len()..], xmp.as_bytes());
        assert_eq!(&after[3..], &before[1..]);
        // Only the two segments were added; the rest is byte-identical.
        let added = 4 + after[1].1.len() + 4 + after[2].1.len();
        assert_eq!(out.len(), jpeg.len() + added);
        assert_eq!(
            &out[2 + 4 + before[0].1.len() + added..],
            &jpeg[2 + 4 + before[0].1.len()..]
        );

        let original = image::load_from_memory(&jpeg).expect("decodes").to_rgb8();
        let decoded = image::load_from_memory(&out).expect("decodes").to_rgb8();
        assert_eq!(decoded, original);
    }

    #[test]
    fn the_image_crate_reads_back_exif_and_xmp() {
        let (_, jpeg) = sample();
        let xmp = crate::xmp_packet(&fields()).expect("packet");
        let out = embed_jpeg(&jpeg, &fields(), &xmp).expect("embed");
        let mut decoder = decode(&out);
        let exif = decoder.exif_metadata().expect("reads").expect("has EXIF");
        let size = Some((19, 11));
        let expected = exif_tiff(&fields(), ExifImage { size, jpeg: true }).expect("builds");
        assert_eq!(Some(exif), expected);
        let read_xmp = decoder.xmp_metadata().expect("reads").expect("has XMP");
        assert_eq!(read_xmp, xmp.as_bytes());
        // And an independent EXIF parser reads the block as found in the file.
        let found = exif::Reader::new()
            .read_from_container(&mut Cursor::new(&out))
            .expect("kamadak-exif reads the JPEG");
        let software = found
            .get_field(exif::Tag::Software, exif::In::PRIMARY)
            .expect("Software")
            .display_value()
            .to_string();
        assert!(software.contains("inpaint-worker"), "{software}");
    }

    #[test]
    fn nothing_to_add_leaves_the_file_unchanged_and_parts_are_optional() {
        let (_, jpeg) = sample();
        assert_eq!(embed_jpeg(&jpeg, &[], "").expect("embed"), jpeg);
        let only_xmp = embed_jpeg(&jpeg, &[], "<x/>").expect("embed");
        assert_eq!(segments(&only_xmp).len(), segments(&jpeg).len() + 1);
        let mut decoder = decode(&only_xmp);
        assert_eq!(decoder.exif_metadata().expect("reads"), None);
        let only_exif = embed_jpeg(&jpeg, &fields(), "").expect("embed");
        assert_eq!(decode(&only_exif).xmp_metadata().expect("reads"), None);
    }

    #[test]
    fn no_jfif_inserts_after_soi() {
        let (_, jpeg) = sample();
        let jfif_len = 2 + usize::from(u16::from_be_bytes([jpeg[4], jpeg[5]]));
        let mut bare = SOI.to_vec();
        bare.extend_from_slice(&jpeg[2 + jfif_len..]);
        let out = embed_jpeg(&bare, &fields(), "<x/>").expect("embed");
        let after = segments(&out);
        assert!(after[0].1.starts_with(EXIF_HEADER));
        assert!(after[1].1.starts_with(XMP_JPEG_HEADER));
        assert!(image::load_from_memory(&out).is_ok());
    }

    #[test]
    fn oversized_xmp_is_refused_and_the_largest_fits() {
        let (_, jpeg) = sample();
        let max = MAX_SEGMENT_PAYLOAD - XMP_JPEG_HEADER.len();
        let out = embed_jpeg(&jpeg, &[], &"x".repeat(max)).expect("largest packet fits");
        let jfif_end = 2 + 2 + usize::from(u16::from_be_bytes([jpeg[4], jpeg[5]]));
        assert_eq!(&out[jfif_end..jfif_end + 4], &[0xFF, APP1, 0xFF, 0xFF]);
        assert_eq!(
            embed_jpeg(&jpeg, &[], &"x".repeat(max + 1)),
            Err(ProvenanceError::TooLarge {
                what: "XMP packet",
                len: max + 1,
                max
            })
        );
    }

    #[test]
    fn garbage_and_duplicates_are_refused() {
        let (_, jpeg) = sample();
        assert_eq!(embed_jpeg(b"", &[], ""), Err(ProvenanceError::NotJpeg));
        assert_eq!(
            embed_jpeg(b"\x89PNG\r\n\x1a\n", &[], ""),
            Err(ProvenanceError::NotJpeg)
        );
        let is_bad = |bytes: &[u8]| {
            matches!(
                embed_jpeg(bytes, &[], "<x/>"),
                Err(ProvenanceError::BadJpeg(_))
            )
        };
        assert!(is_bad(&jpeg[..30]), "truncated inside the header segments");
        assert!(is_bad(&[0xFF, 0xD8, 0xFF, 0xD9]), "no scan");
        let mut bad_length = jpeg.clone();
        bad_length[4..6].copy_from_slice(&[0, 1]);
        assert!(is_bad(&bad_length));
        let with_xmp = embed_jpeg(&jpeg, &[], "<x/>").expect("embed");
        assert!(is_bad(&with_xmp), "a second XMP segment");
        assert!(
            embed_jpeg(&with_xmp, &fields(), "").is_ok(),
            "EXIF can still be added"
        );
    }
}
