//! Shared helpers of the integration tests: the real example programs from `ops/plugins/`, the
//! misbehaving test double in `tests/fixtures/`, job contexts and images, process checks.

#![allow(dead_code)] // Each test binary uses a different part.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use image::{Rgb, RgbImage};
use inpaint_plugin_api::{JobContext, OutputImage};
use uuid::Uuid;

/// A program in `ops/plugins/` (the examples operators copy).
pub fn ops_plugin(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../ops/plugins")
        .join(name)
}

/// The misbehaving test double.
pub fn misbehave() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/misbehave.py")
}

/// A Python HTTP server, killed on drop.
pub struct Server {
    child: Child,
    // Kept open so that a late print does not kill the server with SIGPIPE.
    _stdout: BufReader<ChildStdout>,
    /// The verdict URL it printed on its first line.
    pub url: String,
}

impl Server {
    /// Starts `python3 script args...` and waits for its "listening on URL" line. Its stderr
    /// (the access log) is kept, and shown if it does not start.
    pub fn start(script: &Path, args: &[&str]) -> Self {
        let mut child = Command::new("python3")
            .arg(script)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("python3 runs");
        let stderr_text = Arc::new(Mutex::new(String::new()));
        let mut stderr = child.stderr.take().expect("stderr");
        let sink = Arc::clone(&stderr_text);
        std::thread::spawn(move || {
            let mut buf = [0; 4096];
            while let Ok(n @ 1..) = stderr.read(&mut buf) {
                if let Ok(mut text) = sink.lock() {
                    text.push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            }
        });
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        stdout.read_line(&mut line).expect("first line");
        let Some(url) = line.trim().strip_prefix("listening on ") else {
            let _ = child.wait();
            std::thread::sleep(Duration::from_millis(100)); // let the reader catch up
            let stderr = stderr_text.lock().map(|t| t.clone()).unwrap_or_default();
            panic!("server did not start: first line {line:?}, stderr:\n{stderr}");
        };
        Self {
            url: url.to_owned(),
            child,
            _stdout: stdout,
        }
    }

    /// `GET /count` of the test double: POST requests received so far.
    pub fn count(&self) -> u32 {
        let base = self.url.trim_end_matches("/verdict");
        let body = ureq::get(format!("{base}/count"))
            .call()
            .expect("count")
            .body_mut()
            .read_to_string()
            .expect("body");
        body.trim().parse().expect("a number")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A temporary folder the test double records its starts and requests in.
pub struct State(tempfile::TempDir);

impl State {
    pub fn new() -> Self {
        Self(tempfile::tempdir().expect("tempdir"))
    }

    pub fn path(&self) -> &str {
        self.0.path().to_str().expect("utf-8 path")
    }

    /// Lines of one of the test double's files (`starts`, `requests`, `child`).
    pub fn lines(&self, name: &str) -> Vec<String> {
        std::fs::read_to_string(self.0.path().join(name))
            .map(|text| text.lines().map(str::to_owned).collect())
            .unwrap_or_default()
    }

    /// The recorded requests, parsed.
    pub fn requests(&self) -> Vec<serde_json::Value> {
        self.lines("requests")
            .iter()
            .map(|line| serde_json::from_str(line).expect("a JSON request"))
            .collect()
    }
}

/// A job context with a prompt, a negative prompt, params and metadata.
pub fn ctx(prompt: &str) -> JobContext {
    let mut ctx = JobContext::new(Uuid::from_u128(0x1234), prompt);
    ctx.negative_prompt = Some("lowres".into());
    ctx.params.num_inference_steps = 25;
    ctx.params.guidance_scale = 7.5;
    ctx.metadata.insert("tenant".into(), "studio-a".into());
    ctx
}

/// A context with a 6x4 input image.
pub fn ctx_with_input(prompt: &str) -> JobContext {
    let mut ctx = ctx(prompt);
    ctx.input_image = Some(Arc::new(RgbImage::from_pixel(6, 4, Rgb([10, 20, 30]))));
    ctx
}

/// A 16x16 output image of one colour.
pub fn output(index: u32, color: [u8; 3]) -> OutputImage {
    OutputImage::new(
        index,
        1000 + u64::from(index),
        RgbImage::from_pixel(16, 16, Rgb(color)),
    )
}

/// Whether a process exists and is not a zombie (a killed grandchild may wait for a reaper).
pub fn is_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => false,
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z')),
    }
}

/// Waits up to `within` for `pid` to be gone; true if it is.
pub fn gone_within(pid: u32, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if !is_alive(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    !is_alive(pid)
}

/// A base64 PNG of a `w`x`h` image of one colour.
pub fn png_base64(w: u32, h: u32, color: [u8; 3]) -> String {
    use base64::Engine as _;
    let mut png = Vec::new();
    RgbImage::from_pixel(w, h, Rgb(color))
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .expect("encode");
    base64::engine::general_purpose::STANDARD.encode(png)
}
