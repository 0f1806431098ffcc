//! S3 limits object keys to 1,024 bytes of UTF-8 and the contract limits `output.prefix` to 512
//! bytes, but JSON Schema's `maxLength` counts characters. These tests hold the parser, the
//! schema and the schema's descriptions to one rule for multibyte text, generated over character
//! widths (1 to 4 bytes) at each limit and just over it.

use inpaint_job::job::MAX_PREFIX_BYTES;
use inpaint_job::{InpaintJob, JobError, job_schema_json};
use serde_json::{Value, json};

/// S3's limit on a key, in bytes.
const MAX_KEY_BYTES: usize = 1024;

/// One character of each UTF-8 width: 1, 2, 3 and 4 bytes.
const WIDTHS: [char; 4] = ['k', 'é', '€', '😀'];

fn base_job() -> Value {
    json!({
        "schema_version": 1,
        "job_id": "0b9c5a52-3f0e-4d8a-9a3e-8f6f4d1c2b7a",
        "image": "s3://inputs/a/image.png",
        "mask": "s3://inputs/a/mask.png",
        "prompt": "a red bicycle",
        "output": {"bucket": "outputs"},
    })
}

fn job_schema() -> Value {
    serde_json::from_str(&job_schema_json()).expect("schema is JSON")
}

/// Texts of exactly `bytes` UTF-8 bytes for each character width, built two ways: all of the
/// one character (topped up with ASCII where its width does not divide `bytes`), and ASCII with
/// the wide character last, so that it straddles the byte before the end.
fn texts_of_bytes(bytes: usize) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for c in WIDTHS {
        let w = c.len_utf8();
        let mut filled: String = std::iter::repeat_n(c, bytes / w).collect();
        filled.push_str(&"a".repeat(bytes % w));
        out.push((format!("{bytes} bytes of {w}-byte characters"), filled));
        let mut last = "a".repeat(bytes - w);
        last.push(c);
        out.push((
            format!("{bytes} bytes ending in a {w}-byte character"),
            last,
        ));
    }
    out
}

/// At the limit, one byte over it, and the limit counted in characters (over it in bytes for
/// every width above 1).
fn texts_around(limit: usize) -> Vec<(String, String)> {
    let mut texts = texts_of_bytes(limit);
    texts.extend(texts_of_bytes(limit + 1));
    texts.extend(WIDTHS.iter().map(|&c| {
        let text: String = std::iter::repeat_n(c, limit).collect();
        (format!("{limit} {}-byte characters", c.len_utf8()), text)
    }));
    texts
}

/// One limited field: its name in errors, its byte limit, the job carrying a text there, and
/// the characters the schema's `maxLength` counts for that text.
struct Field {
    name: &'static str,
    limit: usize,
    job: fn(&str) -> Value,
    schema_chars: fn(&str) -> usize,
    /// Where its `maxLength` and description are in the job schema.
    schema_at: fn(&Value) -> &Value,
}

fn fields() -> [Field; 3] {
    fn object_ref(schema: &Value) -> &Value {
        &schema["$defs"]["ObjectRef"]
    }
    // The schema bounds the whole reference: `s3://inputs/` is 12 characters.
    fn reference_chars(key: &str) -> usize {
        key.chars().count() + "s3://inputs/".len()
    }
    [
        Field {
            name: "image",
            limit: MAX_KEY_BYTES,
            job: |key| {
                let mut job = base_job();
                job["image"] = format!("s3://inputs/{key}").into();
                job
            },
            schema_chars: reference_chars,
            schema_at: object_ref,
        },
        Field {
            name: "mask",
            limit: MAX_KEY_BYTES,
            job: |key| {
                let mut job = base_job();
                job["mask"] = format!("s3://inputs/{key}").into();
                job
            },
            schema_chars: reference_chars,
            schema_at: object_ref,
        },
        Field {
            name: "output.prefix",
            limit: MAX_PREFIX_BYTES,
            job: |prefix| {
                let mut job = base_job();
                job["output"]["prefix"] = prefix.into();
                job
            },
            schema_chars: |prefix| prefix.chars().count(),
            schema_at: |schema| &schema["$defs"]["OutputSpec"]["properties"]["prefix"],
        },
    ]
}

/// The parser accepts exactly the texts that fit in bytes, and refuses the others with
/// `invalid_parameter` naming the field, the byte count and the limit, in a short message (not
/// the 1,000-character text again).
#[test]
fn the_parser_counts_utf8_bytes() {
    let mut checked = 0;
    for field in fields() {
        for (what, text) in texts_around(field.limit) {
            let bytes = text.len();
            let job = (field.job)(&text);
            let parsed = InpaintJob::from_json(&serde_json::to_vec(&job).expect("bytes"));
            let name = field.name;
            if bytes <= field.limit {
                let job = parsed.unwrap_or_else(|e| panic!("{name}, {what}: refused: {e}"));
                // Its output keys (prefix + job id + name) are valid S3 keys too.
                job.output_key(0).expect("an output key");
            } else {
                match parsed {
                    Err(JobError::InvalidParameter { field: at, message }) => {
                        assert_eq!(at, name, "{what}: {message}");
                        assert!(
                            message.contains(&format!("{bytes} bytes"))
                                && message.contains(&field.limit.to_string()),
                            "{name}, {what}: the byte count and the limit: {message}"
                        );
                        assert!(
                            message.len() < 200,
                            "{name}, {what}: a short message: {message}"
                        );
                        let error = JobError::InvalidParameter { field: at, message };
                        assert_eq!(error.code().as_str(), "invalid_parameter");
                    }
                    other => panic!("{name}, {what}: expected invalid_parameter, got {other:?}"),
                }
            }
            checked += 1;
        }
    }
    assert_eq!(checked, 3 * 20, "every generated case ran");
}

/// The schema never refuses what the parser accepts; it refuses an over-long text only when its
/// characters alone exceed `maxLength` (it cannot count bytes), and its descriptions say so.
#[test]
fn the_schema_bounds_characters_and_states_the_byte_rule() {
    let schema_value = job_schema();
    let validator = jsonschema::options()
        .should_validate_formats(true)
        .build(&schema_value)
        .expect("schema compiles");
    for field in fields() {
        let at = (field.schema_at)(&schema_value);
        let max_chars = at["maxLength"].as_u64().expect("maxLength") as usize;
        let description = at["description"].as_str().expect("a description");
        let limit = field.limit.to_string();
        let limit_shown = format!("{},{:03}", field.limit / 1000, field.limit % 1000);
        assert!(
            (description.contains(&format!("{limit} bytes"))
                || description.contains(&format!("{limit_shown} bytes")))
                && description.contains("UTF-8")
                && description.contains("invalid_parameter"),
            "{}: the description states the byte rule: {description}",
            field.name
        );
        for (what, text) in texts_around(field.limit) {
            let job = (field.job)(&text);
            let accepted = validator.is_valid(&job);
            if text.len() <= field.limit {
                assert!(
                    accepted,
                    "{}, {what}: the schema refuses a valid job",
                    field.name
                );
            } else {
                assert_eq!(
                    accepted,
                    (field.schema_chars)(&text) <= max_chars,
                    "{}, {what}",
                    field.name
                );
            }
        }
    }
}
