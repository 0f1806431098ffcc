//! The exec stage: a long-lived subprocess that speaks the protocol (`inpaint-stage.v1`) as
//! line-delimited JSON: one request line on its stdin, one response line on its stdout.
//!
//! Life of the program:
//! - started when the stage is built (a missing program fails the worker's start, not the first
//!   job), in its own process group, with a clean environment (see [`ExecStageConfig::env`]);
//! - serves requests one at a time; its stderr is forwarded line by line to tracing at debug
//!   (target `inpaint_external_stages::exec`), so a traceback is one `RUST_LOG` away;
//! - after any failed attempt (no answer within `timeout_ms`, exit or closed stdout, a
//!   malformed or unrequested line) its whole process group is killed and reaped; the next
//!   attempt, or the next call, starts a fresh one. `attempts` bounds the restarts within one
//!   call, so a program that crashes on every request cannot hold a call forever;
//! - killed when the stage is dropped (the worker shuts down).
//!
//! Concurrency: one program behind a `Mutex`, so concurrent calls queue. The worker calls the
//! chain from its inference thread, one job at a time per model, so a pool would mostly hold
//! idle processes (and multiply a model-loading program's memory); a check that needs
//! parallelism is better served over HTTP, where the server owns its concurrency.
//!
//! Time: a request's `timeout_ms` counts from handing the request over. A program's start-up
//! (an interpreter loading, a model loading) would eat into it, and a start-up longer than the
//! timeout would make every restart time out again; so a request to a program started less
//! than `startup_grace_ms` ago may take until `startup_grace_ms` after the start plus
//! `timeout_ms`. Reading and writing happen on helper threads, so neither a program that does
//! not read its stdin nor one that never writes can block the caller past that.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStderr, ChildStdout, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::{Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use inpaint_plugin_api::{Hook, JobContext, OutputImage, Stage, StageError, Verdict};
use serde::{Deserialize, Serialize};

use crate::common::{AttemptError, Common, CommonSettings, OnFailure};
use crate::error::ExternalError;
use crate::protocol::Call;

/// Default largest response line: a replaced 2048×2048 RGB image as base64 PNG fits.
pub const DEFAULT_MAX_RESPONSE_BYTES: u64 = 64 * 1024 * 1024;

/// Environment variables passed from the worker to the program besides `pass_env` and `env`:
/// enough to find interpreters and decode text, nothing that holds credentials.
pub const BASE_ENV: [&str; 7] = ["PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR"];

/// Longest stderr line forwarded to tracing; the rest of the line is dropped.
const MAX_STDERR_LINE: u64 = 16 * 1024;

/// How long to wait for a program that closed its stdout to exit by itself (for its exit
/// status in the message) before it is killed.
const EXIT_GRACE: Duration = Duration::from_millis(200);

/// Configuration of an exec stage (`type = "exec"` in `[[chain.stages]]`):
///
/// ```toml
/// [[chain.stages]]
/// type = "exec"
/// name = "word-filter"
/// program = "python3"
/// args = ["ops/plugins/verdict_exec.py", "--block-word", "forbidden"]
/// hooks = ["before-inference", "after-output"]
/// timeout_ms = 2000                 # per request
/// startup_grace_ms = 5000           # extra time for the first requests after a (re)start
/// attempts = 2                      # 1 = no restart within a call
/// on_failure = "retry"              # or "block"
/// env = { POLICY_LEVEL = "strict" }
/// pass_env = ["POLICY_TOKEN"]
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExecStageConfig {
    /// Stage name, used in logs, audit entries, metadata and the request's `stage` field.
    pub name: String,
    /// The program: a path, or a name looked up in `PATH`. Required.
    pub program: String,
    /// Its arguments.
    pub args: Vec<String>,
    /// Its working directory; by default the worker's.
    pub working_dir: Option<PathBuf>,
    /// Variables set for the program. The program does not inherit the worker's environment
    /// (which holds storage credentials and the broker URL): it gets [`BASE_ENV`] where set,
    /// the variables named in `pass_env`, and these.
    pub env: BTreeMap<String, String>,
    /// Names of worker environment variables passed through to the program (for its secrets);
    /// one that is not set is left out.
    pub pass_env: Vec<String>,
    /// The hooks the stage acts on: `"before-inference"`, `"after-output"` or both. Required.
    pub hooks: Vec<Hook>,
    /// Send the job's input image (`input_image`) with `before-inference` requests.
    pub send_input_image: bool,
    /// Limit for one request, from handing it over to the response line, in ms.
    pub timeout_ms: u64,
    /// Allowance for the program's start-up, in ms: a request to a program started less than
    /// this long ago may take until this long after the start plus `timeout_ms`.
    pub startup_grace_ms: u64,
    /// Attempts per call (1 to 10); each attempt after a failure runs a fresh program.
    pub attempts: u32,
    /// Pause before the second attempt, in ms; it doubles for each further attempt (at most
    /// 5 s).
    pub backoff_ms: u64,
    /// What a call does when every attempt failed transiently: `"retry"` (a retryable error:
    /// the worker requeues the job) or `"block"` (block the job or image with category
    /// `external_stage_unavailable`).
    pub on_failure: OnFailure,
    /// Longest response line accepted, in bytes.
    pub max_response_bytes: u64,
}

impl Default for ExecStageConfig {
    fn default() -> Self {
        Self {
            name: "exec".to_owned(),
            program: String::new(),
            args: Vec::new(),
            working_dir: None,
            env: BTreeMap::new(),
            pass_env: Vec::new(),
            hooks: Vec::new(),
            send_input_image: false,
            timeout_ms: 10_000,
            startup_grace_ms: 5_000,
            attempts: 2,
            backoff_ms: 100,
            on_failure: OnFailure::Retry,
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
        }
    }
}

impl ExecStageConfig {
    /// Checks the configuration and starts the program.
    pub fn build(&self) -> Result<ExecStage, ExternalError> {
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
        if self.program.trim().is_empty() {
            return Err(ExternalError::Config("`program` is not set".into()));
        }
        let mut env: BTreeMap<String, String> = BASE_ENV
            .iter()
            .copied()
            .chain(self.pass_env.iter().map(String::as_str))
            .filter_map(|name| Some((name.to_owned(), std::env::var(name).ok()?)))
            .collect();
        env.extend(self.env.clone());
        let launch = Launch {
            stage: common.name.clone(),
            program: self.program.clone(),
            args: self.args.clone(),
            working_dir: self.working_dir.clone(),
            env,
            max_line: common.max_response_bytes,
        };
        let running = launch.spawn().map_err(|source| ExternalError::Spawn {
            program: self.program.clone(),
            source,
        })?;
        Ok(ExecStage {
            common,
            startup_grace: Duration::from_millis(self.startup_grace_ms),
            launch,
            child: Mutex::new(Some(running)),
        })
    }
}

/// How to start the program.
struct Launch {
    stage: String,
    program: String,
    args: Vec<String>,
    working_dir: Option<PathBuf>,
    env: BTreeMap<String, String>,
    max_line: u64,
}

impl Launch {
    fn spawn(&self) -> io::Result<Running> {
        let mut command = Command::new(&self.program);
        command
            .args(&self.args)
            .env_clear()
            .envs(&self.env)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(dir) = &self.working_dir {
            command.current_dir(dir);
        }
        #[cfg(unix)]
        {
            // Its own process group, so that a kill reaches the children of a wrapper script
            // too (and a Ctrl-C meant for the worker does not race the worker's shutdown).
            use std::os::unix::process::CommandExt as _;
            command.process_group(0);
        }
        let mut process = command.spawn()?;
        let pipes = (
            process.stdin.take(),
            process.stdout.take(),
            process.stderr.take(),
        );
        let (Some(stdin), Some(stdout), Some(stderr)) = pipes else {
            kill_and_reap(&mut process);
            return Err(io::Error::other("the program's pipes were not set up"));
        };
        let mut running = Running {
            process,
            started: Instant::now(),
            requests: None,
            lines: None,
            stopped: false,
        };
        // A failure to start a helper thread drops `running`, which kills the program.
        let (request_tx, request_rx) = mpsc::channel::<Vec<u8>>();
        thread::Builder::new()
            .name("exec-stage-stdin".into())
            .spawn(move || write_requests(stdin, request_rx))?;
        running.requests = Some(request_tx);
        let (line_tx, line_rx) = mpsc::channel();
        let max_line = self.max_line;
        thread::Builder::new()
            .name("exec-stage-stdout".into())
            .spawn(move || read_lines(stdout, max_line, line_tx))?;
        running.lines = Some(line_rx);
        let stage = self.stage.clone();
        thread::Builder::new()
            .name("exec-stage-stderr".into())
            .spawn(move || forward_stderr(stderr, &stage))?;
        tracing::debug!(stage = %self.stage, pid = running.process.id(), "external program started");
        Ok(running)
    }
}

/// Writes each request as one line; ends when the stage drops its sender or the pipe breaks.
fn write_requests(mut stdin: std::process::ChildStdin, requests: Receiver<Vec<u8>>) {
    for mut line in requests {
        line.push(b'\n');
        if stdin.write_all(&line).and_then(|()| stdin.flush()).is_err() {
            break;
        }
    }
}

/// What the stdout reader saw.
#[derive(Debug)]
enum FromChild {
    /// One line, without its line ending.
    Line(Vec<u8>),
    /// A line longer than the limit; the reader stopped.
    TooLong,
    /// End of file or a read error: the program closed its stdout (usually: it exited).
    Closed,
}

fn read_lines(stdout: ChildStdout, max_line: u64, lines: Sender<FromChild>) {
    let mut reader = BufReader::new(stdout);
    loop {
        let mut line = Vec::new();
        let read = (&mut reader)
            .take(max_line.saturating_add(1))
            .read_until(b'\n', &mut line);
        let event = match read {
            Ok(0) | Err(_) => FromChild::Closed,
            Ok(_) if line.last() == Some(&b'\n') => {
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                FromChild::Line(line)
            }
            // No line end: either the limit cut the line, or the file ended mid-line: the
            // program died while answering (a crash, not a malformed answer).
            Ok(n) if n as u64 > max_line => FromChild::TooLong,
            Ok(_) => FromChild::Closed,
        };
        let last = matches!(event, FromChild::Closed | FromChild::TooLong);
        if lines.send(event).is_err() || last {
            break;
        }
    }
}

fn forward_stderr(stderr: ChildStderr, stage: &str) {
    let mut reader = BufReader::new(stderr);
    loop {
        let mut line = Vec::new();
        match (&mut reader)
            .take(MAX_STDERR_LINE)
            .read_until(b'\n', &mut line)
        {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                let text = String::from_utf8_lossy(&line);
                tracing::debug!(stage, "stderr: {}", text.trim_end());
                if line.last() != Some(&b'\n') {
                    // Skip the rest of an overlong line.
                    let mut rest = Vec::new();
                    if reader.read_until(b'\n', &mut rest).unwrap_or(0) == 0 {
                        break;
                    }
                }
            }
        }
    }
}

/// A started program and the channels to its helper threads.
#[derive(Debug)]
struct Running {
    process: Child,
    started: Instant,
    requests: Option<Sender<Vec<u8>>>,
    lines: Option<Receiver<FromChild>>,
    stopped: bool,
}

impl Running {
    /// True when the program is known to have closed its stdout (it exited between calls).
    /// Lines nobody asked for are an error: they would be taken for the next answer.
    fn check_idle(&mut self) -> Result<bool, AttemptError> {
        let Some(lines) = &self.lines else {
            return Ok(true);
        };
        if matches!(self.process.try_wait(), Ok(Some(_))) {
            return Ok(true);
        }
        let mut unrequested = 0;
        loop {
            match lines.try_recv() {
                Ok(FromChild::Line(_)) => unrequested += 1,
                Ok(FromChild::TooLong | FromChild::Closed) | Err(TryRecvError::Disconnected) => {
                    return Ok(true);
                }
                Err(TryRecvError::Empty) if unrequested > 0 => {
                    return Err(AttemptError::malformed(ExternalError::Malformed(format!(
                        "the program wrote {unrequested} line(s) on stdout that answer no \
                         request (one line per request; logs go to stderr)"
                    ))));
                }
                Err(TryRecvError::Empty) => return Ok(false),
            }
        }
    }

    /// Sends one request line and waits for one response line: `timeout`, or until `grace`
    /// after the program's start plus `timeout` if that is later.
    fn exchange(
        &mut self,
        body: &[u8],
        timeout: Duration,
        grace: Duration,
    ) -> Result<Vec<u8>, AttemptError> {
        let (Some(requests), Some(lines)) = (&self.requests, &self.lines) else {
            return Err(AttemptError::transient("the program is not running"));
        };
        let starting = (self.started + grace).saturating_duration_since(Instant::now());
        if requests.send(body.to_vec()).is_err() {
            return Err(self.crashed());
        }
        let wait = timeout + starting;
        match lines.recv_timeout(wait) {
            Ok(FromChild::Line(line)) => Ok(line),
            Ok(FromChild::TooLong) => Err(AttemptError::malformed(ExternalError::Malformed(
                "the response line is longer than max_response_bytes".into(),
            ))),
            Ok(FromChild::Closed) | Err(RecvTimeoutError::Disconnected) => Err(self.crashed()),
            Err(RecvTimeoutError::Timeout) => Err(AttemptError::timed_out(format!(
                "no response line within {wait:?} (the program was killed)"
            ))),
        }
    }

    /// The program closed its stdout: wait briefly for its exit status, for the message.
    fn crashed(&mut self) -> AttemptError {
        let deadline = Instant::now() + EXIT_GRACE;
        let status = loop {
            match self.process.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(5)),
                _ => break None,
            }
        };
        AttemptError::transient(match status {
            Some(status) => format!("the program exited ({status}) without answering"),
            None => "the program closed its stdout without answering".to_owned(),
        })
    }

    /// Kills the process group and reaps the program; idempotent.
    fn stop(&mut self) {
        if std::mem::replace(&mut self.stopped, true) {
            return;
        }
        // Closing stdin first lets the writer thread end even if the kill fails.
        self.requests = None;
        kill_and_reap(&mut self.process);
        tracing::debug!(pid = self.process.id(), "external program stopped");
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop();
    }
}

/// SIGKILL to the program's process group (it leads one: `process_group(0)`), then reap it.
/// The group id stays valid until the leader is reaped, so this cannot hit a reused pid.
fn kill_and_reap(process: &mut Child) {
    #[cfg(unix)]
    if let Ok(pid) = i32::try_from(process.id()) {
        use nix::sys::signal::{Signal, killpg};
        let _ = killpg(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
    }
    let _ = process.kill();
    let _ = process.wait();
}

/// The running exec stage.
pub struct ExecStage {
    common: Common,
    startup_grace: Duration,
    launch: Launch,
    /// The program, if one is running. Locked for a whole call (all its attempts).
    child: Mutex<Option<Running>>,
}

impl fmt::Debug for ExecStage {
    // By hand: `env` may hold secrets passed through `pass_env`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExecStage")
            .field("name", &self.common.name)
            .field("program", &self.launch.program)
            .field("args", &self.launch.args)
            .field("env", &self.launch.env.keys().collect::<Vec<_>>())
            // try_lock: a call in progress on another thread must not block a log line.
            .field(
                "pid",
                &self
                    .child
                    .try_lock()
                    .ok()
                    .and_then(|slot| slot.as_ref().map(|running| running.process.id())),
            )
            .field("attempts", &self.common.attempts)
            .field("on_failure", &self.common.on_failure)
            .finish_non_exhaustive()
    }
}

impl ExecStage {
    /// The process id of the running program, if one is running (for diagnostics and tests).
    pub fn process_id(&self) -> Option<u32> {
        self.lock().as_ref().map(|running| running.process.id())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Running>> {
        // A panic while the lock was held left at worst a program in an unknown state; the
        // next attempt's checks (or a failed exchange) replace it.
        self.child.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn call(&self, call: &Call<'_>) -> Result<Verdict, StageError> {
        let mut slot = self.lock();
        self.common.run(call, |attempt| {
            if let Some(running) = slot.as_mut() {
                match running.check_idle() {
                    Ok(false) => {}
                    Ok(true) => {
                        tracing::debug!(stage = %self.common.name, "external program exited while idle");
                        *slot = None;
                    }
                    Err(error) => {
                        *slot = None;
                        return Err(error);
                    }
                }
            }
            let running = match slot.as_mut() {
                Some(running) => running,
                None => {
                    let running = self.launch.spawn().map_err(|e| {
                        AttemptError::transient(format!(
                            "cannot start `{}`: {e}",
                            self.launch.program
                        ))
                    })?;
                    tracing::info!(
                        stage = %self.common.name,
                        attempt,
                        pid = running.process.id(),
                        "external program restarted"
                    );
                    slot.insert(running)
                }
            };
            let result = running
                .exchange(&call.body, self.common.timeout, self.startup_grace)
                .and_then(|line| call.decode(&line).map_err(AttemptError::malformed));
            if result.is_err() {
                // Dropping kills and reaps it: after a timeout, a crash or a malformed line
                // its state is unknown, and a late answer must not be read as the next one.
                *slot = None;
            }
            result
        })
    }
}

impl Stage for ExecStage {
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
    use uuid::Uuid;

    use super::*;

    /// A stage around `sh -c SCRIPT` (sh is everywhere the worker runs).
    fn shell(script: &str, attempts: u32) -> ExecStageConfig {
        ExecStageConfig {
            program: "sh".into(),
            args: vec!["-c".into(), script.into()],
            hooks: vec![Hook::BeforeInference],
            timeout_ms: 1_000,
            attempts,
            backoff_ms: 1,
            ..ExecStageConfig::default()
        }
    }

    fn ctx() -> JobContext {
        JobContext::new(Uuid::nil(), "a quiet harbour")
    }

    const CONTINUE: &str = r#"while read -r line; do echo '{"protocol":"inpaint-stage.v1","verdict":"continue"}'; done"#;

    #[test]
    fn configuration_is_checked_and_a_missing_program_fails_the_build() {
        let err = ExecStageConfig {
            hooks: vec![Hook::AfterOutput],
            ..ExecStageConfig::default()
        }
        .build()
        .expect_err("no program");
        assert!(err.to_string().contains("`program` is not set"), "{err}");
        let err = ExecStageConfig {
            program: "/nonexistent/verdict-program".into(),
            hooks: vec![Hook::AfterOutput],
            ..ExecStageConfig::default()
        }
        .build()
        .expect_err("missing program");
        assert!(
            err.to_string()
                .starts_with("cannot start `/nonexistent/verdict-program`"),
            "{err}"
        );
        let err = shell(CONTINUE, 0).build().expect_err("attempts 0");
        assert!(err.to_string().contains("`attempts`"), "{err}");
    }

    #[test]
    fn toml_fills_defaults_and_refuses_unknown_keys() {
        let config: ExecStageConfig =
            toml::from_str("program = \"python3\"\nhooks = [\"before-inference\"]\n")
                .expect("parses");
        assert_eq!(config.attempts, 2);
        assert_eq!(config.timeout_ms, 10_000);
        assert_eq!(config.startup_grace_ms, 5_000);
        assert_eq!(config.name, "exec");
        assert!(toml::from_str::<ExecStageConfig>("program = \"x\"\ncommand = \"y\"\n").is_err());
        assert!(toml::from_str::<ExecStageConfig>("hooks = [\"after\"]\n").is_err());
    }

    #[test]
    fn a_shell_loop_answers_and_keeps_running() {
        let stage = shell(CONTINUE, 1).build().expect("build");
        let pid = stage.process_id().expect("started at build");
        for _ in 0..3 {
            assert_eq!(stage.before_inference(&ctx()).ok(), Some(Verdict::Continue));
        }
        assert_eq!(
            stage.process_id(),
            Some(pid),
            "one program serves every call"
        );
    }

    #[test]
    fn the_environment_is_clean_except_for_what_is_configured() {
        // The program answers with a block whose reason lists the variables it sees.
        let script = r#"read -r line; echo "{\"protocol\":\"inpaint-stage.v1\",\"verdict\":\"block\",\"category\":\"env\",\"reason\":\"$(env | cut -d= -f1 | sort | tr '\n' ' ')\"}""#;
        let stage = ExecStageConfig {
            env: BTreeMap::from([("POLICY_LEVEL".into(), "strict".into())]),
            pass_env: vec!["CARGO_PKG_NAME".into(), "INPAINT_SURELY_UNSET".into()],
            ..shell(script, 1)
        };
        // Cargo sets CARGO_PKG_NAME for tests; it stands in for a secret the operator passes.
        let verdict = stage.build().expect("build").before_inference(&ctx());
        let Ok(Verdict::Block(block)) = verdict else {
            panic!("expected a block: {verdict:?}");
        };
        let names: Vec<&str> = block.reason.split_whitespace().collect();
        assert!(names.contains(&"POLICY_LEVEL"), "{names:?}");
        assert!(names.contains(&"CARGO_PKG_NAME"), "{names:?}");
        assert!(names.contains(&"PATH"), "{names:?}");
        assert!(
            !names.contains(&"CARGO_MANIFEST_DIR"),
            "not inherited: {names:?}"
        );
        assert!(!names.contains(&"INPAINT_SURELY_UNSET"), "{names:?}");
    }

    #[test]
    fn unrequested_lines_are_refused_and_the_program_replaced() {
        // Two lines per request: the second would be taken for the next answer.
        let script = r#"while read -r line; do echo '{"protocol":"inpaint-stage.v1","verdict":"continue"}'; echo '{"protocol":"inpaint-stage.v1","verdict":"continue"}'; done"#;
        let stage = shell(script, 1).build().expect("build");
        assert_eq!(stage.before_inference(&ctx()).ok(), Some(Verdict::Continue));
        let first = stage.process_id();
        // Give the second line time to arrive.
        thread::sleep(Duration::from_millis(100));
        let err = stage.before_inference(&ctx()).expect_err("extra line");
        assert!(err.to_string().contains("answer no request"), "{err}");
        assert!(!err.is_retryable());
        assert_eq!(stage.process_id(), None, "killed");
        assert_eq!(stage.before_inference(&ctx()).ok(), Some(Verdict::Continue));
        assert_ne!(stage.process_id(), first);
    }

    #[test]
    fn an_overlong_line_is_malformed() {
        let script = r#"read -r line; head -c 5000 /dev/zero | tr '\0' 'x'; echo"#;
        let stage = ExecStageConfig {
            max_response_bytes: 1000,
            ..shell(script, 1)
        }
        .build()
        .expect("build");
        let err = stage.before_inference(&ctx()).expect_err("too long");
        assert!(
            err.to_string().contains("longer than max_response_bytes"),
            "{err}"
        );
    }

    #[test]
    fn start_up_time_is_granted_on_top_of_the_timeout() {
        // Takes 600 ms to start; requests get 200 ms.
        let slow = format!("sleep 0.6; {CONTINUE}");
        let granted = ExecStageConfig {
            timeout_ms: 200,
            startup_grace_ms: 3_000,
            ..shell(&slow, 1)
        };
        let stage = granted.build().expect("build");
        assert_eq!(stage.before_inference(&ctx()).ok(), Some(Verdict::Continue));
        let not_granted = ExecStageConfig {
            startup_grace_ms: 0,
            ..granted
        };
        let stage = not_granted.build().expect("build");
        let err = stage.before_inference(&ctx()).expect_err("too slow");
        assert!(matches!(err, StageError::Timeout(d) if d == Duration::from_millis(200)));
    }

    #[test]
    fn a_program_that_exits_between_calls_is_restarted_without_an_attempt() {
        // Answers one request, then exits: every call finds it gone and starts a fresh one.
        let script = r#"read -r line; echo '{"protocol":"inpaint-stage.v1","verdict":"continue"}'"#;
        let stage = shell(script, 1).build().expect("build");
        for _ in 0..3 {
            assert_eq!(stage.before_inference(&ctx()).ok(), Some(Verdict::Continue));
            thread::sleep(Duration::from_millis(300));
        }
    }
}
