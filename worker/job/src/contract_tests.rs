//! Tests that hold the contract's three descriptions together: the Rust parser, the JSON Schema
//! and `schemas/README.md` (error codes and their triggers), and the example results, which are
//! generated here from the result types (`INPAINT_UPDATE_SCHEMAS=1` rewrites them).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::{
    BlockInfo, ErrorCode, ErrorInfo, InpaintJob, InpaintResult, JobId, JobStatus, ModelInfo,
    OutputObject, SafetyReport, WatermarkInfo, WorkerInfo, job_schema_json, result_schema_json,
};

fn schemas_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas")
}

fn validator(text: &str) -> jsonschema::Validator {
    let schema: Value = serde_json::from_str(text).expect("schema is JSON");
    jsonschema::options()
        .should_validate_formats(true)
        .build(&schema)
        .expect("schema compiles")
}

const ID: &str = "0b9c5a52-3f0e-4d8a-9a3e-8f6f4d1c2b7a";

fn base_job() -> Value {
    json!({
        "schema_version": 1,
        "job_id": ID,
        "image": "s3://inputs/a/image.png",
        "mask": "s3://inputs/a/mask.png",
        "prompt": "a red bicycle",
        "output": {"bucket": "outputs"},
    })
}

/// A small deterministic generator (xorshift64*), so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// Every spelling of UUIDs (and near-UUIDs) a producer might send.
fn job_id_candidates() -> Vec<String> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut out = vec![
        "00000000-0000-0000-0000-000000000000".to_owned(),
        "ffffffff-ffff-ffff-ffff-ffffffffffff".to_owned(),
        String::new(),
        "-".repeat(36),
    ];
    for _ in 0..200 {
        let uuid = uuid::Uuid::from_u64_pair(rng.next(), rng.next());
        let canonical = uuid.hyphenated().to_string();
        let position = (rng.next() % 36) as usize;
        let mut mixed = canonical.clone().into_bytes();
        mixed[position] = mixed[position].to_ascii_uppercase();
        let mut non_hex = canonical.clone().into_bytes();
        non_hex[position] = if non_hex[position] == b'-' {
            b'0'
        } else {
            b'g'
        };
        let mut moved = canonical.clone();
        moved.remove(8);
        moved.insert(9, '-');
        out.extend([
            canonical.clone(),
            canonical.to_uppercase(),
            String::from_utf8(mixed).expect("ascii"),
            String::from_utf8(non_hex).expect("ascii"),
            uuid.simple().to_string(),
            uuid.braced().to_string(),
            uuid.urn().to_string(),
            format!(" {canonical}"),
            format!("{canonical}\n"),
            format!("{canonical}0"),
            canonical[..35].to_owned(),
            moved,
            canonical.replace('-', "_"),
            canonical.replacen('0', "\u{ff10}", 1),
        ]);
    }
    out
}

#[test]
fn job_id_the_parser_and_the_schema_accept_the_same_strings_and_echo_them() {
    let schema = validator(&job_schema_json());
    let (mut accepted, mut refused) = (0, 0);
    for candidate in job_id_candidates() {
        let mut job = base_job();
        job["job_id"] = Value::from(candidate.clone());
        let json_ok = schema.is_valid(&job);
        let parsed = InpaintJob::from_json(&serde_json::to_vec(&job).expect("bytes"));
        assert_eq!(
            parsed.is_ok(),
            json_ok,
            "{candidate:?}: schema {json_ok}, parser {parsed:?}"
        );
        match parsed {
            Ok(job) => {
                accepted += 1;
                // The result and the output keys carry exactly what was sent.
                assert_eq!(job.job_id.to_string(), candidate);
                assert!(job.output_key(0).expect("key").key().contains(&candidate));
                let id: JobId = candidate.parse().expect("FromStr agrees");
                assert_eq!(
                    serde_json::to_value(id).expect("json"),
                    Value::from(candidate)
                );
            }
            Err(e) => {
                refused += 1;
                assert_eq!(e.code(), ErrorCode::SchemaViolation, "{candidate:?}: {e}");
                assert!(candidate.parse::<JobId>().is_err());
            }
        }
    }
    assert!(accepted >= 200 && refused >= 2000, "{accepted} / {refused}");
}

/// The error codes `schemas/README.md` lists (rows `| \`code\` | ...` of its tables).
fn documented_codes() -> BTreeSet<String> {
    let text = std::fs::read_to_string(schemas_dir().join("README.md")).expect("README");
    let section = text
        .split("## Error codes")
        .nth(1)
        .expect("schemas/README.md has an '## Error codes' section");
    let section = section.split("\n## ").next().unwrap_or(section);
    section
        .lines()
        .filter_map(|line| line.strip_prefix("| `"))
        .filter_map(|rest| rest.split('`').next())
        .map(str::to_owned)
        .collect()
}

#[test]
fn every_code_is_documented_and_every_documented_code_exists() {
    let documented = documented_codes();
    let code_names: BTreeSet<String> = ErrorCode::ALL
        .iter()
        .map(|c| c.as_str().to_owned())
        .collect();
    assert_eq!(
        documented, code_names,
        "schemas/README.md '## Error codes' vs ErrorCode"
    );
}

/// One documented trigger: a change to the base job, and the code the README promises.
type Trigger = (String, Value, &'static str);

fn set(path: &[&str], value: Value) -> Value {
    let mut job = base_job();
    let mut at = &mut job;
    for key in &path[..path.len() - 1] {
        at = at
            .as_object_mut()
            .expect("object")
            .entry((*key).to_owned())
            .or_insert_with(|| json!({}));
    }
    at[path[path.len() - 1]] = value;
    job
}

/// The README's rule, generated over every field: a wrong JSON type or unknown field is a
/// `schema_violation`; any integer outside its field's range (negative, too large, even beyond
/// the Rust type) and any storage-rule break in an `s3://` key is an `invalid_parameter`.
fn triggers() -> Vec<Trigger> {
    let mut out: Vec<Trigger> = Vec::new();
    let integer_fields: [(&[&str], i128, i128); 9] = [
        (&["params", "num_inference_steps"], 1, 1000),
        (&["params", "num_images"], 1, 8),
        (&["params", "seed"], 0, u64::MAX as i128),
        (&["params", "width"], 64, 2048),
        (&["params", "height"], 64, 2048),
        (&["params", "mask_grow_px"], 0, 256),
        (&["params", "mask_feather_px"], 0, 256),
        (&["params", "crop_to_mask", "padding_px"], 0, 1024),
        (&["output", "format", "quality"], 1, 100),
    ];
    for (path, min, max) in integer_fields {
        let name = path.join(".");
        let with_type = |v: Value| {
            let mut job = set(path, v);
            if path[1] == "format" {
                job["output"]["format"]["type"] = "jpeg".into();
            }
            job
        };
        for bad in [
            min - 1,
            min - 1_000_000,
            -1,
            max + 1,
            i128::from(u32::MAX) + 1,
            i128::from(u64::MAX) + 1,
        ] {
            if (min..=max).contains(&bad) {
                continue;
            }
            let number: Value = serde_json::from_str(&bad.to_string()).expect("number");
            out.push((
                format!("{name} = {bad}"),
                with_type(number),
                "invalid_parameter",
            ));
        }
        out.push((
            format!("{name} = 2.5"),
            with_type(json!(2.5)),
            "schema_violation",
        ));
        out.push((
            format!("{name} = \"8\""),
            with_type(json!("8")),
            "schema_violation",
        ));
    }
    for field in ["image", "mask"] {
        for (what, key) in [
            ("a key over 1024 bytes", "k".repeat(1025)),
            ("an ASCII control character", "a\u{7}b.png".to_owned()),
            ("a '..' segment", "a/../b.png".to_owned()),
        ] {
            out.push((
                format!("{field} with {what}"),
                set(&[field], Value::from(format!("s3://inputs/{key}"))),
                "invalid_parameter",
            ));
        }
        // Unicode (non-ASCII) control characters are allowed by both the schema and the parser.
        out.push((
            format!("{field} with a Unicode control character"),
            set(&[field], json!("s3://inputs/a\u{85}b.png")),
            "accepted",
        ));
        out.push((
            format!("{field} not s3://"),
            set(&[field], json!("https://inputs/a.png")),
            "schema_violation",
        ));
    }
    out.push((
        "unknown field".into(),
        set(&["colour"], json!("red")),
        "schema_violation",
    ));
    out.push((
        "schema_version 2".into(),
        set(&["schema_version"], json!(2)),
        "invalid_parameter",
    ));
    out
}

#[test]
fn each_documented_trigger_gives_its_documented_code() {
    let mut wrong = Vec::new();
    for (what, job, expected) in triggers() {
        let got = match InpaintJob::from_json(&serde_json::to_vec(&job).expect("bytes")) {
            Ok(_) => "accepted".to_owned(),
            Err(e) => e.code().as_str().to_owned(),
        };
        if got != expected {
            wrong.push(format!("{what}: expected {expected}, got {got}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn integer_valued_numbers_are_integers_on_both_sides() {
    let schema = validator(&job_schema_json());
    let job = set(&["params", "num_inference_steps"], json!(20.0));
    assert!(schema.is_valid(&job));
    let parsed = InpaintJob::from_json(&serde_json::to_vec(&job).expect("bytes")).expect("20.0");
    assert_eq!(parsed.params.num_inference_steps, 20);
}

fn model() -> ModelInfo {
    ModelInfo {
        id: "stable-diffusion-v1-5/stable-diffusion-inpainting".into(),
        weights_sha256: "3f9a0c2e5b7d4e1f8a6c9b0d2e4f6a8c1b3d5e7f9a0c2e4b6d8f0a1c3e5b7d9f".into(),
    }
}

fn worker() -> WorkerInfo {
    WorkerInfo {
        version: "0.1.0".into(),
        host: "inpaint-worker-7c9d".into(),
        missing_required_stages: vec![],
    }
}

/// The example results, built the way the worker builds them: [`InpaintResult::new`] and
/// [`InpaintResult::from_error`], the timing keys the worker records, the request fingerprint.
fn example_results() -> Vec<(&'static str, InpaintResult)> {
    let job = InpaintJob::from_json(
        &std::fs::read(schemas_dir().join("examples/valid/job-full.json")).expect("job-full"),
    )
    .expect("job-full parses");
    let at = "2030-05-31T09:14:03.512Z".parse().expect("time");
    let id = Some(job.job_id);
    let timings =
        |stages: &[(&str, u64)]| stages.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect();

    let mut succeeded = InpaintResult::new(id, JobStatus::Succeeded, model(), worker(), at);
    let seeds = job.per_image_seeds(0);
    for (index, seed) in (0u32..).zip(seeds) {
        succeeded.outputs.push(OutputObject {
            uri: job.output_key(index).expect("key"),
            index,
            seed,
            sha256: format!("{index:x}").repeat(64)[..64].to_owned(),
            width: job.params.width.unwrap_or(512),
            height: job.params.height.unwrap_or(512),
            content_type: job.output.format.content_type().into(),
            safety: Some(SafetyReport {
                nsfw: false,
                concept_scores: [("concept_0".into(), -0.081), ("concept_1".into(), -0.052)].into(),
                flagged_concepts: vec![],
            }),
            watermark: Some(WatermarkInfo {
                payload_hex: "5b2f8c1d".into(),
                method: "dwtDct".into(),
            }),
        });
    }
    succeeded.timings_ms = timings(&[
        ("download", 84),
        ("decode", 12),
        ("plugins_before", 3),
        ("inference", 4210),
        ("plugins_after", 126),
        ("upload", 140),
        ("manifest", 9),
        ("total", 4601),
    ]);
    succeeded.metadata = job.metadata.clone();
    succeeded.request_sha256 = Some(job.request_sha256());

    let mut failed = InpaintResult::from_error(
        id,
        ErrorInfo {
            code: ErrorCode::StorageUnavailable,
            message: "uploading s3://inpaint-outputs/...: connection refused".into(),
            retryable: true,
        },
        model(),
        worker(),
        at,
    );
    failed.attempt = 3;
    failed.timings_ms = timings(&[("download", 84), ("total", 30_112)]);
    failed.metadata = job.metadata.clone();
    failed.request_sha256 = Some(job.request_sha256());

    let mut blocked = InpaintResult::from_error(
        id,
        ErrorInfo {
            code: ErrorCode::PolicyBlocked,
            message: "blocked by prompt_policy (blocked_term)".into(),
            retryable: false,
        },
        model(),
        worker(),
        at,
    );
    blocked.block = Some(BlockInfo {
        stage: "prompt_policy".into(),
        category: "blocked_term".into(),
        reason: "the prompt matches a blocked term of category blocked_term".into(),
        scores: Default::default(),
    });
    blocked.timings_ms = timings(&[("download", 80), ("plugins_before", 2), ("total", 95)]);
    blocked.request_sha256 = Some(job.request_sha256());

    let unreadable = InpaintResult::from_error(
        None,
        crate::JobError::MalformedJson {
            message: "expected value at line 1 column 1".into(),
        }
        .to_error_info(),
        model(),
        worker(),
        at,
    );

    let mut small = job.clone();
    small.params.width = Some(64);
    small.params.height = Some(64);
    let refusal = crate::ChainLimits::default_chain()
        .check_size("params.width", 64, 64)
        .expect_err("64x64 is below the watermark's minimum");
    let mut unsupported =
        InpaintResult::from_error(id, refusal.to_error_info(), model(), worker(), at);
    unsupported.request_sha256 = Some(small.request_sha256());
    unsupported.timings_ms = timings(&[("total", 1)]);

    vec![
        ("result-succeeded.json", succeeded),
        ("result-failed.json", failed),
        ("result-blocked.json", blocked),
        ("result-rejected-unreadable.json", unreadable),
        ("result-rejected-unsupported-by-chain.json", unsupported),
    ]
}

#[test]
fn example_results_are_generated_from_the_result_types() {
    let update = std::env::var_os("INPAINT_UPDATE_SCHEMAS").is_some();
    let schema = validator(&result_schema_json());
    let mut stale = Vec::new();
    for (name, result) in example_results() {
        let value = serde_json::to_value(&result).expect("json");
        let errors: Vec<String> = schema.iter_errors(&value).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{name}: {errors:?}");
        let mut text = serde_json::to_string_pretty(&result).expect("json");
        text.push('\n');
        let path = schemas_dir().join("examples/valid").join(name);
        if std::fs::read_to_string(&path).unwrap_or_default() != text {
            if update {
                std::fs::write(&path, &text).expect("write example");
            } else {
                stale.push(name);
            }
        }
        // What a consumer reads back is what the worker wrote.
        let back = InpaintResult::from_json(text.as_bytes()).expect("reads back");
        assert_eq!(back, result, "{name}");
    }
    assert!(
        stale.is_empty(),
        "{stale:?} differ from the result types; regenerate with \
         INPAINT_UPDATE_SCHEMAS=1 cargo test -p inpaint-job"
    );
}
