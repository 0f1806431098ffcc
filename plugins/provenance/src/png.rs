//! [`embed_png`]: inserts `iTXt` text chunks (and an XMP packet) into an already-encoded PNG,
//! byte for byte, without decoding or re-encoding its pixels; and the PNG chunk [`crc32`].
//!
//! The chunks go right after `IHDR`, so readers that stop at the first `IDAT` still see them.
//! Each is an uncompressed `iTXt` (compression flag 0, empty language tag and translated
//! keyword) holding UTF-8 text (PNG specification, third edition, 11.3.3.4).

use crate::error::ProvenanceError;

/// The PNG file signature.
const SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', b'\r', b'\n', 0x1a, b'\n'];
/// Length of the `IHDR` chunk's data.
const IHDR_LEN: usize = 13;
/// Longest chunk data a PNG may hold.
const MAX_CHUNK_LEN: usize = (1 << 31) - 1;
/// The `iTXt` keyword under which Adobe's XMP specification (part 3) stores the packet in PNG.
pub const XMP_KEYWORD: &str = "XML:com.adobe.xmp";

/// CRC-32 as PNG computes it (ISO 3309 / ITU-T V.42, reflected polynomial `0xEDB88320`) over
/// `bytes`. For a chunk, `bytes` is its type followed by its data.
pub fn crc32(bytes: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut table = [0u32; 256];
        let mut n = 0;
        while n < 256 {
            let mut c = n as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 == 1 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
                k += 1;
            }
            table[n] = c;
            n += 1;
        }
        table
    };
    let mut c = 0xFFFF_FFFFu32;
    for &b in bytes {
        c = TABLE[((c ^ u32::from(b)) & 0xFF) as usize] ^ (c >> 8);
    }
    c ^ 0xFFFF_FFFF
}

/// Returns `png` with one `iTXt` chunk per `(keyword, text)` field, in order, and then one
/// `iTXt` chunk `XML:com.adobe.xmp` holding `xmp` (left out when `xmp` is empty), inserted right
/// after the `IHDR` chunk. Everything else is copied unchanged.
///
/// Checks the signature and the `IHDR` chunk (type, length 13, non-zero size, CRC); it does not
/// walk the rest of the file. Keywords must be 1 to 79 printable Latin-1 characters without
/// leading, trailing or consecutive spaces; texts are UTF-8 and must not contain NUL.
pub fn embed_png(
    png: &[u8],
    fields: &[(String, String)],
    xmp: &str,
) -> Result<Vec<u8>, ProvenanceError> {
    let header_end = check_header(png)?;
    let mut chunks = Vec::new();
    for (keyword, text) in fields {
        write_itxt(&mut chunks, keyword, text)?;
    }
    if !xmp.is_empty() {
        write_itxt(&mut chunks, XMP_KEYWORD, xmp)?;
    }
    let mut out = Vec::with_capacity(png.len() + chunks.len());
    out.extend_from_slice(&png[..header_end]);
    out.extend_from_slice(&chunks);
    out.extend_from_slice(&png[header_end..]);
    Ok(out)
}

/// Validates the signature and the `IHDR` chunk; returns the offset just past `IHDR`.
fn check_header(png: &[u8]) -> Result<usize, ProvenanceError> {
    if png.get(..SIGNATURE.len()) != Some(&SIGNATURE[..]) {
        return Err(ProvenanceError::NotPng);
    }
    let bad = |why: &str| ProvenanceError::BadHeader(why.to_owned());
    let start = SIGNATURE.len();
    let end = start + 4 + 4 + IHDR_LEN + 4;
    let chunk = png
        .get(start..end)
        .ok_or_else(|| bad("file ends inside IHDR"))?;
    let (length, rest) = chunk.split_at(4);
    let (kind, rest) = rest.split_at(4);
    let (data, crc) = rest.split_at(IHDR_LEN);
    if kind != b"IHDR" {
        return Err(bad("the first chunk is not IHDR"));
    }
    if length != (IHDR_LEN as u32).to_be_bytes() {
        return Err(bad("IHDR length is not 13"));
    }
    if data[..4] == [0; 4] || data[4..8] == [0; 4] {
        return Err(bad("zero width or height"));
    }
    if crc != crc32(&chunk[4..4 + 4 + IHDR_LEN]).to_be_bytes() {
        return Err(bad("IHDR CRC mismatch"));
    }
    Ok(end)
}

/// Appends one uncompressed `iTXt` chunk to `out`.
fn write_itxt(out: &mut Vec<u8>, keyword: &str, text: &str) -> Result<(), ProvenanceError> {
    let keyword_bytes = latin1_keyword(keyword)?;
    if text.contains('\0') {
        return Err(ProvenanceError::NulInText(keyword.to_owned()));
    }
    // keyword, NUL, compression flag 0, method 0, empty language tag + NUL, empty translated
    // keyword + NUL, text.
    let mut body = Vec::with_capacity(4 + keyword_bytes.len() + 5 + text.len());
    body.extend_from_slice(b"iTXt");
    body.extend_from_slice(&keyword_bytes);
    body.extend_from_slice(&[0, 0, 0, 0, 0]);
    body.extend_from_slice(text.as_bytes());
    let length = u32::try_from(body.len() - 4)
        .ok()
        .filter(|&n| n as usize <= MAX_CHUNK_LEN)
        .ok_or_else(|| ProvenanceError::ChunkTooLarge(keyword.to_owned()))?;
    out.extend_from_slice(&length.to_be_bytes());
    out.extend_from_slice(&body);
    out.extend_from_slice(&crc32(&body).to_be_bytes());
    Ok(())
}

/// The keyword's Latin-1 bytes, if it is a valid PNG keyword.
fn latin1_keyword(keyword: &str) -> Result<Vec<u8>, ProvenanceError> {
    let bad = |why| ProvenanceError::BadKeyword(keyword.to_owned(), why);
    let bytes = keyword
        .chars()
        .map(|c| match u32::from(c) {
            n @ (0x20..=0x7E | 0xA1..=0xFF) => Ok(n as u8),
            _ => Err(bad("only printable Latin-1 characters are allowed")),
        })
        .collect::<Result<Vec<u8>, _>>()?;
    if bytes.is_empty() || bytes.len() > 79 {
        return Err(bad("must be 1 to 79 characters long"));
    }
    if bytes.first() == Some(&b' ') || bytes.last() == Some(&b' ') || keyword.contains("  ") {
        return Err(bad("no leading, trailing or consecutive spaces"));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use image::{ImageFormat, Rgb, RgbImage};

    use super::*;

    /// One parsed chunk: type and data (CRC already checked).
    struct Chunk {
        kind: [u8; 4],
        data: Vec<u8>,
    }

    /// A minimal chunk reader: checks the signature, lengths and every CRC.
    fn read_chunks(png: &[u8]) -> Vec<Chunk> {
        assert_eq!(&png[..8], &SIGNATURE);
        let mut chunks = Vec::new();
        let mut at = 8;
        while at < png.len() {
            let length = u32::from_be_bytes(png[at..at + 4].try_into().expect("4 bytes")) as usize;
            let body = &png[at + 4..at + 8 + length];
            let crc = u32::from_be_bytes(
                png[at + 8 + length..at + 12 + length]
                    .try_into()
                    .expect("4 bytes"),
            );
            assert_eq!(crc, crc32(body), "CRC of chunk at {at}");
            chunks.push(Chunk {
                kind: body[..4].try_into().expect("4 bytes"),
                data: body[4..].to_vec(),
            });
            at += 12 + length;
        }
        assert_eq!(at, png.len());
        chunks
    }

    /// Parses an uncompressed `iTXt` chunk into (keyword as Latin-1, text).
    fn parse_itxt(data: &[u8]) -> (String, String) {
        let nul = data.iter().position(|&b| b == 0).expect("keyword NUL");
        let keyword: String = data[..nul].iter().map(|&b| char::from(b)).collect();
        assert_eq!(data[nul + 1], 0, "compression flag");
        assert_eq!(data[nul + 2], 0, "compression method");
        let rest = &data[nul + 3..];
        let lang = rest.iter().position(|&b| b == 0).expect("language NUL");
        let rest = &rest[lang + 1..];
        let translated = rest.iter().position(|&b| b == 0).expect("translated NUL");
        let text = String::from_utf8(rest[translated + 1..].to_vec()).expect("UTF-8 text");
        (keyword, text)
    }

    fn sample() -> (RgbImage, Vec<u8>) {
        let image = RgbImage::from_fn(17, 9, |x, y| Rgb([x as u8 * 15, y as u8 * 28, 200]));
        let mut png = Vec::new();
        image
            .write_to(&mut Cursor::new(&mut png), ImageFormat::Png)
            .expect("encode");
        (image, png)
    }

    fn fields() -> Vec<(String, String)> {
        vec![
            ("AI-generated".into(), "true".into()),
            ("Comment é".into(), "Ünïcode text ✓".into()),
        ]
    }

    #[test]
    fn crc_matches_the_check_value_and_the_encoder() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
        // Every chunk the image crate wrote verifies with our CRC.
        let (_, png) = sample();
        assert!(read_chunks(&png).len() >= 3);
    }

    #[test]
    fn embedded_png_decodes_to_the_same_pixels() {
        let (image, png) = sample();
        let out = embed_png(&png, &fields(), "<x:xmpmeta/>").expect("embed");
        let decoded = image::load_from_memory_with_format(&out, ImageFormat::Png)
            .expect("decodes")
            .to_rgb8();
        assert_eq!(decoded, image);
    }

    #[test]
    fn chunks_follow_ihdr_and_parse_back() {
        let (_, png) = sample();
        let xmp = crate::xmp_packet(&crate::test_support::fields()).expect("packet");
        let out = embed_png(&png, &fields(), &xmp).expect("embed");
        let chunks = read_chunks(&out);
        assert_eq!(&chunks[0].kind, b"IHDR");
        let texts: Vec<(String, String)> = chunks[1..4]
            .iter()
            .map(|c| {
                assert_eq!(&c.kind, b"iTXt");
                parse_itxt(&c.data)
            })
            .collect();
        let mut expected = fields();
        expected.push((XMP_KEYWORD.into(), xmp));
        assert_eq!(texts, expected);
        // The original chunks follow unchanged.
        let original = read_chunks(&png);
        assert_eq!(chunks.len(), original.len() + 3);
        for (a, b) in chunks[4..].iter().zip(&original[1..]) {
            assert_eq!((a.kind, &a.data), (b.kind, &b.data));
        }
    }

    #[test]
    fn empty_xmp_and_no_fields_leave_the_file_unchanged() {
        let (_, png) = sample();
        assert_eq!(embed_png(&png, &[], "").expect("embed"), png);
    }

    #[test]
    fn non_png_and_broken_headers_are_errors() {
        let jpeg_magic = [0xFF, 0xD8, 0xFF, 0xE0, 0, 0x10, b'J', b'F', b'I', b'F'];
        assert_eq!(
            embed_png(&jpeg_magic, &[], ""),
            Err(ProvenanceError::NotPng)
        );
        assert_eq!(embed_png(b"", &[], ""), Err(ProvenanceError::NotPng));
        let (_, png) = sample();
        assert!(matches!(
            embed_png(&png[..20], &[], ""),
            Err(ProvenanceError::BadHeader(_))
        ));
        let mut corrupt = png.clone();
        corrupt[20] ^= 1; // a byte of the IHDR width
        assert!(matches!(
            embed_png(&corrupt, &[], ""),
            Err(ProvenanceError::BadHeader(_))
        ));
        let mut not_ihdr = png;
        not_ihdr[12..16].copy_from_slice(b"IDAT");
        assert!(matches!(
            embed_png(&not_ihdr, &[], ""),
            Err(ProvenanceError::BadHeader(_))
        ));
    }

    #[test]
    fn bad_keywords_and_texts_are_refused() {
        let (_, png) = sample();
        let try_field = |k: &str, v: &str| embed_png(&png, &[(k.into(), v.into())], "");
        assert!(try_field(&"k".repeat(79), "v").is_ok());
        for keyword in ["", " lead", "trail ", "two  spaces", "tab\t", "€uro"] {
            assert!(
                matches!(
                    try_field(keyword, "v"),
                    Err(ProvenanceError::BadKeyword(..))
                ),
                "{keyword:?}"
            );
        }
        assert!(matches!(
            try_field(&"k".repeat(80), "v"),
            Err(ProvenanceError::BadKeyword(..))
        ));
        assert_eq!(
            try_field("k", "a\0b"),
            Err(ProvenanceError::NulInText("k".into()))
        );
    }
}
