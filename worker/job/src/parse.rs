//! Reading job messages: bytes → [`InpaintJob`], sorting every failure into one of the three
//! [`JobError`] classes, and [`peek_job_id`] for answering messages that failed.

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::JobError;
use crate::id::JobId;
use crate::job::{InpaintJob, JOB_SCHEMA_VERSION, unsupported_version};

/// Largest job message accepted, in bytes. A full job with every field at its limit is well
/// below this; anything bigger is refused before parsing.
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024;

impl InpaintJob {
    /// Reads and checks a job message.
    ///
    /// - bytes that are not JSON → [`JobError::MalformedJson`];
    /// - JSON that is not a v1 job (missing, unknown or mistyped field, bad UUID or `s3://`
    ///   reference, unknown enum value) → [`JobError::SchemaViolation`] with the path;
    /// - a job whose values break a rule (see [`InpaintJob::validate`]), or a `schema_version`
    ///   other than 1 → [`JobError::InvalidParameter`] naming the field.
    ///
    /// The schema version is checked first, so a v2 job gets "unsupported schema_version 2"
    /// rather than a complaint about its new fields.
    pub fn from_json(bytes: &[u8]) -> Result<Self, JobError> {
        let value = to_value(bytes)?;
        let Value::Object(fields) = &value else {
            return Err(JobError::SchemaViolation {
                path: "job".into(),
                message: format!("a job must be a JSON object, got {}", kind(&value)),
            });
        };
        if let Some(version) = fields.get("schema_version").and_then(Value::as_u64)
            && version != u64::from(JOB_SCHEMA_VERSION)
        {
            return Err(unsupported_version(version));
        }
        let value = integers_as_integers(value);
        let job: Self = from_value(value.clone()).map_err(|e| classify(e, &value))?;
        job.validate()?;
        Ok(job)
    }

    /// The job as JSON bytes (producers' side; absent options are left out).
    pub fn to_json(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(self)
    }
}

/// Best-effort `job_id` of a message that may have failed to parse, so the worker can still
/// publish a result for it.
///
/// Reads the top-level `job_id` of any JSON object, whatever else is wrong with it. For bytes
/// that are not JSON (say, a truncated message) it looks for the first `"job_id": "<uuid>"`.
/// `None` when there is no readable UUID.
pub fn peek_job_id(bytes: &[u8]) -> Option<JobId> {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(value) => value.get("job_id")?.as_str()?.parse().ok(),
        Err(_) => scan_job_id(bytes),
    }
}

/// Finds `"job_id"`, an optional-whitespace `:`, and a quoted UUID in raw bytes.
fn scan_job_id(bytes: &[u8]) -> Option<JobId> {
    const NEEDLE: &[u8] = b"\"job_id\"";
    let start = bytes.windows(NEEDLE.len()).position(|w| w == NEEDLE)? + NEEDLE.len();
    let rest = bytes.get(start..)?;
    let rest = rest.get(rest.iter().position(|b| !b.is_ascii_whitespace())?..)?;
    let rest = rest.strip_prefix(b":")?;
    let rest = rest.get(rest.iter().position(|b| !b.is_ascii_whitespace())?..)?;
    let rest = rest.strip_prefix(b"\"")?;
    let end = rest.iter().position(|&b| b == b'"')?;
    std::str::from_utf8(rest.get(..end)?).ok()?.parse().ok()
}

/// Bytes → JSON value, with the size limit; only syntax errors are `MalformedJson`.
pub(crate) fn to_value(bytes: &[u8]) -> Result<Value, JobError> {
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(JobError::SchemaViolation {
            path: "job".into(),
            message: format!(
                "message is {} bytes, more than the {MAX_MESSAGE_BYTES} accepted",
                bytes.len()
            ),
        });
    }
    serde_json::from_slice(bytes).map_err(|e| JobError::MalformedJson {
        message: e.to_string(),
    })
}

/// JSON value → typed message; every failure is a `SchemaViolation` at the failing path.
pub(crate) fn from_value<T: DeserializeOwned>(value: Value) -> Result<T, JobError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { "job".to_owned() } else { path };
        JobError::SchemaViolation {
            path,
            message: e.into_inner().to_string(),
        }
    })
}

/// JSON Schema counts `1.0` as an integer; so does the parser: every integer-valued number that
/// fits an `i64` or `u64` is rewritten as that integer before typed deserialisation (a float
/// field such as `guidance_scale` reads the integer back as the same float).
fn integers_as_integers(value: Value) -> Value {
    match value {
        Value::Number(n) if !n.is_i64() && !n.is_u64() => {
            let Some(f) = n.as_f64() else {
                return Value::Number(n);
            };
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let as_int = if f.fract() != 0.0 || !f.is_finite() {
                None
            } else if (0.0..18_446_744_073_709_551_616.0).contains(&f) {
                Some(Value::from(f as u64))
            } else if (-9_223_372_036_854_775_808.0..0.0).contains(&f) {
                Some(Value::from(f as i64))
            } else {
                None
            };
            as_int.unwrap_or(Value::Number(n))
        }
        Value::Array(items) => Value::Array(items.into_iter().map(integers_as_integers).collect()),
        Value::Object(fields) => Value::Object(
            fields
                .into_iter()
                .map(|(k, v)| (k, integers_as_integers(v)))
                .collect(),
        ),
        other => other,
    }
}

/// Re-sorts a typed-deserialisation failure by the value at its path, so the error class
/// follows the documented rule rather than the Rust type that happened to refuse it:
///
/// - an integer the field's type cannot hold (negative, or above its range) breaks a range:
///   `invalid_parameter`, as the same field's out-of-range values do;
/// - an `s3://` reference whose bucket or key breaks a storage rule (Unicode control
///   characters, keys over 1024 bytes, `..` in bucket names) breaks a rule, as the same rules on
///   `output.bucket` and `output.prefix` do: `invalid_parameter`. A string that is not an
///   `s3://` reference at all stays a `schema_violation`.
fn classify(error: JobError, value: &Value) -> JobError {
    let JobError::SchemaViolation { path, message } = error else {
        return error;
    };
    match value_at(value, &path) {
        Some(Value::Number(n)) if n.is_i64() || n.is_u64() || integral(n) => {
            JobError::invalid(path, format!("{n} is out of range: {message}"))
        }
        // Inside an internally tagged enum (`output.format`) the path stops at the enum: read
        // serde's message instead ("invalid value: integer `-1`", or an integral float).
        Some(Value::Object(_)) if integer_out_of_range(&message) => {
            JobError::invalid(path, format!("out of range: {message}"))
        }
        Some(Value::String(text))
            if (path == "image" || path == "mask") && text.starts_with("s3://") =>
        {
            // The storage rule's reason alone ("key is 1025 bytes, more than S3's 1024"):
            // serde's message repeats the whole reference, up to 1,100 characters of it.
            let message = match text.parse::<inpaint_storage::ObjectRef>() {
                Err(inpaint_storage::StorageError::InvalidRef { reason, .. }) => reason,
                _ => message,
            };
            JobError::invalid(path, message)
        }
        _ => JobError::SchemaViolation { path, message },
    }
}

/// Whether serde's message is about an integer its type cannot hold.
fn integer_out_of_range(message: &str) -> bool {
    if message.starts_with("invalid value: integer") {
        return true;
    }
    message
        .strip_prefix("invalid type: floating point `")
        .and_then(|rest| rest.split('`').next())
        .and_then(|n| n.parse::<f64>().ok())
        .is_some_and(|f| f.is_finite() && f.fract() == 0.0)
}

fn integral(n: &serde_json::Number) -> bool {
    n.as_f64()
        .is_some_and(|f| f.is_finite() && f.fract() == 0.0)
}

/// The value at a `serde_path_to_error` path such as `params.seeds[1]`.
fn value_at<'a>(root: &'a Value, path: &str) -> Option<&'a Value> {
    let mut at = root;
    for segment in path.split('.') {
        let (name, indices) = match segment.find('[') {
            Some(i) => segment.split_at(i),
            None => (segment, ""),
        };
        if !name.is_empty() {
            at = at.get(name)?;
        }
        for index in indices.split('[').filter(|s| !s.is_empty()) {
            at = at.get(index.strip_suffix(']')?.parse::<usize>().ok()?)?;
        }
    }
    Some(at)
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0b9c5a52-3f0e-4d8a-9a3e-8f6f4d1c2b7a";

    fn minimal() -> Value {
        serde_json::json!({
            "schema_version": 1,
            "job_id": ID,
            "image": "s3://inputs/a/image.png",
            "mask": "s3://inputs/a/mask.png",
            "prompt": "a red bicycle",
            "output": {"bucket": "outputs"},
        })
    }

    fn parse(value: &Value) -> Result<InpaintJob, JobError> {
        InpaintJob::from_json(&serde_json::to_vec(value).expect("bytes"))
    }

    fn schema_path(value: &Value) -> (String, String) {
        match parse(value) {
            Err(JobError::SchemaViolation { path, message }) => (path, message),
            other => panic!("expected SchemaViolation, got {other:?}"),
        }
    }

    #[test]
    fn minimal_job_gets_the_defaults() {
        let job = parse(&minimal()).expect("valid");
        assert_eq!(job.params, crate::InpaintParams::default());
        assert_eq!(job.output.prefix, "");
        assert!(!job.progress);
        assert!(job.metadata.is_empty());
    }

    #[test]
    fn round_trips_through_to_json() {
        let mut value = minimal();
        value["params"] = serde_json::json!({"seeds": [1, 2], "num_images": 2, "width": 512});
        value["output"]["format"] = serde_json::json!({"type": "jpeg"});
        value["expires_at"] = serde_json::json!("2030-01-01T12:00:00+02:00");
        let job = parse(&value).expect("valid");
        assert_eq!(job.output.format, crate::OutputFormat::Jpeg { quality: 90 });
        assert_eq!(
            job.expires_at.map(|t| t.to_rfc3339()),
            Some("2030-01-01T10:00:00+00:00".into())
        );
        let again = InpaintJob::from_json(&job.to_json().expect("serialize")).expect("reparse");
        assert_eq!(again, job);
    }

    #[test]
    fn not_json_is_malformed() {
        for bytes in [&b"hello"[..], b"{\"job_id\": ", b"", b"\xff\xfe"] {
            assert!(
                matches!(
                    InpaintJob::from_json(bytes),
                    Err(JobError::MalformedJson { .. })
                ),
                "{bytes:?}"
            );
        }
    }

    #[test]
    fn wrong_shapes_are_schema_violations_with_a_path() {
        let (path, message) = schema_path(&serde_json::json!([1, 2]));
        assert_eq!(path, "job");
        assert!(message.contains("an array"), "{message}");

        let mut v = minimal();
        v["colour"] = "red".into();
        let (path, message) = schema_path(&v);
        assert!(
            message.contains("unknown field `colour`"),
            "{path}: {message}"
        );

        let mut v = minimal();
        v["params"] = serde_json::json!({"num_images": "two"});
        let (path, _) = schema_path(&v);
        assert_eq!(path, "params.num_images");

        let mut v = minimal();
        v["params"] = serde_json::json!({"seeds": [1, 2.5], "num_images": 2});
        let (path, _) = schema_path(&v);
        assert_eq!(path, "params.seeds[1]");

        let mut v = minimal();
        v["image"] = "http://inputs/a.png".into();
        let (path, message) = schema_path(&v);
        assert_eq!(path, "image");
        assert!(message.contains("s3://"), "{message}");

        let mut v = minimal();
        v["job_id"] = "1234".into();
        assert_eq!(schema_path(&v).0, "job_id");

        let mut v = minimal();
        v["params"] = serde_json::json!({"scheduler": "lms"});
        assert_eq!(schema_path(&v).0, "params.scheduler");

        let mut v = minimal();
        v["output"]["format"] = serde_json::json!({"type": "png", "quality": 80});
        assert!(schema_path(&v).0.starts_with("output.format"));

        let mut v = minimal();
        v.as_object_mut().expect("object").remove("prompt");
        let (_, message) = schema_path(&v);
        assert!(message.contains("missing field `prompt`"), "{message}");

        let mut v = minimal();
        v["schema_version"] = "1".into();
        assert_eq!(schema_path(&v).0, "schema_version");

        let big = vec![b' '; MAX_MESSAGE_BYTES + 1];
        assert!(matches!(
            InpaintJob::from_json(&big),
            Err(JobError::SchemaViolation { .. })
        ));
    }

    #[test]
    fn a_newer_version_is_named_before_its_fields() {
        let mut v = minimal();
        v["schema_version"] = 2.into();
        v["a_v2_field"] = true.into();
        match parse(&v) {
            Err(JobError::InvalidParameter { field, message }) => {
                assert_eq!(field, "schema_version");
                assert!(
                    message.contains("unsupported schema_version 2"),
                    "{message}"
                );
                assert!(message.contains("schema_version 1"), "{message}");
            }
            other => panic!("expected InvalidParameter, got {other:?}"),
        }
    }

    #[test]
    fn null_means_absent() {
        let mut v = minimal();
        v["negative_prompt"] = Value::Null;
        v["params"] = serde_json::json!({"seed": null, "seeds": [5]});
        let job = parse(&v).expect("valid");
        assert_eq!(job.per_image_seeds(0), vec![5]);
    }

    #[test]
    fn peeks_job_ids_from_broken_messages() {
        let id: JobId = ID.parse().expect("uuid");
        let shapes = [
            format!(r#"{{"job_id": "{ID}", "prompt": 7}}"#),
            format!(r#"{{"schema_version": 9, "job_id":"{ID}"}}"#),
            format!(r#"{{"job_id" :  "{ID}", "prompt": "trunc"#),
            format!("garbage \"job_id\":\"{ID}\" more garbage"),
        ];
        for text in shapes {
            assert_eq!(peek_job_id(text.as_bytes()), Some(id), "{text}");
        }
        for text in [
            "not json",
            r#"{"job_id": 5}"#,
            r#"{"job_id": "nope"}"#,
            r#"{"nested": {"job_id": "0b9c5a52-3f0e-4d8a-9a3e-8f6f4d1c2b7a"}}"#,
            r#"[1"#,
            r#""job_id":"#,
        ] {
            assert_eq!(peek_job_id(text.as_bytes()), None, "{text}");
        }
    }
}
