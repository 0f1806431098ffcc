//! The HTTP stage: POSTs each request of the protocol (`inpaint-stage.v1`) as JSON to a
//! configured URL and reads the verdict from the response body.
//!
//! Client: ureq 3, blocking. The stage runs on the worker's inference thread and the `Stage`
//! trait is synchronous, so a blocking client with its own timeouts fits; an async client would
//! need a runtime of its own for nothing. One agent per stage keeps connections alive between
//! calls.
//!
//! What counts as what (see [`crate::common`]): connection errors, timeouts, a broken HTTP
//! exchange and status 5xx, 408 and 429 are transient (retried, then `on_failure`); any other
//! non-2xx status (a 401 from a wrong token, a 404 from a wrong path) and a body that is not
//! in the protocol are permanent stage errors. Redirects are not followed (a POST body cannot
//! be replayed safely), so a 3xx is permanent too. No proxy is used, whatever the environment
//! says: verdict services are internal, and the worker's `HTTP_PROXY` is meant for other
//! traffic.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use inpaint_plugin_api::{Hook, JobContext, OutputImage, Stage, StageError, Verdict};
use serde::{Deserialize, Serialize};
use ureq::Agent;
use ureq::http::{HeaderName, HeaderValue, Uri};

use crate::common::{AttemptError, Common, CommonSettings, OnFailure};
use crate::error::ExternalError;
use crate::protocol::Call;

/// Default largest response body: a replaced 2048×2048 RGB image as base64 PNG fits.
pub const DEFAULT_MAX_RESPONSE_BYTES: u64 = 64 * 1024 * 1024;

/// Headers the stage sets itself; configuring them is refused.
const RESERVED_HEADERS: [&str; 4] = [
    "content-type",
    "content-length",
    "transfer-encoding",
    "host",
];

/// Configuration of an HTTP stage (`type = "http"` in `[[chain.stages]]`):
///
/// ```toml
/// [[chain.stages]]
/// type = "http"
/// name = "word-filter"                       # stage name in logs, audit and metadata
/// url = "http://127.0.0.1:8085/verdict"
/// hooks = ["before-inference"]               # and/or "after-output"
/// timeout_ms = 2000                          # per attempt, connect to last body byte
/// connect_timeout_ms = 500
/// attempts = 3                               # 1 = no retry
/// backoff_ms = 200                           # before attempt 2; doubles, at most 5 s
/// on_failure = "retry"                       # or "block"
/// headers = { "X-Team" = "trust-safety" }    # static, not secret
/// headers_from_env = { Authorization = "VERDICT_AUTH" }   # value read from the environment
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpStageConfig {
    /// Stage name, used in logs, audit entries, metadata and the request's `stage` field.
    pub name: String,
    /// Where to POST requests: an `http://` or `https://` URL without credentials (put those in
    /// `headers_from_env`).
    pub url: String,
    /// The hooks the stage acts on: `"before-inference"`, `"after-output"` or both. Required.
    pub hooks: Vec<Hook>,
    /// Send the job's input image (`input_image`) with `before-inference` requests.
    pub send_input_image: bool,
    /// Limit for establishing the connection, in ms.
    pub connect_timeout_ms: u64,
    /// Limit for one attempt, from connecting to the last byte of the response, in ms.
    pub timeout_ms: u64,
    /// Attempts per call (1 to 10; 1 = no retry). Only transient failures are retried.
    pub attempts: u32,
    /// Pause before the second attempt, in ms; it doubles for each further attempt (at most
    /// 5 s).
    pub backoff_ms: u64,
    /// What a call does when every attempt failed transiently: `"retry"` (a retryable error:
    /// the worker requeues the job) or `"block"` (block the job or image with category
    /// `external_stage_unavailable`).
    pub on_failure: OnFailure,
    /// Headers sent with every request, as written. Not for secrets.
    pub headers: BTreeMap<String, String>,
    /// Headers whose values are read from environment variables when the stage is built:
    /// header name to variable name. A variable that is not set fails the build.
    pub headers_from_env: BTreeMap<String, String>,
    /// Largest response body accepted, in bytes.
    pub max_response_bytes: u64,
}

impl Default for HttpStageConfig {
    fn default() -> Self {
        Self {
            name: "http".to_owned(),
            url: String::new(),
            hooks: Vec::new(),
            send_input_image: false,
            connect_timeout_ms: 1_000,
            timeout_ms: 10_000,
            attempts: 3,
            backoff_ms: 200,
            on_failure: OnFailure::Retry,
            headers: BTreeMap::new(),
            headers_from_env: BTreeMap::new(),
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
        }
    }
}

impl HttpStageConfig {
    /// Checks the configuration, reads the headers from the environment and makes the client.
    pub fn build(&self) -> Result<HttpStage, ExternalError> {
        let common = Common::new(CommonSettings {
            name: &self.name,
            hooks: &self.hooks,
            send_input_image: self.send_input_image,
            attempts: self.attempts,
            backoff_ms: self.backoff_ms,
            on_failure: self.on_failure,
            timeout_ms: self.timeout_ms,
            max_response_bytes: self.max_response_bytes,
        })?;
        let (uri, shown_url) = parse_url(&self.url)?;
        if self.connect_timeout_ms == 0 {
            return Err(ExternalError::Config(
                "`connect_timeout_ms` must be above 0".into(),
            ));
        }
        let mut headers = Vec::new();
        for (name, value) in &self.headers {
            let value = HeaderValue::from_str(value).map_err(|_| {
                ExternalError::Config(format!("`headers.{name}` is not a valid header value"))
            })?;
            headers.push((header_name(name)?, value));
        }
        for (name, var) in &self.headers_from_env {
            let env_error = |problem| ExternalError::HeaderEnv {
                header: name.clone(),
                var: var.clone(),
                problem,
            };
            let value = std::env::var(var).map_err(|_| env_error("is not set (or not UTF-8)"))?;
            let mut value = HeaderValue::from_str(&value)
                .map_err(|_| env_error("is not a valid header value"))?;
            // Keeps the value out of ureq's debug output.
            value.set_sensitive(true);
            headers.push((header_name(name)?, value));
        }
        let agent: Agent = Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .max_redirects_will_error(false)
            .proxy(None)
            .timeout_connect(Some(Duration::from_millis(self.connect_timeout_ms)))
            .timeout_global(Some(Duration::from_millis(self.timeout_ms)))
            .user_agent(concat!("inpaint-worker/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        Ok(HttpStage {
            common,
            agent,
            uri,
            shown_url,
            headers,
        })
    }
}

/// Parses the URL; returns it with a form for messages that has no query string.
fn parse_url(url: &str) -> Result<(Uri, String), ExternalError> {
    let invalid = |why: &str| ExternalError::Config(format!("`url` {why}"));
    if url.is_empty() {
        return Err(invalid("is not set"));
    }
    let uri: Uri = url
        .parse()
        .map_err(|_| invalid("is not a valid absolute URL"))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return Err(invalid("must start with http:// or https://"));
    }
    let Some(authority) = uri.authority() else {
        return Err(invalid("has no host"));
    };
    if authority.as_str().contains('@') {
        return Err(invalid(
            "must not carry credentials: put them in `headers_from_env`",
        ));
    }
    let shown = format!(
        "{}://{}{}",
        uri.scheme_str().unwrap_or("http"),
        authority,
        uri.path()
    );
    Ok((uri, shown))
}

fn header_name(name: &str) -> Result<HeaderName, ExternalError> {
    let parsed = HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| ExternalError::Config(format!("`{name}` is not a valid header name")))?;
    if RESERVED_HEADERS.contains(&parsed.as_str()) {
        return Err(ExternalError::Config(format!(
            "header `{name}` is set by the stage itself"
        )));
    }
    Ok(parsed)
}

/// The running HTTP stage. Thread-safe: calls from several threads share the agent's pool.
pub struct HttpStage {
    common: Common,
    agent: Agent,
    uri: Uri,
    shown_url: String,
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl fmt::Debug for HttpStage {
    // By hand: header values may be secrets, and the query string may hold a token.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpStage")
            .field("name", &self.common.name)
            .field("url", &self.shown_url)
            .field(
                "headers",
                &self.headers.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .field("attempts", &self.common.attempts)
            .field("on_failure", &self.common.on_failure)
            .finish_non_exhaustive()
    }
}

impl HttpStage {
    fn call(&self, call: &Call<'_>) -> Result<Verdict, StageError> {
        self.common.run(call, |_| {
            let bytes = self.attempt(&call.body)?;
            call.decode(&bytes).map_err(AttemptError::malformed)
        })
    }

    /// One POST; the response body of a 2xx answer.
    fn attempt(&self, body: &[u8]) -> Result<Vec<u8>, AttemptError> {
        let mut request = self
            .agent
            .post(self.uri.clone())
            .header("content-type", "application/json")
            .header("accept", "application/json");
        for (name, value) in &self.headers {
            request = request.header(name, value);
        }
        let mut response = request.send(body).map_err(|e| self.classify(e))?;
        let status = response.status().as_u16();
        match status {
            200..=299 => response
                .body_mut()
                .with_config()
                .limit(self.common.max_response_bytes)
                .read_to_vec()
                .map_err(|e| self.classify(e)),
            408 | 429 | 500..=599 => Err(AttemptError::transient(format!(
                "HTTP {status} from {}",
                self.shown_url
            ))),
            _ => Err(AttemptError::Permanent(StageError::Failed(format!(
                "HTTP {status} from {} (a status other than 2xx, 408, 429 or 5xx is not retried)",
                self.shown_url
            )))),
        }
    }

    fn classify(&self, error: ureq::Error) -> AttemptError {
        let url = &self.shown_url;
        match error {
            ureq::Error::Timeout(_) => AttemptError::timed_out(format!(
                "no answer from {url} within {:?}",
                self.common.timeout
            )),
            ureq::Error::Io(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                AttemptError::timed_out(format!(
                    "no answer from {url} within {:?}",
                    self.common.timeout
                ))
            }
            ureq::Error::BodyExceedsLimit(limit) => {
                AttemptError::malformed(ExternalError::Malformed(format!(
                    "the response body from {url} is larger than max_response_bytes ({limit})"
                )))
            }
            e @ (ureq::Error::Io(_)
            | ureq::Error::ConnectionFailed
            | ureq::Error::HostNotFound
            | ureq::Error::Protocol(_)) => AttemptError::transient(format!("{url}: {e}")),
            other => AttemptError::Permanent(StageError::Failed(format!("{url}: {other}"))),
        }
    }
}

impl Stage for HttpStage {
    fn name(&self) -> &str {
        &self.common.name
    }

    fn before_inference(&self, ctx: &JobContext) -> Result<Verdict, StageError> {
        match self.common.before_inference(ctx)? {
            Some(call) => self.call(&call),
            None => Ok(Verdict::Continue),
        }
    }

    fn after_output(&self, ctx: &JobContext, image: &OutputImage) -> Result<Verdict, StageError> {
        match self.common.after_output(ctx, image)? {
            Some(call) => self.call(&call),
            None => Ok(Verdict::Continue),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpListener;
    use std::sync::mpsc;
    use std::thread;

    use uuid::Uuid;

    use super::*;
    use crate::protocol::PROTOCOL;

    fn config(url: &str) -> HttpStageConfig {
        HttpStageConfig {
            url: url.to_owned(),
            hooks: vec![Hook::BeforeInference],
            timeout_ms: 1_000,
            connect_timeout_ms: 500,
            attempts: 1,
            backoff_ms: 1,
            ..HttpStageConfig::default()
        }
    }

    #[test]
    fn configuration_is_checked() {
        let cases = [
            (config(""), "`url` is not set"),
            (config("ftp://host/x"), "http:// or https://"),
            (config("/verdict"), "http:// or https://"),
            (
                config("http://user:pw@host/x"),
                "must not carry credentials",
            ),
            (
                HttpStageConfig {
                    hooks: Vec::new(),
                    ..config("http://127.0.0.1:1/")
                },
                "`hooks` is empty",
            ),
            (
                HttpStageConfig {
                    connect_timeout_ms: 0,
                    ..config("http://127.0.0.1:1/")
                },
                "`connect_timeout_ms`",
            ),
            (
                HttpStageConfig {
                    headers: BTreeMap::from([("Content-Type".into(), "text/plain".into())]),
                    ..config("http://127.0.0.1:1/")
                },
                "set by the stage itself",
            ),
            (
                HttpStageConfig {
                    headers: BTreeMap::from([("bad header".into(), "x".into())]),
                    ..config("http://127.0.0.1:1/")
                },
                "not a valid header name",
            ),
            (
                HttpStageConfig {
                    headers_from_env: BTreeMap::from([(
                        "Authorization".into(),
                        "INPAINT_TEST_SURELY_UNSET_VARIABLE".into(),
                    )]),
                    ..config("http://127.0.0.1:1/")
                },
                "environment variable `INPAINT_TEST_SURELY_UNSET_VARIABLE` is not set",
            ),
        ];
        for (config, expected) in cases {
            let err = config.build().expect_err(expected).to_string();
            assert!(err.contains(expected), "{err}");
        }
    }

    #[test]
    fn toml_fills_defaults_and_refuses_unknown_keys() {
        let config: HttpStageConfig =
            toml::from_str("url = \"http://127.0.0.1:8085/verdict\"\nhooks = [\"after-output\"]\n")
                .expect("parses");
        assert_eq!(config.hooks, vec![Hook::AfterOutput]);
        assert_eq!(config.attempts, 3);
        assert_eq!(config.on_failure, OnFailure::Retry);
        assert_eq!(config.name, "http");
        assert!(toml::from_str::<HttpStageConfig>("url = \"x\"\ntimeout = 5\n").is_err());
        assert!(toml::from_str::<HttpStageConfig>("on_failure = \"ignore\"\n").is_err());
    }

    #[test]
    fn debug_shows_no_header_values_or_query() {
        // PATH is set in every test environment; its value stands in for a secret.
        let path = std::env::var("PATH").expect("PATH");
        let stage = HttpStageConfig {
            headers_from_env: BTreeMap::from([("X-Token".into(), "PATH".into())]),
            headers: BTreeMap::from([("X-Team".into(), "static-value".into())]),
            ..config("http://127.0.0.1:9/verdict?token=s3cret")
        }
        .build()
        .expect("build");
        let debug = format!("{stage:?}");
        assert!(debug.contains("http://127.0.0.1:9/verdict"), "{debug}");
        assert!(debug.contains("x-token"), "{debug}");
        assert!(
            !debug.contains("s3cret") && !debug.contains(&path),
            "{debug}"
        );
        assert!(!debug.contains("static-value"), "{debug}");
    }

    /// A one-shot server that answers one request with `response` and hands back what it got.
    fn one_shot(response: &'static str) -> (String, mpsc::Receiver<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}/verdict", listener.local_addr().expect("addr"));
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let Ok((stream, _)) = listener.accept() else {
                return;
            };
            let mut reader = BufReader::new(stream);
            let mut head = String::new();
            let mut length = 0;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
                head.push_str(&line);
            }
            let mut body = vec![0; length];
            let _ = reader.read_exact(&mut body);
            let mut stream = reader.into_inner();
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
                 connection: close\r\n\r\n{response}",
                response.len()
            );
            let _ = tx.send(format!("{head}\r\n{}", String::from_utf8_lossy(&body)));
        });
        (url, rx)
    }

    #[test]
    fn posts_json_with_headers_and_reads_the_verdict() {
        let (url, received) = one_shot(
            r#"{"protocol": "inpaint-stage.v1", "verdict": "block", "category": "c", "reason": "r"}"#,
        );
        let stage = HttpStageConfig {
            headers: BTreeMap::from([("X-Team".into(), "trust".into())]),
            headers_from_env: BTreeMap::from([("X-Path".into(), "PATH".into())]),
            ..config(&url)
        }
        .build()
        .expect("build");
        let verdict = stage
            .before_inference(&JobContext::new(Uuid::nil(), "a quiet harbour"))
            .expect("answer");
        assert!(verdict.is_block());
        let request = received.recv().expect("request");
        let lower = request.to_ascii_lowercase();
        assert!(lower.starts_with("post /verdict http/1.1"), "{request}");
        assert!(
            lower.contains("content-type: application/json"),
            "{request}"
        );
        assert!(lower.contains("x-team: trust"), "{request}");
        assert!(lower.contains("x-path: /"), "{request}");
        let body = request.split("\r\n\r\n").nth(1).expect("body");
        let json: serde_json::Value = serde_json::from_str(body).expect("json body");
        assert_eq!(json["protocol"], PROTOCOL);
        assert_eq!(json["job"]["prompt"], "a quiet harbour");
    }

    #[test]
    fn hooks_not_configured_are_not_called() {
        // A port that was just free: nothing listens there, so a call would fail.
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let stage = config(&format!("http://127.0.0.1:{port}/"))
            .build()
            .expect("build");
        let ctx = JobContext::new(Uuid::nil(), "x");
        let image = OutputImage::new(0, 0, image::RgbImage::new(1, 1));
        assert_eq!(
            stage.after_output(&ctx, &image).ok(),
            Some(Verdict::Continue)
        );
        assert!(stage.before_inference(&ctx).is_err());
    }
}
