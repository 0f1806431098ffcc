//! Image and mask decoding with the header checks (`inpaint_images::decode_rgb`, what the
//! worker's `images::decode_rgb` calls): arbitrary bytes give an image within the pixel limit or
//! a `DecodeError`, never a panic or an allocation past the limit (libFuzzer's `-rss_limit_mb`
//! and `-malloc_limit_mb` catch one).
#![no_main]

use libfuzzer_sys::fuzz_target;

const MAX_PIXELS: u64 = 4096 * 4096;

fuzz_target!(|data: &[u8]| {
    if let Ok(image) = inpaint_images::decode_rgb(data, "image", MAX_PIXELS) {
        assert!(u64::from(image.width()) * u64::from(image.height()) <= MAX_PIXELS);
    }
});
