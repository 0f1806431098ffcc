//! Every tokenizer folder layout that transformers writes (4.x slow/fast, legacy or not, without
//! `special_tokens_map.json`, 5.x, `tokenizer.json` alone) loads and gives transformers 5's ids
//! on the shared prompt list. Fixtures: tests/parity/tokenizer/layouts.py.

#![allow(clippy::print_stdout)]

use std::path::PathBuf;

use inpaint_engine::tokenizer::{ClipTokenizer, TokenizerFlavor};
use serde_json::Value;

fn layouts() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/parity/tokenizer/fixtures/layouts")
}

#[test]
fn every_transformers_layout_matches_transformers5() {
    let fixture: Value = serde_json::from_str(
        &std::fs::read_to_string(layouts().join("cases.json")).expect("cases.json"),
    )
    .expect("json");
    let folders = fixture["folders"].as_object().expect("folders");
    assert!(folders.len() >= 12, "{} folders", folders.len());
    let mut total = 0;
    for (name, data) in folders {
        let fallback = data["fallback_max_length"].as_u64().map(|n| n as usize);
        let dir = layouts().join(name);
        let tok = ClipTokenizer::from_folder_with(&dir, TokenizerFlavor::Transformers5, fallback)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        if fallback.is_some() {
            // No model_max_length in the folder: refused without a fallback, naming the key.
            let err = ClipTokenizer::from_folder(&dir).expect_err("no length");
            assert!(err.to_string().contains("model_max_length"), "{err}");
        }
        assert_eq!(
            tok.pad_id(),
            data["pad_token_id"].as_i64().expect("pad"),
            "{name}: pad id"
        );
        for case in data["cases"].as_array().expect("cases") {
            let prompt = case["prompt"].as_str().expect("prompt");
            let want: Vec<i64> = serde_json::from_value(case["input_ids"].clone()).expect("ids");
            let got = tok.encode(prompt);
            assert_eq!(got.ids, want, "{name}: ids of {prompt:?}");
            assert_eq!(
                got.token_count_before_truncation as u64,
                case["untruncated_length"].as_u64().expect("len"),
                "{name}: length of {prompt:?}"
            );
            total += 1;
        }
        println!(
            "{name}: {} cases equal",
            data["cases"].as_array().map_or(0, Vec::len)
        );
    }
    println!(
        "tokenizer layouts: {} folders, {total} cases equal",
        folders.len()
    );
}

#[test]
fn a_non_clip_tokenizer_json_is_refused_naming_the_part() {
    let dir = tempfile::tempdir().expect("tempdir");
    let source = layouts().join("sd15-tf5_json_only/tokenizer.json");
    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(source).expect("read")).expect("json");
    type Edit = fn(&mut Value);
    let cases: [(&str, Edit); 3] = [
        ("BPE", |j| j["model"]["type"] = "WordPiece".into()),
        ("end_of_word_suffix", |j| {
            j["model"]["end_of_word_suffix"] = Value::Null;
        }),
        ("normalizer", |j| {
            j["normalizer"] =
                serde_json::json!({"type": "Sequence", "normalizers": [{"type": "NFKC"}]});
        }),
    ];
    for (word, edit) in cases {
        let mut broken = json.clone();
        edit(&mut broken);
        std::fs::write(dir.path().join("tokenizer.json"), broken.to_string()).expect("write");
        let err =
            ClipTokenizer::from_folder_with(dir.path(), TokenizerFlavor::Transformers5, Some(77))
                .expect_err(word);
        let text = err.to_string();
        assert!(
            text.contains(word) && text.contains("tokenizer.json"),
            "{text}"
        );
    }
    std::fs::remove_file(dir.path().join("tokenizer.json")).expect("rm");
    let err = ClipTokenizer::from_folder(dir.path()).expect_err("empty folder");
    assert!(err.to_string().contains("tokenizer.json"), "{err}");
}
