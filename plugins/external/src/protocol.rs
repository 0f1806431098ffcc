//! The wire protocol `inpaint-stage.v1`, shared by the HTTP and the exec stage: how a hook call
//! becomes a JSON request, and how a JSON response becomes a [`Verdict`] (validated strictly).
//!
//! One request per hook call and per image: `before-inference` once per job, `after-output`
//! once per output image. The full description, with examples, is in `ops/plugins/README.md`;
//! in short:
//!
//! ```json
//! {"protocol": "inpaint-stage.v1", "id": 7, "stage": "word-filter", "hook": "after-output",
//!  "job": {"job_id": "…", "prompt": "…", "negative_prompt": null, "params": {…},
//!          "metadata": {…}, "text_only": false, "reports": [{"stage": "…", "scores": {…}}]},
//!  "image": {"index": 0, "seed": 42, "width": 512, "height": 512, "png_base64": "…",
//!            "metadata": [{"stage": "…", "key": "…", "value": "…"}], "reports": […]}}
//! ```
//!
//! `input_image` (`{"width", "height", "png_base64"}`) is present on `before-inference` only
//! when the stage is configured with `send_input_image = true` and the job has one; `image` is
//! present on `after-output` only. A response is one JSON object:
//!
//! ```json
//! {"protocol": "inpaint-stage.v1", "id": 7, "verdict": "continue"}
//! {"protocol": "inpaint-stage.v1", "verdict": "block", "category": "…", "reason": "…",
//!  "scores": {"name": 0.9}, "rules": ["list/3"]}
//! {"protocol": "inpaint-stage.v1", "verdict": "modify", "changes": [
//!   {"type": "rewrite_prompt", "prompt": "…"}, {"type": "append_negative", "terms": ["…"]},
//!   {"type": "set_negative", "negative_prompt": "…"},
//!   {"type": "add_metadata", "key": "…", "value": "…"},
//!   {"type": "add_scores", "scores": {"name": 0.1}}, {"type": "replace_image", "png_base64": "…"}]}
//! ```
//!
//! Every change may carry `category` and `rules` for the audit log. `id` is optional in a
//! response; when present it must echo the request's. Unknown keys, wrong types, empty
//! required strings, non-finite scores and an image of another size are refused. Which change
//! a hook may make is not checked here: the [`Chain`](inpaint_plugin_api::Chain) refuses a
//! disallowed one (a prompt rewrite after output) as a contract error, as for every stage.
//!
//! Why JSON with base64 PNG rather than multipart: one format for both transports (a line on
//! stdin is JSON anyway), trivially parsed in any language's standard library, and the base64
//! overhead (a third) is small next to inference.

use std::collections::BTreeMap;
use std::io::Cursor;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use image::codecs::png::{CompressionType, FilterType, PngEncoder};
use image::{ImageFormat, ImageReader, Limits, RgbImage};
use inpaint_plugin_api::{
    Block, Change, Hook, JobContext, MetadataEntry, Modification, OutputImage, StageReport, Verdict,
};
use serde::Serialize;
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::error::ExternalError;

/// The protocol name and version, sent in every request and required in every response.
pub const PROTOCOL: &str = "inpaint-stage.v1";

/// Prompts at least this long (in characters, trimmed) are searched for in the text a response
/// wants to put into audit entries and metadata; shorter ones match too much ordinary text.
const LEAK_CHECK_MIN_CHARS: usize = 8;

/// Largest side of a replacement image before inference, where there is no output to compare
/// its size with (the chain refuses such a change anyway; this only bounds the decode).
const MAX_REPLACEMENT_SIDE: u32 = 8192;

/// One request, ready to send, and what its response is checked against.
#[derive(Debug)]
pub(crate) struct Call<'a> {
    /// The request's id; a response that names another is refused.
    pub id: u64,
    /// The hook it is for.
    pub hook: Hook,
    /// The request as compact JSON (no raw newline: one line on stdin).
    pub body: Vec<u8>,
    ctx: &'a JobContext,
    image_size: Option<(u32, u32)>,
}

impl Call<'_> {
    /// Validates a response body and turns it into a verdict.
    pub fn decode(&self, bytes: &[u8]) -> Result<Verdict, ExternalError> {
        decode_response(bytes, self.id, self.ctx, self.image_size)
    }
}

#[derive(Serialize)]
struct WireRequest<'a> {
    protocol: &'static str,
    id: u64,
    stage: &'a str,
    hook: Hook,
    job: WireJob<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    input_image: Option<WireImage>,
    #[serde(skip_serializing_if = "Option::is_none")]
    image: Option<WireOutput<'a>>,
}

#[derive(Serialize)]
struct WireJob<'a> {
    job_id: Uuid,
    prompt: &'a str,
    negative_prompt: Option<&'a str>,
    /// [`JobContext::params_json`]: the job contract's form, keys sorted.
    params: Value,
    metadata: &'a BTreeMap<String, String>,
    text_only: bool,
    reports: &'a [StageReport],
}

impl<'a> WireJob<'a> {
    fn new(ctx: &'a JobContext) -> Self {
        Self {
            job_id: ctx.job_id,
            prompt: &ctx.prompt,
            negative_prompt: ctx.negative_prompt.as_deref(),
            params: ctx.params_json(),
            metadata: &ctx.metadata,
            text_only: ctx.text_only,
            reports: &ctx.reports,
        }
    }
}

#[derive(Serialize)]
struct WireImage {
    width: u32,
    height: u32,
    png_base64: String,
}

#[derive(Serialize)]
struct WireOutput<'a> {
    index: u32,
    seed: u64,
    width: u32,
    height: u32,
    png_base64: String,
    metadata: &'a [MetadataEntry],
    reports: &'a [StageReport],
}

/// The `before-inference` request for `ctx`; the input image goes along when `send_input_image`
/// is set and the job has one.
pub(crate) fn before_inference<'a>(
    stage: &str,
    id: u64,
    ctx: &'a JobContext,
    send_input_image: bool,
) -> Result<Call<'a>, ExternalError> {
    let input_image = match (&ctx.input_image, send_input_image) {
        (Some(image), true) => Some(WireImage {
            width: image.width(),
            height: image.height(),
            png_base64: png_base64(image)?,
        }),
        _ => None,
    };
    let request = WireRequest {
        protocol: PROTOCOL,
        id,
        stage,
        hook: Hook::BeforeInference,
        job: WireJob::new(ctx),
        input_image,
        image: None,
    };
    Ok(Call {
        id,
        hook: Hook::BeforeInference,
        body: to_json(&request)?,
        ctx,
        image_size: None,
    })
}

/// The `after-output` request for one output image.
pub(crate) fn after_output<'a>(
    stage: &str,
    id: u64,
    ctx: &'a JobContext,
    image: &OutputImage,
) -> Result<Call<'a>, ExternalError> {
    let request = WireRequest {
        protocol: PROTOCOL,
        id,
        stage,
        hook: Hook::AfterOutput,
        job: WireJob::new(ctx),
        input_image: None,
        image: Some(WireOutput {
            index: image.index,
            seed: image.seed,
            width: image.image.width(),
            height: image.image.height(),
            png_base64: png_base64(&image.image)?,
            metadata: &image.metadata,
            reports: &image.reports,
        }),
    };
    Ok(Call {
        id,
        hook: Hook::AfterOutput,
        body: to_json(&request)?,
        ctx,
        image_size: Some(image.image.dimensions()),
    })
}

fn to_json(request: &WireRequest<'_>) -> Result<Vec<u8>, ExternalError> {
    // Compact serde_json output escapes every control character, so the request is one line.
    serde_json::to_vec(request).map_err(|e| ExternalError::Request(e.to_string()))
}

/// PNG-encodes an image (fast compression: it is decoded again a few milliseconds later).
fn png_base64(image: &RgbImage) -> Result<String, ExternalError> {
    let mut png = Vec::new();
    image
        .write_with_encoder(PngEncoder::new_with_quality(
            &mut png,
            CompressionType::Fast,
            FilterType::Adaptive,
        ))
        .map_err(|e| ExternalError::Request(format!("PNG: {e}")))?;
    Ok(BASE64.encode(png))
}

/// Validates a response and turns it into a verdict (see the module docs for the format): the
/// one place a stage's reply bytes are read, by both stages and by the fuzz target
/// `external_protocol`. `expected_id` is the request's id; `image_size` the output image's
/// size after output (a replacement must keep it), `None` before inference. Never panics: any
/// input is a verdict or an [`ExternalError::Malformed`].
pub fn decode_response(
    bytes: &[u8],
    expected_id: u64,
    ctx: &JobContext,
    image_size: Option<(u32, u32)>,
) -> Result<Verdict, ExternalError> {
    // serde_json's syntax errors name a position, never the text around it.
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|e| ExternalError::Malformed(format!("not JSON: {e}")))?;
    let Value::Object(object) = &value else {
        return Err(malformed(format!(
            "expected a JSON object, got {}",
            kind(&value)
        )));
    };
    let leak = LeakCheck::new(ctx);
    let mut fields = Fields::new(object, String::new());
    let protocol = fields.required_str("protocol")?;
    if protocol != PROTOCOL {
        return Err(malformed(format!(
            "`protocol` is {}, expected \"{PROTOCOL}\"",
            shown(protocol)
        )));
    }
    if let Some(id) = fields.take("id")
        && id.as_u64() != Some(expected_id)
    {
        return Err(malformed(format!(
            "`id` does not echo the request's id ({expected_id})"
        )));
    }
    let verdict = match fields.required_str("verdict")? {
        "continue" => Verdict::Continue,
        "block" => {
            let block = Block {
                category: fields.required_nonempty("category", &leak)?.to_owned(),
                reason: fields.required_nonempty("reason", &leak)?.to_owned(),
                scores: fields.optional_scores("scores", &leak)?.unwrap_or_default(),
                rules: fields.optional_rules("rules", &leak)?,
            };
            Verdict::Block(block)
        }
        "modify" => {
            let changes = fields.required("changes")?;
            let Value::Array(items) = changes else {
                return Err(malformed(format!(
                    "`changes` must be an array, got {}",
                    kind(changes)
                )));
            };
            if items.is_empty() {
                return Err(malformed(
                    "`changes` is empty (answer \"continue\" to change nothing)".to_owned(),
                ));
            }
            let modifications = items
                .iter()
                .enumerate()
                .map(|(i, item)| modification(item, &format!("changes[{i}]"), &leak, image_size))
                .collect::<Result<Vec<_>, _>>()?;
            Verdict::Modify(modifications)
        }
        other => {
            return Err(malformed(format!(
                "`verdict` is {}, expected \"continue\", \"block\" or \"modify\"",
                shown(other)
            )));
        }
    };
    fields.finish()?;
    Ok(verdict)
}

fn modification(
    item: &Value,
    at: &str,
    leak: &LeakCheck<'_>,
    image_size: Option<(u32, u32)>,
) -> Result<Modification, ExternalError> {
    let Value::Object(object) = item else {
        return Err(malformed(format!(
            "`{at}` must be an object, got {}",
            kind(item)
        )));
    };
    let mut fields = Fields::new(object, format!("{at}."));
    let change = match fields.required_str("type")? {
        "rewrite_prompt" => Change::RewritePrompt(fields.required_str("prompt")?.to_owned()),
        "append_negative" => {
            let terms = fields.required("terms")?;
            let terms = string_array(terms, &format!("{at}.terms"))?;
            if terms.is_empty() {
                return Err(malformed(format!("`{at}.terms` is empty")));
            }
            Change::AppendNegative(terms)
        }
        "set_negative" => Change::SetNegative(fields.required_str("negative_prompt")?.to_owned()),
        "add_metadata" => Change::AddMetadata {
            key: fields.required_nonempty("key", leak)?.to_owned(),
            value: {
                let value = fields.required_str("value")?;
                leak.check(value, &format!("{at}.value"))?;
                value.to_owned()
            },
        },
        "add_scores" => {
            let scores = fields.optional_scores("scores", leak)?.unwrap_or_default();
            if scores.is_empty() {
                return Err(malformed(format!("`{at}.scores` is missing or empty")));
            }
            Change::AddScores(scores)
        }
        "replace_image" => {
            let encoded = fields.required_str("png_base64")?;
            Change::ReplaceImage(decode_png(
                encoded,
                &format!("{at}.png_base64"),
                image_size,
            )?)
        }
        other => {
            return Err(malformed(format!(
                "`{at}.type` is {}, expected one of rewrite_prompt, append_negative, \
                 set_negative, add_metadata, add_scores, replace_image",
                shown(other)
            )));
        }
    };
    let category = match object.contains_key("category") {
        false => None,
        true => Some(fields.required_nonempty("category", leak)?.to_owned()),
    };
    let rules = fields.optional_rules("rules", leak)?;
    fields.finish()?;
    Ok(Modification {
        change,
        category,
        rules,
    })
}

/// Decodes a replacement image: base64, then PNG, then 8-bit RGB; after output it must keep the
/// output's size (later stages and the result's width/height assume it).
fn decode_png(
    encoded: &str,
    at: &str,
    image_size: Option<(u32, u32)>,
) -> Result<RgbImage, ExternalError> {
    let bytes = BASE64
        .decode(encoded)
        .map_err(|e| malformed(format!("`{at}` is not standard padded base64: {e}")))?;
    let not_png = |e: image::ImageError| malformed(format!("`{at}` is not a PNG image: {e}"));
    let (width, height) = ImageReader::with_format(Cursor::new(&bytes), ImageFormat::Png)
        .into_dimensions()
        .map_err(not_png)?;
    if let Some((w, h)) = image_size {
        if (width, height) != (w, h) {
            return Err(malformed(format!(
                "`{at}` is {width}x{height}, the output image is {w}x{h}: a replacement must \
                 keep the size"
            )));
        }
    } else if width > MAX_REPLACEMENT_SIDE || height > MAX_REPLACEMENT_SIDE {
        return Err(malformed(format!("`{at}` is {width}x{height}, too large")));
    }
    let mut reader = ImageReader::with_format(Cursor::new(&bytes), ImageFormat::Png);
    let mut limits = Limits::default();
    limits.max_image_width = Some(width);
    limits.max_image_height = Some(height);
    reader.limits(limits);
    Ok(reader.decode().map_err(not_png)?.to_rgb8())
}

fn malformed(message: String) -> ExternalError {
    ExternalError::Malformed(message)
}

/// The JSON type of a value, for messages (never the value itself).
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

/// A response-supplied word, quoted, if it looks like an identifier; otherwise a placeholder,
/// so that error messages cannot carry prompt text a program echoed back.
fn shown(word: &str) -> String {
    let plain = !word.is_empty()
        && word.len() <= 40
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if plain {
        format!("\"{word}\"")
    } else {
        "an unexpected value".to_owned()
    }
}

fn string_array(value: &Value, at: &str) -> Result<Vec<String>, ExternalError> {
    let Value::Array(items) = value else {
        return Err(malformed(format!(
            "`{at}` must be an array of strings, got {}",
            kind(value)
        )));
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| match item {
            Value::String(s) => Ok(s.clone()),
            other => Err(malformed(format!(
                "`{at}[{i}]` must be a string, got {}",
                kind(other)
            ))),
        })
        .collect()
}

/// Refuses text that contains the job's prompt where the text would reach audit entries,
/// metadata or results (the stage API's rule: prompt text never leaves through a stage).
struct LeakCheck<'a> {
    prompt: Option<&'a str>,
}

impl<'a> LeakCheck<'a> {
    fn new(ctx: &'a JobContext) -> Self {
        let prompt = ctx.prompt.trim();
        Self {
            prompt: (prompt.chars().count() >= LEAK_CHECK_MIN_CHARS).then_some(prompt),
        }
    }

    fn check(&self, text: &str, at: &str) -> Result<(), ExternalError> {
        match self.prompt {
            Some(prompt) if text.contains(prompt) => Err(malformed(format!(
                "`{at}` contains the job's prompt; prompt text must not reach audit entries, \
                 metadata or results"
            ))),
            _ => Ok(()),
        }
    }
}

/// The keys of one JSON object, consumed one by one; [`Fields::finish`] refuses the rest.
struct Fields<'a> {
    object: &'a Map<String, Value>,
    /// Path prefix for messages, e.g. `changes[1].`.
    prefix: String,
    seen: Vec<&'a str>,
}

impl<'a> Fields<'a> {
    fn new(object: &'a Map<String, Value>, prefix: String) -> Self {
        Self {
            object,
            prefix,
            seen: Vec::new(),
        }
    }

    fn take(&mut self, key: &'a str) -> Option<&'a Value> {
        self.seen.push(key);
        self.object.get(key)
    }

    fn required(&mut self, key: &'a str) -> Result<&'a Value, ExternalError> {
        match self.take(key) {
            Some(value) => Ok(value),
            None => Err(malformed(format!("`{}{key}` is missing", self.prefix))),
        }
    }

    fn required_str(&mut self, key: &'a str) -> Result<&'a str, ExternalError> {
        let value = self.required(key)?;
        value.as_str().ok_or_else(|| {
            malformed(format!(
                "`{}{key}` must be a string, got {}",
                self.prefix,
                kind(value)
            ))
        })
    }

    fn required_nonempty(
        &mut self,
        key: &'a str,
        leak: &LeakCheck<'_>,
    ) -> Result<&'a str, ExternalError> {
        let value = self.required_str(key)?;
        if value.trim().is_empty() {
            return Err(malformed(format!("`{}{key}` is empty", self.prefix)));
        }
        leak.check(value, &format!("{}{key}", self.prefix))?;
        Ok(value)
    }

    fn optional_scores(
        &mut self,
        key: &'a str,
        leak: &LeakCheck<'_>,
    ) -> Result<Option<BTreeMap<String, f32>>, ExternalError> {
        let Some(value) = self.take(key) else {
            return Ok(None);
        };
        let at = format!("{}{key}", self.prefix);
        let Value::Object(map) = value else {
            return Err(malformed(format!(
                "`{at}` must be an object of numbers, got {}",
                kind(value)
            )));
        };
        let mut scores = BTreeMap::new();
        for (name, score) in map {
            leak.check(name, &at)?;
            // A finite f64 can still overflow f32; both are refused.
            let score = score
                .as_f64()
                .map(|s| s as f32)
                .filter(|s| s.is_finite())
                .ok_or_else(|| {
                    malformed(format!(
                        "`{at}` has a value that is not a finite number ({})",
                        kind(score)
                    ))
                })?;
            if name.is_empty() {
                return Err(malformed(format!("`{at}` has an empty score name")));
            }
            scores.insert(name.clone(), score);
        }
        Ok(Some(scores))
    }

    fn optional_rules(
        &mut self,
        key: &'a str,
        leak: &LeakCheck<'_>,
    ) -> Result<Vec<String>, ExternalError> {
        let Some(value) = self.take(key) else {
            return Ok(Vec::new());
        };
        let at = format!("{}{key}", self.prefix);
        let rules = string_array(value, &at)?;
        for rule in &rules {
            leak.check(rule, &at)?;
        }
        Ok(rules)
    }

    fn finish(self) -> Result<(), ExternalError> {
        match self
            .object
            .keys()
            .find(|key| !self.seen.contains(&key.as_str()))
        {
            None => Ok(()),
            Some(key) => Err(malformed(format!(
                "unknown key {} in {}",
                shown(key),
                if self.prefix.is_empty() {
                    "the response".to_owned()
                } else {
                    format!("`{}`", self.prefix.trim_end_matches('.'))
                }
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use image::Rgb;
    use serde_json::json;

    use super::*;

    const PROMPT: &str = "a lighthouse on a cliff at dusk";

    fn ctx() -> JobContext {
        let mut ctx = JobContext::new(Uuid::nil(), PROMPT);
        ctx.negative_prompt = Some("blurry".into());
        ctx.params.num_inference_steps = 20;
        ctx.metadata.insert("tenant".into(), "t1".into());
        ctx
    }

    fn decode(response: Value) -> Result<Verdict, ExternalError> {
        decode_response(response.to_string().as_bytes(), 5, &ctx(), Some((4, 3)))
    }

    fn error(response: Value) -> String {
        match decode(response) {
            Ok(verdict) => panic!("accepted: {verdict:?}"),
            Err(e) => e.to_string(),
        }
    }

    fn png(image: &RgbImage) -> String {
        png_base64(image).expect("encode")
    }

    #[test]
    fn requests_carry_the_context_and_the_image() {
        let mut ctx = ctx();
        let call = before_inference("words", 9, &ctx, true).expect("request");
        let request: Value = serde_json::from_slice(&call.body).expect("json");
        assert!(!call.body.contains(&b'\n'));
        assert_eq!(request["protocol"], PROTOCOL);
        assert_eq!(request["id"], 9);
        assert_eq!(request["stage"], "words");
        assert_eq!(request["hook"], "before-inference");
        assert_eq!(request["job"]["prompt"], PROMPT);
        assert_eq!(request["job"]["negative_prompt"], "blurry");
        assert_eq!(request["job"]["params"]["num_inference_steps"], 20);
        assert_eq!(request["job"]["metadata"]["tenant"], "t1");
        assert_eq!(request["job"]["text_only"], false);
        assert_eq!(
            request["job"]["job_id"],
            "00000000-0000-0000-0000-000000000000"
        );
        assert!(request.get("input_image").is_none(), "job has none");
        assert!(request.get("image").is_none());

        ctx.input_image = Some(Arc::new(RgbImage::from_pixel(3, 2, Rgb([9, 8, 7]))));
        let sent = before_inference("words", 1, &ctx, true).expect("request");
        let request: Value = serde_json::from_slice(&sent.body).expect("json");
        assert_eq!(request["input_image"]["width"], 3);
        let b64 = request["input_image"]["png_base64"].as_str().expect("b64");
        let back = decode_png(b64, "x", Some((3, 2))).expect("png");
        assert_eq!(back.get_pixel(2, 1), &Rgb([9, 8, 7]));
        let not_sent = before_inference("words", 1, &ctx, false).expect("request");
        let request: Value = serde_json::from_slice(&not_sent.body).expect("json");
        assert!(request.get("input_image").is_none(), "off by default");

        let mut out = OutputImage::new(2, 77, RgbImage::from_pixel(4, 3, Rgb([1, 2, 3])));
        out.metadata.push(MetadataEntry {
            stage: "w".into(),
            key: "k".into(),
            value: "v".into(),
        });
        let call = after_output("words", 10, &ctx, &out).expect("request");
        let request: Value = serde_json::from_slice(&call.body).expect("json");
        assert_eq!(request["hook"], "after-output");
        assert_eq!(request["image"]["index"], 2);
        assert_eq!(request["image"]["seed"], 77);
        assert_eq!(request["image"]["width"], 4);
        assert_eq!(request["image"]["height"], 3);
        assert_eq!(request["image"]["metadata"][0]["key"], "k");
        assert!(request.get("input_image").is_none());
        let b64 = request["image"]["png_base64"].as_str().expect("b64");
        assert_eq!(decode_png(b64, "x", Some((4, 3))).expect("png"), out.image);
    }

    /// The exact bytes of a request, parameters included: external programs parse this text,
    /// so a change of the parameters' type or of the serializer must not change it.
    #[test]
    fn the_wire_form_of_a_request_is_pinned() {
        // As a producer writes them in a job message (any key order), every field set.
        let params = r#"{"seeds": [7, 8], "num_images": 2, "scheduler": "euler_ancestral",
            "num_inference_steps": 20, "guidance_scale": 5.5, "strength": 0.75, "eta": 0.0,
            "width": 512, "height": 768, "preserve_unmasked": false, "mask_grow_px": 4,
            "mask_feather_px": 2, "crop_to_mask": {"padding_px": 16}}"#;
        let mut ctx = JobContext::new(Uuid::from_u128(0x1234), "a red bicycle");
        ctx.params = serde_json::from_str(params).expect("params");
        ctx.negative_prompt = Some("blurry".into());
        ctx.metadata.insert("tenant".into(), "t1".into());
        ctx.text_only = true;
        ctx.reports.push(StageReport {
            stage: "prompt-policy".into(),
            scores: BTreeMap::from([("hits".into(), 0.0)]),
        });
        let call = before_inference("words", 9, &ctx, true).expect("request");
        let expected = concat!(
            r#"{"protocol":"inpaint-stage.v1","id":9,"stage":"words","hook":"before-inference","#,
            r#""job":{"job_id":"00000000-0000-0000-0000-000000001234","prompt":"a red bicycle","#,
            r#""negative_prompt":"blurry","params":{"crop_to_mask":{"padding_px":16},"eta":0.0,"#,
            r#""guidance_scale":5.5,"height":768,"mask_feather_px":2,"mask_grow_px":4,"#,
            r#""num_images":2,"num_inference_steps":20,"preserve_unmasked":false,"#,
            r#""scheduler":"euler_ancestral","seeds":[7,8],"strength":0.75,"width":512},"#,
            r#""metadata":{"tenant":"t1"},"text_only":true,"#,
            r#""reports":[{"stage":"prompt-policy","scores":{"hits":0.0}}]}}"#,
        );
        assert_eq!(String::from_utf8_lossy(&call.body), expected);
        // The default parameters: absent optional fields stay absent.
        let defaults = JobContext::new(Uuid::nil(), "x");
        let call = before_inference("words", 1, &defaults, false).expect("request");
        let request: Value = serde_json::from_slice(&call.body).expect("json");
        assert_eq!(
            request["job"]["params"].to_string(),
            concat!(
                r#"{"eta":0.0,"guidance_scale":7.5,"mask_feather_px":0,"mask_grow_px":0,"#,
                r#""num_images":1,"num_inference_steps":50,"preserve_unmasked":true,"#,
                r#""scheduler":"pndm","strength":1.0}"#
            )
        );
    }

    #[test]
    fn continue_and_block_decode() {
        assert_eq!(
            decode(json!({"protocol": PROTOCOL, "verdict": "continue"})).expect("ok"),
            Verdict::Continue
        );
        assert_eq!(
            decode(json!({"protocol": PROTOCOL, "id": 5, "verdict": "continue"})).expect("ok"),
            Verdict::Continue
        );
        let verdict = decode(json!({
            "protocol": PROTOCOL, "verdict": "block", "category": "operator_blocklist",
            "reason": "listed word", "scores": {"matches": 2}, "rules": ["list/1"]
        }))
        .expect("ok");
        let Verdict::Block(block) = verdict else {
            panic!("not a block: {verdict:?}");
        };
        assert_eq!(block.category, "operator_blocklist");
        assert_eq!(block.reason, "listed word");
        assert_eq!(block.scores.get("matches"), Some(&2.0));
        assert_eq!(block.rules, vec!["list/1".to_owned()]);
    }

    #[test]
    fn every_change_decodes() {
        let replacement = RgbImage::from_pixel(4, 3, Rgb([200, 100, 50]));
        let verdict = decode(json!({
            "protocol": PROTOCOL, "verdict": "modify", "changes": [
                {"type": "rewrite_prompt", "prompt": "a boat", "category": "c", "rules": ["r"]},
                {"type": "append_negative", "terms": ["text", "logo"]},
                {"type": "set_negative", "negative_prompt": "lowres"},
                {"type": "add_metadata", "key": "policy.version", "value": "3"},
                {"type": "add_scores", "scores": {"brightness": 0.25}},
                {"type": "replace_image", "png_base64": png(&replacement)},
            ]
        }))
        .expect("ok");
        let Verdict::Modify(mods) = verdict else {
            panic!("not a modify: {verdict:?}");
        };
        let changes: Vec<Change> = mods.iter().map(|m| m.change.clone()).collect();
        assert_eq!(
            changes,
            vec![
                Change::RewritePrompt("a boat".into()),
                Change::AppendNegative(vec!["text".into(), "logo".into()]),
                Change::SetNegative("lowres".into()),
                Change::AddMetadata {
                    key: "policy.version".into(),
                    value: "3".into()
                },
                Change::AddScores(BTreeMap::from([("brightness".to_owned(), 0.25)])),
                Change::ReplaceImage(replacement),
            ]
        );
        assert_eq!(mods[0].category.as_deref(), Some("c"));
        assert_eq!(mods[0].rules, vec!["r".to_owned()]);
        assert_eq!(mods[1].category, None);
    }

    #[test]
    fn malformed_responses_are_refused_with_a_path() {
        let cases: Vec<(Value, &str)> = vec![
            (json!([1]), "expected a JSON object, got an array"),
            (json!({"verdict": "continue"}), "`protocol` is missing"),
            (
                json!({"protocol": "inpaint-stage.v0", "verdict": "continue"}),
                "`protocol` is \"inpaint-stage.v0\"",
            ),
            (
                json!({"protocol": PROTOCOL, "id": 4, "verdict": "continue"}),
                "`id` does not echo",
            ),
            (json!({"protocol": PROTOCOL}), "`verdict` is missing"),
            (
                json!({"protocol": PROTOCOL, "verdict": "allow"}),
                "`verdict` is \"allow\"",
            ),
            (
                json!({"protocol": PROTOCOL, "verdict": "continue", "extra": 1}),
                "unknown key \"extra\" in the response",
            ),
            (
                json!({"protocol": PROTOCOL, "verdict": "continue", "category": "x"}),
                "unknown key \"category\"",
            ),
            (
                json!({"protocol": PROTOCOL, "verdict": "block", "reason": "r"}),
                "`category` is missing",
            ),
            (
                json!({"protocol": PROTOCOL, "verdict": "block", "category": " ", "reason": "r"}),
                "`category` is empty",
            ),
            (
                json!({"protocol": PROTOCOL, "verdict": "block", "category": "c", "reason": 3}),
                "`reason` must be a string, got a number",
            ),
            (
                json!({"protocol": PROTOCOL, "verdict": "block", "category": "c", "reason": "r",
                       "scores": {"x": "high"}}),
                "`scores` has a value that is not a finite number (a string)",
            ),
            (
                json!({"protocol": PROTOCOL, "verdict": "block", "category": "c", "reason": "r",
                       "scores": {"x": 1e300}}),
                "not a finite number",
            ),
            (
                json!({"protocol": PROTOCOL, "verdict": "modify"}),
                "`changes` is missing",
            ),
            (
                json!({"protocol": PROTOCOL, "verdict": "modify", "changes": []}),
                "`changes` is empty",
            ),
            (
                json!({"protocol": PROTOCOL, "verdict": "modify", "changes": [{"type": "nuke"}]}),
                "`changes[0].type` is \"nuke\"",
            ),
            (
                json!({"protocol": PROTOCOL, "verdict": "modify",
                       "changes": [{"type": "add_metadata", "key": "k"}]}),
                "`changes[0].value` is missing",
            ),
            (
                json!({"protocol": PROTOCOL, "verdict": "modify",
                       "changes": [{"type": "add_metadata", "key": "k", "value": "v", "x": 1}]}),
                "unknown key \"x\" in `changes[0]`",
            ),
            (
                json!({"protocol": PROTOCOL, "verdict": "modify",
                       "changes": [{"type": "append_negative", "terms": ["a", 2]}]}),
                "`changes[0].terms[1]` must be a string, got a number",
            ),
            (
                json!({"protocol": PROTOCOL, "verdict": "modify",
                       "changes": [{"type": "add_scores", "scores": {}}]}),
                "`changes[0].scores` is missing or empty",
            ),
            (
                json!({"protocol": PROTOCOL, "verdict": "modify",
                       "changes": [{"type": "replace_image", "png_base64": "%%%"}]}),
                "`changes[0].png_base64` is not standard padded base64",
            ),
            (
                json!({"protocol": PROTOCOL, "verdict": "modify",
                       "changes": [{"type": "replace_image", "png_base64": BASE64.encode(b"GIF89a")}]}),
                "`changes[0].png_base64` is not a PNG image",
            ),
            (
                json!({"protocol": PROTOCOL, "verdict": "modify",
                       "changes": [{"type": "replace_image",
                                    "png_base64": png(&RgbImage::new(5, 3))}]}),
                "is 5x3, the output image is 4x3",
            ),
        ];
        for (response, expected) in cases {
            let message = error(response.clone());
            assert!(
                message.starts_with("malformed response: ") && message.contains(expected),
                "{response}: got `{message}`, expected `{expected}`"
            );
        }
        let not_json = decode_response(b"OK\n", 5, &ctx(), None).expect_err("not json");
        assert!(
            not_json
                .to_string()
                .starts_with("malformed response: not JSON")
        );
    }

    #[test]
    fn errors_never_echo_response_text() {
        for response in [
            json!({"protocol": PROTOCOL, "verdict": "maybe: a lighthouse on a cliff"}),
            json!({"protocol": PROTOCOL, "verdict": "continue", "a lighthouse": 1}),
            json!({"protocol": "a lighthouse", "verdict": "continue"}),
        ] {
            let message = error(response);
            assert!(!message.contains("lighthouse"), "{message}");
        }
    }

    #[test]
    fn prompt_text_in_reasons_rules_and_metadata_is_refused() {
        let leaks = [
            json!({"protocol": PROTOCOL, "verdict": "block", "category": "c",
                   "reason": format!("prompt '{PROMPT}' is listed")}),
            json!({"protocol": PROTOCOL, "verdict": "block", "category": "c", "reason": "r",
                   "rules": [PROMPT]}),
            json!({"protocol": PROTOCOL, "verdict": "modify", "changes": [
                {"type": "add_metadata", "key": "seen", "value": PROMPT}]}),
            json!({"protocol": PROTOCOL, "verdict": "modify", "changes": [
                {"type": "add_scores", "scores": {PROMPT: 1.0}}]}),
        ];
        for response in leaks {
            let message = error(response);
            assert!(message.contains("contains the job's prompt"), "{message}");
            assert!(!message.contains(PROMPT), "{message}");
        }
        // A rewrite carries prompt text by nature; it goes to the context, not to the audit.
        let rewrite = json!({"protocol": PROTOCOL, "verdict": "modify", "changes": [
            {"type": "rewrite_prompt", "prompt": format!("{PROMPT}, oil painting")}]});
        assert!(decode(rewrite).is_ok());
        // Short prompts are not searched for: they would match ordinary words.
        let mut short = JobContext::new(Uuid::nil(), "cat");
        short.prompt = "cat".into();
        let response = json!({"protocol": PROTOCOL, "verdict": "block", "category": "category",
                              "reason": "r"});
        assert!(decode_response(response.to_string().as_bytes(), 1, &short, None).is_ok());
    }

    #[test]
    fn shown_quotes_only_identifiers() {
        assert_eq!(shown("inpaint-stage.v2"), "\"inpaint-stage.v2\"");
        assert_eq!(shown("two words"), "an unexpected value");
        assert_eq!(shown(""), "an unexpected value");
        assert_eq!(shown(&"x".repeat(41)), "an unexpected value");
    }
}
