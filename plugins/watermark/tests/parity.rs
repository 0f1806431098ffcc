//! Parity with the invisible-watermark package (dwtDct), against the fixtures written by
//! `tests/parity/watermark/generate.py`:
//! - the Rust reference-exact encoder's (`encode_reference_exact`) output is byte-identical to
//!   the package's on every case (the default `encode` is not: it does not corrupt pixels);
//! - Rust reads the package's outputs (and the unmarked inputs) with the same per-bit votes and
//!   bits as the package;
//! - with `INPAINT_WATERMARK_PARITY_OUT=DIR`, the Rust outputs are written to `DIR/rust_<case>.png`
//!   for `generate.py --check-rust-output DIR` (the package decodes them).

use std::path::{Path, PathBuf};

use inpaint_watermark::{BitVotes, decode, encode_reference_exact, votes};
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/parity/watermark/fixtures")
}

fn load(name: &str) -> image::RgbImage {
    image::open(fixtures().join(name))
        .unwrap_or_else(|e| panic!("{name}: {e}"))
        .to_rgb8()
}

fn bits(text: &str) -> Vec<bool> {
    text.chars().map(|c| c == '1').collect()
}

fn votes_of(value: &Value) -> Vec<BitVotes> {
    value
        .as_array()
        .expect("votes array")
        .iter()
        .map(|pair| BitVotes {
            ones: pair[0].as_u64().expect("ones") as u32,
            total: pair[1].as_u64().expect("total") as u32,
        })
        .collect()
}

fn manifest() -> Value {
    let text = std::fs::read_to_string(fixtures().join("manifest.json")).expect("manifest");
    serde_json::from_str(&text).expect("manifest json")
}

#[test]
fn encoder_output_is_byte_identical_to_the_package() {
    let manifest = manifest();
    let out_dir = std::env::var_os("INPAINT_WATERMARK_PARITY_OUT").map(PathBuf::from);
    let cases = manifest["cases"].as_array().expect("cases");
    assert_eq!(cases.len(), 6);
    for case in cases {
        let name = case["name"].as_str().expect("name");
        let input_file = manifest["inputs"][case["input"].as_str().expect("input")]["file"]
            .as_str()
            .expect("file");
        let input = load(input_file);
        let payload = bits(case["payload_bits"].as_str().expect("bits"));
        let ours = encode_reference_exact(&input, &payload).expect("encode");
        let theirs = load(case["python_output"].as_str().expect("output"));
        if let Some(dir) = &out_dir {
            std::fs::create_dir_all(dir).expect("out dir");
            ours.save(dir.join(format!("rust_{name}.png")))
                .expect("write rust output");
        }
        let differing = ours
            .as_raw()
            .iter()
            .zip(theirs.as_raw())
            .filter(|(a, b)| a != b)
            .count();
        assert_eq!(
            differing, 0,
            "{name}: {differing} bytes differ from the package"
        );
        assert_eq!(ours.dimensions(), theirs.dimensions());
    }
}

#[test]
fn decoder_reads_what_the_package_reads() {
    let manifest = manifest();
    for case in manifest["cases"].as_array().expect("cases") {
        let name = case["name"].as_str().expect("name");
        let n = case["payload_bits"].as_str().expect("bits").len();
        let input_file = manifest["inputs"][case["input"].as_str().expect("input")]["file"]
            .as_str()
            .expect("file");
        for (image, votes_key, bits_key) in [
            (
                load(case["python_output"].as_str().expect("output")),
                "votes_output",
                "decoded_output",
            ),
            (load(input_file), "votes_input", "decoded_input"),
        ] {
            assert_eq!(
                votes(&image, n).expect("votes"),
                votes_of(&case[votes_key]),
                "{name}: {votes_key}"
            );
            assert_eq!(
                decode(&image, n).expect("decode"),
                bits(case[bits_key].as_str().expect("bits")),
                "{name}: {bits_key}"
            );
        }
    }
}
