//! The real `inpaint-worker` binary as a child process of a test: started on a settings file,
//! killed when dropped, so that a failing test leaves no worker behind. For tests that need a
//! process to die for real (SIGKILL), which an in-process worker cannot.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// The `inpaint-worker` binary: `INPAINT_WORKER_BIN`, else the workspace's debug build
/// (ops/dev/test.sh builds it before the tests).
pub fn worker_bin() -> PathBuf {
    if let Ok(bin) = std::env::var("INPAINT_WORKER_BIN") {
        return bin.into();
    }
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let bin = target.join("debug/inpaint-worker");
    assert!(
        bin.is_file(),
        "{} is missing: build it with `cargo build -p inpaint-worker` (ops/dev/test.sh does)",
        bin.display()
    );
    bin
}

/// A worker process, killed when dropped.
#[derive(Debug)]
pub struct WorkerProcess(pub Child);

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A worker process on `settings`, written to `{dir}/{name}.toml`; its log goes to
/// `{dir}/{name}.log`.
pub fn spawn_worker(settings: &inpaint_worker::Settings, dir: &Path, name: &str) -> WorkerProcess {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, toml::to_string(settings).expect("settings as TOML")).expect("config");
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).expect("log");
    Command::new(worker_bin())
        .args(["run", "--config"])
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map(WorkerProcess)
        .expect("inpaint-worker starts")
}
