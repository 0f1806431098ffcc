//! EXIF orientation of decoded inputs: [`decode_upright`] turns an image (and a mask) the way
//! its EXIF `Orientation` tag says, before anything else looks at its pixels.
//!
//! Phones store photos as the sensor read them and record the rotation in EXIF (tag 0x0112,
//! values 1–8). diffusers' `load_image` applies it (`PIL.ImageOps.exif_transpose`), so a job
//! that ignored it would paint a sideways photo, or misalign a photo and a mask drawn on the
//! upright photo. Every format the `image` crate reads EXIF from counts: JPEG (APP1), PNG
//! (`eXIf`), WebP (`EXIF`). Without the tag, or with an unreadable EXIF block, pixels stay as
//! stored (what Pillow does too).

use std::io::{BufRead, Seek};

use image::{DynamicImage, ImageDecoder, ImageReader, ImageResult};

/// Decodes `reader` (its limits already set) and applies the EXIF orientation: the result is
/// upright, its width and height swapped for orientations 5–8.
pub fn decode_upright<R: BufRead + Seek>(reader: ImageReader<R>) -> ImageResult<DynamicImage> {
    let mut decoder = reader.into_decoder()?;
    let orientation = decoder.orientation()?;
    let mut image = DynamicImage::from_decoder(decoder)?;
    image.apply_orientation(orientation);
    Ok(image)
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use image::codecs::jpeg::JpegEncoder;
    use image::codecs::png::PngEncoder;
    use image::{ImageEncoder, Rgb, RgbImage};

    use super::*;
    use crate::decode_rgb;

    /// A 24×16 picture with a different colour per 8×8 cell, so every transform is visible.
    fn picture() -> RgbImage {
        RgbImage::from_fn(24, 16, |x, y| {
            let cell = (y / 8) * 3 + x / 8;
            Rgb([
                (cell * 40) as u8,
                255 - (cell * 37) as u8,
                if cell % 2 == 0 { 30 } else { 220 },
            ])
        })
    }

    /// A TIFF-structured EXIF block (big-endian) whose IFD0 holds only Orientation = `value`.
    fn exif_block(value: u16) -> Vec<u8> {
        let mut tiff = b"MM\x00\x2a\x00\x00\x00\x08".to_vec();
        tiff.extend_from_slice(&1u16.to_be_bytes()); // one entry
        tiff.extend_from_slice(&0x0112u16.to_be_bytes()); // Orientation
        tiff.extend_from_slice(&3u16.to_be_bytes()); // SHORT
        tiff.extend_from_slice(&1u32.to_be_bytes()); // count
        tiff.extend_from_slice(&value.to_be_bytes());
        tiff.extend_from_slice(&[0, 0]); // value padding
        tiff.extend_from_slice(&0u32.to_be_bytes()); // no next IFD
        tiff
    }

    /// `jpeg` with an `APP1 Exif` segment right after SOI.
    fn with_jpeg_exif(jpeg: &[u8], value: u16) -> Vec<u8> {
        let mut payload = b"Exif\x00\x00".to_vec();
        payload.extend(exif_block(value));
        let mut out = jpeg[..2].to_vec();
        out.extend_from_slice(&[0xff, 0xe1]);
        out.extend_from_slice(&((payload.len() + 2) as u16).to_be_bytes());
        out.extend(payload);
        out.extend_from_slice(&jpeg[2..]);
        out
    }

    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &byte in bytes {
            crc ^= u32::from(byte);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xedb8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    /// `png` with an `eXIf` chunk right after IHDR (8-byte signature + 25-byte IHDR chunk).
    fn with_png_exif(png: &[u8], value: u16) -> Vec<u8> {
        let data = exif_block(value);
        let mut chunk = (data.len() as u32).to_be_bytes().to_vec();
        let mut body = b"eXIf".to_vec();
        body.extend(&data);
        chunk.extend(&body);
        chunk.extend_from_slice(&crc32(&body).to_be_bytes());
        let mut out = png[..33].to_vec();
        out.extend(chunk);
        out.extend_from_slice(&png[33..]);
        out
    }

    /// What an EXIF viewer shows for `stored` with orientation `value`, written from the
    /// EXIF 2.32 table (where row 0 and column 0 of the stored image go), independently of the
    /// `image` crate's transforms.
    fn upright(stored: &RgbImage, value: u16) -> RgbImage {
        let (w, h) = stored.dimensions();
        let swapped = value >= 5;
        let (ow, oh) = if swapped { (h, w) } else { (w, h) };
        RgbImage::from_fn(ow, oh, |x, y| {
            // (x, y) in the upright image comes from stored (sx, sy).
            let (sx, sy) = match value {
                1 => (x, y),
                2 => (w - 1 - x, y),
                3 => (w - 1 - x, h - 1 - y),
                4 => (x, h - 1 - y),
                5 => (y, x),
                6 => (y, h - 1 - x),
                7 => (w - 1 - y, h - 1 - x),
                8 => (w - 1 - y, x),
                _ => unreachable!("orientation {value}"),
            };
            *stored.get_pixel(sx, sy)
        })
    }

    #[test]
    fn jpeg_inputs_of_all_eight_orientations_come_out_upright() {
        let mut jpeg = Vec::new();
        let picture = picture();
        JpegEncoder::new_with_quality(&mut jpeg, 95)
            .write_image(picture.as_raw(), 24, 16, image::ExtendedColorType::Rgb8)
            .expect("encode");
        // The stored pixels: the JPEG decoded without any orientation.
        let stored = decode_rgb(&jpeg, "image", 1 << 20).expect("decode");
        assert_eq!(stored.dimensions(), (24, 16));
        for value in 1..=8 {
            let tagged = with_jpeg_exif(&jpeg, value);
            let got = decode_rgb(&tagged, "image", 1 << 20).expect("decode tagged");
            assert_eq!(got, upright(&stored, value), "orientation {value}");
        }
        // 4 and 5 differ from 2 and 8 (the transposes are not their flips), so a mix-up of
        // any two values would fail above.
        let all: Vec<RgbImage> = (1..=8).map(|v| upright(&stored, v)).collect();
        for i in 0..8 {
            for j in i + 1..8 {
                assert_ne!(all[i], all[j], "orientations {} and {}", i + 1, j + 1);
            }
        }
    }

    #[test]
    fn png_masks_with_exif_come_out_upright_and_the_pixel_limit_still_holds() {
        let mut png = Vec::new();
        let picture = picture();
        PngEncoder::new(&mut png)
            .write_image(picture.as_raw(), 24, 16, image::ExtendedColorType::Rgb8)
            .expect("encode");
        for value in [1, 3, 6, 8] {
            let tagged = with_png_exif(&png, value);
            let got = decode_rgb(&tagged, "mask", 1 << 20).expect("decode tagged");
            assert_eq!(got, upright(&picture, value), "orientation {value}");
        }
        // A rotation keeps the pixel count: the header check refuses the same images.
        assert!(decode_rgb(&with_png_exif(&png, 6), "mask", 24 * 16 - 1).is_err());
    }

    #[test]
    fn without_exif_the_stored_pixels_are_kept() {
        let picture = picture();
        let image = decode_upright(
            ImageReader::new(Cursor::new({
                let mut png = Vec::new();
                PngEncoder::new(&mut png)
                    .write_image(picture.as_raw(), 24, 16, image::ExtendedColorType::Rgb8)
                    .expect("encode");
                png
            }))
            .with_guessed_format()
            .expect("format"),
        )
        .expect("decode");
        assert_eq!(image.to_rgb8(), picture);
    }

    /// The seed inputs of the fuzz target `image_decode` (fuzz/seeds/image_decode/): one small
    /// file per format this crate reads, and each EXIF container, so that the fuzzer starts
    /// inside the decoders rather than at their magic bytes. `INPAINT_UPDATE_FUZZ_SEEDS=1`
    /// rewrites them; otherwise they must be what this writes, and decode upright.
    #[test]
    fn the_fuzz_seeds_are_these_images() {
        use image::codecs::webp::WebPEncoder;

        let picture = RgbImage::from_fn(8, 6, |x, y| Rgb([x as u8 * 30, y as u8 * 40, 128]));
        let (w, h) = picture.dimensions();
        let mut png = Vec::new();
        PngEncoder::new(&mut png)
            .write_image(picture.as_raw(), w, h, image::ExtendedColorType::Rgb8)
            .expect("png");
        let mut jpeg = Vec::new();
        JpegEncoder::new_with_quality(&mut jpeg, 50)
            .write_image(picture.as_raw(), w, h, image::ExtendedColorType::Rgb8)
            .expect("jpeg");
        let mut webp = Vec::new();
        WebPEncoder::new_lossless(&mut webp)
            .write_image(picture.as_raw(), w, h, image::ExtendedColorType::Rgb8)
            .expect("webp");
        let seeds = [
            ("8x6.png", png.clone()),
            ("8x6-exif6.png", with_png_exif(&png, 6)),
            ("8x6.jpg", jpeg.clone()),
            ("8x6-exif8.jpg", with_jpeg_exif(&jpeg, 8)),
            ("8x6.webp", webp),
        ];
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds/image_decode");
        let update = std::env::var_os("INPAINT_UPDATE_FUZZ_SEEDS").is_some();
        let mut stale = Vec::new();
        for (name, bytes) in seeds {
            let image = decode_rgb(&bytes, name, 1 << 10).expect("a seed decodes");
            let rotated = name.contains("exif");
            assert_eq!(
                image.dimensions(),
                if rotated { (h, w) } else { (w, h) },
                "{name}"
            );
            let path = dir.join(name);
            if std::fs::read(&path).ok().as_deref() != Some(bytes.as_slice()) {
                if update {
                    std::fs::create_dir_all(&dir).expect("seed dir");
                    std::fs::write(&path, &bytes).expect("write seed");
                } else {
                    stale.push(name);
                }
            }
        }
        assert!(
            stale.is_empty(),
            "{stale:?} differ: INPAINT_UPDATE_FUZZ_SEEDS=1 cargo test -p inpaint-images"
        );
    }
}
