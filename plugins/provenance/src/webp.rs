//! [`embed_webp`]: adds `EXIF` ([`exif_tiff`]) and `XMP ` chunks to an already-encoded WebP,
//! byte for byte, without touching its image data.
//!
//! Metadata needs the extended file format (WebP container specification, "Extended File
//! Format"): a `VP8X` chunk first, whose flags announce the `EXIF` and `XMP ` chunks and which
//! carries the canvas size. A simple file (`RIFF` + one `VP8L` or `VP8 ` chunk, what the
//! `image` crate writes) is converted: `VP8X` (canvas size read from the bitstream header, alpha
//! flag from the `VP8L` header), the image chunk unchanged, then the metadata. An extended
//! file keeps its chunks; its flags gain EXIF/XMP and the metadata chunks go at the end, after
//! the image data as the specification orders them. The `RIFF` size is rewritten and odd-sized
//! chunks get their pad byte.
//!
//! The `EXIF` chunk holds the TIFF structure itself, without JPEG's `Exif\0\0` prefix, as
//! libwebp's tools write it.

use crate::error::ProvenanceError;
use crate::exif::{ExifImage, exif_tiff};

/// `VP8X` flag: the file has an ICC profile.
pub const VP8X_ICC: u8 = 0x20;
/// `VP8X` flag: some image data has alpha.
pub const VP8X_ALPHA: u8 = 0x10;
/// `VP8X` flag: the file has an `EXIF` chunk.
pub const VP8X_EXIF: u8 = 0x08;
/// `VP8X` flag: the file has an `XMP ` chunk.
pub const VP8X_XMP: u8 = 0x04;
/// `VP8X` flag: the file is animated.
pub const VP8X_ANIMATION: u8 = 0x02;

/// Length of a `VP8X` chunk's data.
const VP8X_LEN: usize = 10;

/// One chunk of the input: its FourCC, its data, and its whole bytes (header, data, pad).
struct Chunk<'a> {
    fourcc: [u8; 4],
    data: &'a [u8],
    raw: &'a [u8],
}

/// Returns `webp` in the extended format with an `EXIF` chunk summarising `fields` (left out
/// when there are no fields) and an `XMP ` chunk holding `xmp` (left out when empty). With
/// nothing to add, the input comes back unchanged (after the same checks).
///
/// Refuses input that is not `RIFF`/`WEBP`, whose `RIFF` size disagrees with its length,
/// whose chunks run past the end, whose first chunk is not `VP8X`, `VP8L` or `VP8 ` with a
/// valid header, or which already has the kind of chunk it would add.
pub fn embed_webp(
    webp: &[u8],
    fields: &[(String, String)],
    xmp: &str,
) -> Result<Vec<u8>, ProvenanceError> {
    let chunks = read_chunks(webp)?;
    let first = chunks
        .first()
        .ok_or_else(|| bad("the file has no chunks"))?;
    let mut vp8x: [u8; VP8X_LEN] = match &first.fourcc {
        b"VP8X" => first
            .data
            .try_into()
            .map_err(|_| bad("the VP8X chunk is not 10 bytes"))?,
        b"VP8L" | b"VP8 " => vp8x_for(first)?,
        other => {
            return Err(bad(&format!(
                "the first chunk is {:?}, not VP8X, VP8L or VP8",
                String::from_utf8_lossy(other)
            )));
        }
    };
    let canvas = |bytes: &[u8]| u32::from_le_bytes([bytes[0], bytes[1], bytes[2], 0]) + 1;
    let image = ExifImage {
        size: Some((canvas(&vp8x[4..7]), canvas(&vp8x[7..10]))),
        jpeg: false,
    };
    let exif = exif_tiff(fields, image)?;
    if exif.is_none() && xmp.is_empty() {
        return Ok(webp.to_vec());
    }
    let has = |fourcc: &[u8; 4]| chunks.iter().any(|c| &c.fourcc == fourcc);
    let mut extra = Vec::new();
    if let Some(tiff) = &exif {
        if has(b"EXIF") {
            return Err(bad("it already has an EXIF chunk"));
        }
        vp8x[0] |= VP8X_EXIF;
        write_chunk(&mut extra, b"EXIF", tiff, "EXIF")?;
    }
    if !xmp.is_empty() {
        if has(b"XMP ") {
            return Err(bad("it already has an XMP chunk"));
        }
        vp8x[0] |= VP8X_XMP;
        write_chunk(&mut extra, b"XMP ", xmp.as_bytes(), "XMP packet")?;
    }

    let mut body = b"WEBP".to_vec();
    write_chunk(&mut body, b"VP8X", &vp8x, "VP8X")?;
    // A simple file's image chunk, or everything after an extended file's VP8X, unchanged.
    let kept = if &first.fourcc == b"VP8X" {
        &chunks[1..]
    } else {
        &chunks[..]
    };
    for chunk in kept {
        body.extend_from_slice(chunk.raw);
    }
    body.extend_from_slice(&extra);
    let riff_size = u32::try_from(body.len()).map_err(|_| ProvenanceError::TooLarge {
        what: "WebP file",
        len: body.len() + 8,
        max: u32::MAX as usize,
    })?;
    let mut out = Vec::with_capacity(8 + body.len());
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&riff_size.to_le_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// Checks the `RIFF` header and splits the payload into chunks.
fn read_chunks(webp: &[u8]) -> Result<Vec<Chunk<'_>>, ProvenanceError> {
    if webp.len() < 12 || &webp[..4] != b"RIFF" || &webp[8..12] != b"WEBP" {
        return Err(ProvenanceError::NotWebp);
    }
    let riff_size = u32::from_le_bytes([webp[4], webp[5], webp[6], webp[7]]) as usize;
    if riff_size.checked_add(8) != Some(webp.len()) {
        return Err(bad(&format!(
            "the RIFF size {riff_size} does not match the file length {}",
            webp.len()
        )));
    }
    let mut chunks = Vec::new();
    let mut at = 12;
    while at < webp.len() {
        let header = webp
            .get(at..at + 8)
            .ok_or_else(|| bad(&format!("the file ends inside a chunk header at {at}")))?;
        let fourcc = [header[0], header[1], header[2], header[3]];
        let size = u32::from_le_bytes([header[4], header[5], header[6], header[7]]) as usize;
        let data_end = at + 8 + size;
        let end = data_end + size % 2;
        if end > webp.len() {
            return Err(bad(&format!(
                "chunk {:?} at {at} runs past the end of the file",
                String::from_utf8_lossy(&fourcc)
            )));
        }
        chunks.push(Chunk {
            fourcc,
            data: &webp[at + 8..data_end],
            raw: &webp[at..end],
        });
        at = end;
    }
    Ok(chunks)
}

/// A `VP8X` chunk's data for a simple file whose only image chunk is `image` (`VP8L` or
/// `VP8 `): canvas size from the bitstream header, alpha flag from `VP8L`'s alpha hint.
fn vp8x_for(image: &Chunk<'_>) -> Result<[u8; VP8X_LEN], ProvenanceError> {
    let data = image.data;
    let (width, height, alpha) = if &image.fourcc == b"VP8L" {
        // Signature 0x2F, then 14 bits width - 1, 14 bits height - 1, 1 bit alpha_is_used,
        // 3 bits version (0) (WebP lossless bitstream specification, 3.1).
        if data.len() < 5 || data[0] != 0x2F {
            return Err(bad("the VP8L chunk lacks its 0x2F signature"));
        }
        let bits = u32::from_le_bytes([data[1], data[2], data[3], data[4]]);
        if bits >> 29 != 0 {
            return Err(bad("unknown VP8L version"));
        }
        (
            (bits & 0x3FFF) + 1,
            ((bits >> 14) & 0x3FFF) + 1,
            (bits >> 28) & 1 == 1,
        )
    } else {
        // Key frame: 3-byte frame tag with bit 0 clear, start code 9D 01 2A, then 14-bit width
        // and height, each with 2 bits of scale (RFC 6386, 9.1).
        if data.len() < 10 || data[0] & 1 != 0 || data[3..6] != [0x9D, 0x01, 0x2A] {
            return Err(bad("the VP8 chunk does not start with a key frame header"));
        }
        let width = u32::from(u16::from_le_bytes([data[6], data[7]]) & 0x3FFF);
        let height = u32::from(u16::from_le_bytes([data[8], data[9]]) & 0x3FFF);
        if width == 0 || height == 0 {
            return Err(bad("the VP8 frame has a zero width or height"));
        }
        (width, height, false)
    };
    // Both sides are at most 2^14 here, well within the 24 bits VP8X gives each.
    let mut vp8x = [0u8; VP8X_LEN];
    vp8x[0] = if alpha { VP8X_ALPHA } else { 0 };
    vp8x[4..7].copy_from_slice(&(width - 1).to_le_bytes()[..3]);
    vp8x[7..10].copy_from_slice(&(height - 1).to_le_bytes()[..3]);
    Ok(vp8x)
}

/// Appends a chunk (FourCC, little-endian size, data, pad byte if the size is odd).
fn write_chunk(
    out: &mut Vec<u8>,
    fourcc: &[u8; 4],
    data: &[u8],
    what: &'static str,
) -> Result<(), ProvenanceError> {
    let size = u32::try_from(data.len())
        .ok()
        .filter(|&n| n < u32::MAX)
        .ok_or(ProvenanceError::TooLarge {
            what,
            len: data.len(),
            max: u32::MAX as usize - 1,
        })?;
    out.extend_from_slice(fourcc);
    out.extend_from_slice(&size.to_le_bytes());
    out.extend_from_slice(data);
    if data.len() % 2 == 1 {
        out.push(0);
    }
    Ok(())
}

fn bad(why: &str) -> ProvenanceError {
    ProvenanceError::BadWebp(why.to_owned())
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use image::codecs::webp::{WebPDecoder, WebPEncoder};
    use image::{ImageDecoder, Rgb, RgbImage, Rgba, RgbaImage};

    use super::*;

    fn encode(image: &RgbImage) -> Vec<u8> {
        let mut webp = Vec::new();
        WebPEncoder::new_lossless(&mut webp)
            .encode(
                image.as_raw(),
                image.width(),
                image.height(),
                image::ExtendedColorType::Rgb8,
            )
            .expect("encode");
        webp
    }

    fn sample() -> (RgbImage, Vec<u8>) {
        let image = RgbImage::from_fn(23, 7, |x, y| Rgb([x as u8 * 11, y as u8 * 31, 77]));
        let webp = encode(&image);
        (image, webp)
    }

    fn fields() -> Vec<(String, String)> {
        crate::test_support::fields()
    }

    /// (FourCC, data) of every chunk, checking the RIFF size, chunk sizes and padding.
    fn chunks(webp: &[u8]) -> Vec<([u8; 4], Vec<u8>)> {
        assert_eq!(&webp[..4], b"RIFF");
        assert_eq!(&webp[8..12], b"WEBP");
        let riff = u32::from_le_bytes(webp[4..8].try_into().expect("4")) as usize;
        assert_eq!(riff + 8, webp.len(), "RIFF size");
        let mut out = Vec::new();
        let mut at = 12;
        while at < webp.len() {
            let size = u32::from_le_bytes(webp[at + 4..at + 8].try_into().expect("4")) as usize;
            out.push((
                webp[at..at + 4].try_into().expect("4"),
                webp[at + 8..at + 8 + size].to_vec(),
            ));
            if size % 2 == 1 {
                assert_eq!(webp[at + 8 + size], 0, "pad byte");
            }
            at += 8 + size + size % 2;
        }
        assert_eq!(at, webp.len());
        out
    }

    fn canvas(vp8x: &[u8]) -> (u32, u32) {
        let side = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], 0]) + 1;
        (side(&vp8x[4..7]), side(&vp8x[7..10]))
    }

    #[test]
    fn simple_lossless_becomes_extended_with_exif_and_xmp() {
        let (image, webp) = sample();
        let before = chunks(&webp);
        assert_eq!(before.len(), 1);
        assert_eq!(
            &before[0].0, b"VP8L",
            "the image crate writes a simple lossless file"
        );
        let xmp = crate::xmp_packet(&fields()).expect("packet");
        let out = embed_webp(&webp, &fields(), &xmp).expect("embed");

        let after = chunks(&out);
        let kinds: Vec<&[u8; 4]> = after.iter().map(|(k, _)| k).collect();
        assert_eq!(kinds, [b"VP8X", b"VP8L", b"EXIF", b"XMP "]);
        let vp8x = &after[0].1;
        assert_eq!(vp8x.len(), VP8X_LEN);
        assert_eq!(vp8x[0], VP8X_EXIF | VP8X_XMP);
        assert_eq!(&vp8x[1..4], &[0, 0, 0]);
        assert_eq!(canvas(vp8x), image.dimensions());
        assert_eq!(after[1], before[0], "image data unchanged");
        let described = ExifImage {
            size: Some(image.dimensions()),
            jpeg: false,
        };
        assert_eq!(
            Some(after[2].1.clone()),
            exif_tiff(&fields(), described).expect("builds")
        );
        assert_eq!(after[3].1, xmp.as_bytes());

        let decoded = image::load_from_memory(&out).expect("decodes").to_rgb8();
        assert_eq!(decoded, image);
        let mut decoder = WebPDecoder::new(Cursor::new(&out)).expect("decoder");
        assert_eq!(
            decoder.xmp_metadata().expect("reads"),
            Some(xmp.as_bytes().to_vec())
        );
        let exif = decoder.exif_metadata().expect("reads").expect("has EXIF");
        let parsed = exif::Reader::new()
            .read_raw(exif)
            .expect("kamadak-exif parses");
        assert!(
            parsed
                .get_field(exif::Tag::ImageDescription, exif::In::PRIMARY)
                .is_some()
        );
    }

    #[test]
    fn odd_sized_chunks_are_padded_and_alpha_is_kept() {
        let image = RgbaImage::from_fn(5, 3, |x, _| Rgba([1, 2, 3, x as u8 * 50]));
        let mut webp = Vec::new();
        WebPEncoder::new_lossless(&mut webp)
            .encode(image.as_raw(), 5, 3, image::ExtendedColorType::Rgba8)
            .expect("encode");
        for xmp in ["<x/>", "<x/> "] {
            let out = embed_webp(&webp, &[], xmp).expect("embed");
            let after = chunks(&out);
            assert_eq!(after[0].1[0], VP8X_ALPHA | VP8X_XMP);
            assert_eq!(after[2].1, xmp.as_bytes());
            let decoded = image::load_from_memory(&out).expect("decodes").to_rgba8();
            assert_eq!(decoded, image);
        }
    }

    #[test]
    fn an_extended_file_keeps_its_chunks_and_gains_flags() {
        let (image, webp) = sample();
        let with_xmp = embed_webp(&webp, &[], "<x/>").expect("xmp first");
        let out = embed_webp(&with_xmp, &fields(), "").expect("then EXIF");
        let after = chunks(&out);
        let kinds: Vec<&[u8; 4]> = after.iter().map(|(k, _)| k).collect();
        assert_eq!(kinds, [b"VP8X", b"VP8L", b"XMP ", b"EXIF"]);
        assert_eq!(after[0].1[0], VP8X_EXIF | VP8X_XMP);
        assert_eq!(canvas(&after[0].1), image.dimensions());
        assert_eq!(
            image::load_from_memory(&out).expect("decodes").to_rgb8(),
            image
        );
        assert!(matches!(
            embed_webp(&out, &[], "<y/>"),
            Err(ProvenanceError::BadWebp(_))
        ));
        assert!(matches!(
            embed_webp(&out, &fields(), ""),
            Err(ProvenanceError::BadWebp(_))
        ));
    }

    #[test]
    fn a_lossy_vp8_header_gives_the_canvas() {
        // A VP8 key-frame header for 300x200 (the rest of the frame is irrelevant here).
        let mut frame = vec![0x10, 0x02, 0x00, 0x9D, 0x01, 0x2A];
        frame.extend_from_slice(&300u16.to_le_bytes());
        frame.extend_from_slice(&200u16.to_le_bytes());
        frame.push(0xAB); // odd size: padded
        let mut webp = b"RIFF\0\0\0\0WEBP".to_vec();
        write_chunk(&mut webp, b"VP8 ", &frame, "VP8").expect("chunk");
        let riff = (webp.len() - 8) as u32;
        webp[4..8].copy_from_slice(&riff.to_le_bytes());
        let out = embed_webp(&webp, &fields(), "<x/>").expect("embed");
        let after = chunks(&out);
        assert_eq!(canvas(&after[0].1), (300, 200));
        assert_eq!(after[0].1[0], VP8X_EXIF | VP8X_XMP);
        assert_eq!(after[1].1, frame);
    }

    #[test]
    fn nothing_to_add_leaves_the_file_unchanged() {
        let (_, webp) = sample();
        assert_eq!(embed_webp(&webp, &[], "").expect("embed"), webp);
    }

    #[test]
    fn garbage_is_refused() {
        let (_, webp) = sample();
        let err = |bytes: &[u8]| embed_webp(bytes, &fields(), "<x/>").expect_err("refused");
        assert_eq!(err(b""), ProvenanceError::NotWebp);
        assert_eq!(err(b"RIFF\x04\0\0\0WAVE"), ProvenanceError::NotWebp);
        assert_eq!(err(&[0xFF, 0xD8, 0xFF, 0xE0]), ProvenanceError::NotWebp);
        let is_bad = |bytes: &[u8]| matches!(err(bytes), ProvenanceError::BadWebp(_));
        assert!(is_bad(&webp[..webp.len() - 1]), "RIFF size mismatch");
        assert!(is_bad(b"RIFF\x04\0\0\0WEBP"), "no chunks");
        let mut truncated = webp[..20].to_vec();
        truncated[4..8].copy_from_slice(&12u32.to_le_bytes());
        assert!(is_bad(&truncated), "chunk runs past the end");
        let mut unknown = webp.clone();
        unknown[12..16].copy_from_slice(b"ALPH");
        assert!(is_bad(&unknown), "first chunk not an image");
        let mut no_signature = webp.clone();
        no_signature[20] = 0x2E;
        assert!(is_bad(&no_signature), "VP8L signature");
        assert!(
            is_bad(b"RIFF\x0e\0\0\0WEBPVP8X\x02\0\0\0\0\0"),
            "VP8X of 2 bytes"
        );
    }
}
