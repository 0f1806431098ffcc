//! Image and mask decoding with the worker's header checks (`images::decode_rgb`): arbitrary
//! bytes give an image within the pixel limit or a `JobFailure`, never a panic or an
//! allocation past the limit.
#![no_main]

use libfuzzer_sys::fuzz_target;

const MAX_PIXELS: u64 = 4096 * 4096;

fuzz_target!(|data: &[u8]| {
    if let Ok(image) = inpaint_worker::images::decode_rgb(data, "image", MAX_PIXELS) {
        assert!(u64::from(image.width()) * u64::from(image.height()) <= MAX_PIXELS);
    }
});
