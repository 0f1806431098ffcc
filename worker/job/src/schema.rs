//! The JSON Schemas (draft 2020-12) generated from the Rust types, and the schema pieces the
//! types borrow (`s3://` references, bucket names, hashes).
//!
//! The committed files in `schemas/` are these functions' output; a test fails when they drift.
//! Regenerate with `INPAINT_UPDATE_SCHEMAS=1 cargo test -p inpaint-job`.

use std::borrow::Cow;

use schemars::generate::SchemaSettings;
use schemars::transform::RestrictFormats;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};

use crate::job::InpaintJob;
use crate::messages::{CancelRequest, ProgressEvent};
use crate::result::InpaintResult;

/// S3 bucket names: 3–63 lowercase letters, digits, `-` and `.`, starting and ending with a
/// letter or digit.
pub(crate) const BUCKET_PATTERN: &str = "^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$";

/// `s3://bucket/key` with non-empty key segments that are not `.` or `..` and hold no ASCII
/// control characters (the Rust parser also refuses Unicode control characters and `..` in
/// bucket names, and keys over 1024 bytes).
pub(crate) const S3_URI_PATTERN: &str = concat!(
    "^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]/",
    r"(?!\.\.?(/|$))[^/\x00-\x1f\x7f]+",
    r"(/(?!\.\.?(/|$))[^/\x00-\x1f\x7f]+)*$",
);

/// An output key prefix: key segments as in [`S3_URI_PATTERN`], one optional trailing `/`, or
/// empty.
pub(crate) const PREFIX_PATTERN: &str = concat!(
    r"^((?!\.\.?(/|$))[^/\x00-\x1f\x7f]+",
    r"(/(?!\.\.?(/|$))[^/\x00-\x1f\x7f]+)*/?)?$",
);

/// A SHA-256 digest in lowercase hex.
pub(crate) const SHA256_PATTERN: &str = "^[0-9a-f]{64}$";

/// Stands in for [`inpaint_storage::ObjectRef`] in schemas (`#[schemars(with = "S3Uri")]`):
/// that crate does not depend on schemars.
pub(crate) struct S3Uri;

impl JsonSchema for S3Uri {
    fn schema_name() -> Cow<'static, str> {
        "ObjectRef".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "An object in S3-compatible storage: `s3://bucket/key`. The key is at \
                most 1,024 bytes of UTF-8 (S3's limit). `maxLength` counts characters, so it \
                bounds only the whole reference: a job whose key is over 1,024 bytes passes \
                this schema and is refused by the worker with `invalid_parameter`.",
            "type": "string",
            "pattern": S3_URI_PATTERN,
            "maxLength": 1100,
        })
    }
}

fn schema_for<T: JsonSchema>() -> String {
    // Only standard formats (uuid, date-time): schemars' `uint32` and friends make strict
    // validators such as Ajv refuse the whole schema.
    let generator = SchemaSettings::draft2020_12()
        .with_transform(RestrictFormats::default())
        .into_generator();
    let schema = generator.into_root_schema_for::<T>();
    let mut text = serde_json::to_string_pretty(&schema)
        .unwrap_or_else(|e| format!("{{\"error\": \"schema did not serialize: {e}\"}}"));
    text.push('\n');
    text
}

/// The JSON Schema of [`InpaintJob`] v1, pretty-printed with a trailing newline: the content
/// of `schemas/inpaint-job.v1.schema.json`.
pub fn job_schema_json() -> String {
    schema_for::<InpaintJob>()
}

/// The JSON Schema of [`InpaintResult`] v1: the content of
/// `schemas/inpaint-result.v1.schema.json`.
pub fn result_schema_json() -> String {
    schema_for::<InpaintResult>()
}

/// The JSON Schema of [`ProgressEvent`] v1: `schemas/progress-event.v1.schema.json`.
pub fn progress_schema_json() -> String {
    schema_for::<ProgressEvent>()
}

/// The JSON Schema of [`CancelRequest`] v1: `schemas/cancel-request.v1.schema.json`.
pub fn cancel_schema_json() -> String {
    schema_for::<CancelRequest>()
}

/// A committed schema: its file name under `schemas/` and the function that generates it.
pub type SchemaFile = (&'static str, fn() -> String);

/// Every committed schema.
pub const SCHEMA_FILES: [SchemaFile; 4] = [
    ("inpaint-job.v1.schema.json", job_schema_json),
    ("inpaint-result.v1.schema.json", result_schema_json),
    ("progress-event.v1.schema.json", progress_schema_json),
    ("cancel-request.v1.schema.json", cancel_schema_json),
];

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use serde_json::Value;

    use super::*;
    use crate::error::JobError;

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

    #[test]
    fn committed_schemas_match_the_types() {
        let update = std::env::var_os("INPAINT_UPDATE_SCHEMAS").is_some();
        let mut stale = Vec::new();
        for (name, generate) in SCHEMA_FILES {
            let path = schemas_dir().join(name);
            let fresh = generate();
            let committed = std::fs::read_to_string(&path).unwrap_or_default();
            if committed == fresh {
                continue;
            }
            if update {
                std::fs::write(&path, &fresh).expect("write schema");
                continue;
            }
            let line = committed
                .lines()
                .zip(fresh.lines())
                .position(|(a, b)| a != b)
                .unwrap_or_else(|| committed.lines().count().min(fresh.lines().count()));
            stale.push(format!(
                "{name}: first difference at line {}:\n  committed: {}\n  generated: {}",
                line + 1,
                committed.lines().nth(line).unwrap_or("<end of file>"),
                fresh.lines().nth(line).unwrap_or("<end of file>"),
            ));
        }
        assert!(
            stale.is_empty(),
            "committed schemas differ from the Rust types:\n{}\n\
             Regenerate with: INPAINT_UPDATE_SCHEMAS=1 cargo test -p inpaint-job",
            stale.join("\n")
        );
    }

    #[test]
    fn schemas_are_draft_2020_12_and_compile() {
        for (name, generate) in SCHEMA_FILES {
            let text = generate();
            let value: Value = serde_json::from_str(&text).expect("schema is JSON");
            assert_eq!(
                value["$schema"], "https://json-schema.org/draft/2020-12/schema",
                "{name}"
            );
            assert!(
                jsonschema::meta::is_valid(&value),
                "{name} is not a valid schema"
            );
            validator(&text);
        }
    }

    #[test]
    fn s3_pattern_agrees_with_object_ref() {
        let schema = validator(
            &serde_json::json!({"type": "string", "pattern": S3_URI_PATTERN}).to_string(),
        );
        for text in [
            "s3://bucket/key.png",
            "s3://my.bucket-1/a/b c/d.png",
            "s3://bucket/.hidden",
            "s3://bucket/a/...",
            "http://bucket/key",
            "s3://bucket",
            "s3://bucket/",
            "s3://Bucket/key",
            "s3://ab/key",
            "s3://-ab/key",
            "s3://bucket/../etc",
            "s3://bucket/a/./b",
            "s3://bucket/a//b",
            "s3://bucket/a/",
            "s3://bucket/a\nb",
        ] {
            let rust = text.parse::<inpaint_storage::ObjectRef>().is_ok();
            let json = schema.is_valid(&Value::from(text));
            assert_eq!(
                json, rust,
                "{text:?}: schema says {json}, ObjectRef says {rust}"
            );
        }
    }

    /// What an invalid example is expected to do: its `.expect` file holds the error class and,
    /// on a second line, `schema: rejects` or `schema: accepts` (a rule only Rust checks).
    struct Expectation {
        code: String,
        schema_rejects: bool,
    }

    fn read_expectation(path: &Path) -> Expectation {
        let text =
            std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let mut code = None;
        let mut schema_rejects = None;
        for line in text.lines() {
            match line.split_once(':').map(|(k, v)| (k.trim(), v.trim())) {
                Some(("error", value)) => code = Some(value.to_owned()),
                Some(("schema", "rejects")) => schema_rejects = Some(true),
                Some(("schema", "accepts")) => schema_rejects = Some(false),
                _ if line.trim().is_empty() || line.starts_with('#') => {}
                _ => panic!("{}: unexpected line {line:?}", path.display()),
            }
        }
        Expectation {
            code: code.unwrap_or_else(|| panic!("{}: no `error:` line", path.display())),
            schema_rejects: schema_rejects
                .unwrap_or_else(|| panic!("{}: no `schema:` line", path.display())),
        }
    }

    fn examples(kind: &str) -> Vec<PathBuf> {
        let dir = schemas_dir().join("examples").join(kind);
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|entry| entry.expect("dir entry").path())
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .collect();
        files.sort();
        files
    }

    /// A valid example's kind comes from its name: `job-*`, `result-*`, `progress-*`,
    /// `cancel-*`. Returns the schema text and the Rust parser's verdict.
    fn check_with_rust(path: &Path, bytes: &[u8]) -> (String, Result<(), String>) {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let kind = name.split('-').next().unwrap_or_default();
        match kind {
            "job" => (
                job_schema_json(),
                InpaintJob::from_json(bytes)
                    .map(drop)
                    .map_err(|e| e.to_string()),
            ),
            "result" => (
                result_schema_json(),
                InpaintResult::from_json(bytes)
                    .map(drop)
                    .map_err(|e| e.to_string()),
            ),
            "progress" => (
                progress_schema_json(),
                serde_json::from_slice::<ProgressEvent>(bytes)
                    .map(drop)
                    .map_err(|e| e.to_string()),
            ),
            "cancel" => (
                cancel_schema_json(),
                CancelRequest::from_json(bytes)
                    .map(drop)
                    .map_err(|e| e.to_string()),
            ),
            _ => panic!("{name}: name it job-*, result-*, progress-* or cancel-*"),
        }
    }

    #[test]
    fn valid_examples_pass_the_schema_and_the_parser() {
        let files = examples("valid");
        assert!(files.len() >= 7, "only {} valid examples", files.len());
        for path in files {
            let bytes = std::fs::read(&path).expect("read example");
            let value: Value = serde_json::from_slice(&bytes)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let (schema, rust) = check_with_rust(&path, &bytes);
            let errors: Vec<String> = validator(&schema)
                .iter_errors(&value)
                .map(|e| format!("{e} at {}", e.instance_path()))
                .collect();
            assert!(
                errors.is_empty(),
                "{}: schema errors {errors:?}",
                path.display()
            );
            if let Err(e) = rust {
                panic!("{}: parser refused it: {e}", path.display());
            }
        }
    }

    #[test]
    fn prefix_pattern_agrees_with_the_parser() {
        let schema = validator(
            &serde_json::json!({"type": "string", "pattern": PREFIX_PATTERN}).to_string(),
        );
        let base = InpaintJob::from_json(
            br#"{"schema_version": 1, "job_id": "0b9c5a52-3f0e-4d8a-9a3e-8f6f4d1c2b7a",
                 "prompt": "", "output": {"bucket": "outputs"}}"#,
        )
        .expect("valid base job");
        for prefix in [
            "",
            "a",
            "a/",
            "a/b/c",
            "a/b/",
            ".well-known/x",
            "a/...",
            "/a",
            "a//",
            "a//b",
            "..",
            "a/./b",
            "a/..",
            "a\tb",
            "a\u{0}",
        ] {
            let mut job = base.clone();
            job.output.prefix = prefix.to_owned();
            let rust = job.validate().is_ok();
            let json = schema.is_valid(&Value::from(prefix));
            assert_eq!(
                json, rust,
                "{prefix:?}: schema says {json}, parser says {rust}"
            );
        }
    }

    #[test]
    fn invalid_examples_fail_with_their_expected_class() {
        let job_schema = validator(&job_schema_json());
        let files = examples("invalid");
        assert!(files.len() >= 8, "only {} invalid examples", files.len());
        let mut rust_only = Vec::new();
        for path in files {
            let expect = read_expectation(&path.with_extension("expect"));
            let bytes = std::fs::read(&path).expect("read example");
            let error = match InpaintJob::from_json(&bytes) {
                Ok(_) => panic!("{}: the parser accepted it", path.display()),
                Err(e) => e,
            };
            assert_eq!(
                error.code().as_str(),
                expect.code,
                "{}: got {error}",
                path.display()
            );
            let schema_rejects = match serde_json::from_slice::<Value>(&bytes) {
                Ok(value) => !job_schema.is_valid(&value),
                Err(_) => true,
            };
            assert_eq!(
                schema_rejects,
                expect.schema_rejects,
                "{}: the schema {} it",
                path.display(),
                if schema_rejects { "rejects" } else { "accepts" }
            );
            if !schema_rejects {
                rust_only.push(path);
            }
            assert!(
                !matches!(error, JobError::MalformedJson { .. }) || expect.code == "malformed_json"
            );
        }
        // Rules only the parser enforces are listed in schemas/README.md; keep them few.
        assert!(rust_only.len() <= 4, "rust-only rules: {rust_only:?}");
    }
}
