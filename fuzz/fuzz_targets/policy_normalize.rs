//! The prompt policy's normaliser and the built-in policy on arbitrary text: never a panic, the
//! plain form always first.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let normalized = inpaint_prompt_policy::normalize::normalize(text);
    assert!(!normalized.forms().is_empty());
    let _ = normalized.plain();
    let _ = inpaint_prompt_policy::normalize::normalize_term(text);
});
