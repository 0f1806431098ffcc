//! Failures of real processes, not simulated ones: a Garage that is stopped for a while, and a
//! worker process killed with SIGKILL mid-inference. Both against the real RabbitMQ; the outage
//! test runs a private single-node Garage of its own (so stopping it does not disturb the other
//! tests), the kill test the real `inpaint-worker` binary with the embedded tiny model.

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures::StreamExt;
use inpaint_job::{JobStatus, ProgressEvent};
use inpaint_queue::lapin::BasicProperties;
use inpaint_queue::lapin::options::BasicAckOptions;
use inpaint_storage::{S3Config, StorageConfig};
use inpaint_worker::inference::PassThrough;
use inpaint_worker::settings::{EngineBackend, RetryConfig};

mod common;
use common::*;
#[path = "common/process.rs"]
mod process;
use process::spawn_worker;

/// The dev key (ops/dev/services.sh): the private Garage creates it as its default key.
const ACCESS_KEY: &str = inpaint_e2e::DEV_ACCESS_KEY_ID;
const SECRET_KEY: &str = inpaint_e2e::DEV_SECRET_ACCESS_KEY;
const OUTAGE_BUCKET: &str = "outage";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

fn wait_for_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{what} did not open port {port} in 30 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The Garage binary that ops/dev/services.sh installs: `GARAGE_BIN`, else `garage` in
/// ~/.cargo/bin, else on PATH.
fn garage_bin() -> PathBuf {
    if let Ok(bin) = std::env::var("GARAGE_BIN") {
        return bin.into();
    }
    let cargo_bin = std::env::var("HOME")
        .map(|home| PathBuf::from(home).join(".cargo/bin/garage"))
        .ok()
        .filter(|p| p.is_file());
    cargo_bin.unwrap_or_else(|| "garage".into())
}

/// A single-node Garage of this test's own, on free ports, with its data in a temporary folder
/// that outlives restarts.
struct PrivateGarage {
    dir: tempfile::TempDir,
    s3_port: u16,
    child: Option<Child>,
}

impl PrivateGarage {
    fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let (s3_port, rpc_port) = (free_port(), free_port());
        let root = dir.path().display();
        let config = format!(
            r#"metadata_dir = "{root}/meta"
data_dir = "{root}/data"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:{rpc_port}"
rpc_public_addr = "127.0.0.1:{rpc_port}"
rpc_secret = "{secret}"

[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:{s3_port}"
root_domain = ".s3.garage.localhost"
"#,
            secret = "7".repeat(64)
        );
        std::fs::write(dir.path().join("garage.toml"), config).expect("garage.toml");
        let mut garage = Self {
            dir,
            s3_port,
            child: None,
        };
        garage.resume();
        garage
    }

    /// Starts the server (again) on the same data.
    fn resume(&mut self) {
        let log = std::fs::File::create(self.dir.path().join("garage.log")).expect("log");
        let child = Command::new(garage_bin())
            .arg("-c")
            .arg(self.dir.path().join("garage.toml"))
            .args(["server", "--single-node", "--default-bucket"])
            .env("GARAGE_DEFAULT_ACCESS_KEY", ACCESS_KEY)
            .env("GARAGE_DEFAULT_SECRET_KEY", SECRET_KEY)
            .env("GARAGE_DEFAULT_BUCKET", OUTAGE_BUCKET)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {} ({e}); ops/dev/services.sh install puts Garage in ~/.cargo/bin",
                    garage_bin().display()
                )
            });
        self.child = Some(child);
        // Garage creates the default key and bucket before it opens the S3 port.
        wait_for_port(self.s3_port, "the private Garage");
    }

    /// Kills the server: connections are refused until [`PrivateGarage::resume`].
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The worker's view: few client-side retries, so outages reach the worker's retry logic.
    fn storage(&self) -> StorageConfig {
        StorageConfig::S3(S3Config {
            endpoint: Some(format!("http://127.0.0.1:{}", self.s3_port)),
            region: Some("garage".into()),
            path_style: true,
            allow_http: true,
            access_key_id: Some(ACCESS_KEY.into()),
            secret_access_key: Some(SECRET_KEY.into()),
            max_retries: 1,
            retry_timeout_ms: 1_000,
            connect_timeout_ms: 1_000,
            ..S3Config::default()
        })
    }
}

impl Drop for PrivateGarage {
    fn drop(&mut self) {
        self.stop();
    }
}

#[tokio::test]
async fn a_job_waits_out_a_stopped_garage_and_completes() {
    let mut garage = tokio::task::spawn_blocking(PrivateGarage::start)
        .await
        .expect("garage task");
    let mut world = World::with_store(garage.storage(), OUTAGE_BUCKET.into(), |s| {
        s.allow.read_buckets = vec![OUTAGE_BUCKET.into()];
        s.allow.write_buckets = vec![OUTAGE_BUCKET.into()];
        // Room for several attempts while Garage is down: 0.3, 0.6, 1.2, 1.5, 1.5... s apart.
        s.retry = RetryConfig {
            max_attempts: 10,
            max_outage_attempts: 10,
            base_delay_ms: 300,
            max_delay_ms: 1_500,
            ..RetryConfig::default()
        };
    })
    .await;
    let worker = world.start(PassThrough::default()).await;
    let (image, mask) = world.inputs().await;

    let garage = tokio::task::spawn_blocking(move || {
        garage.stop();
        garage
    })
    .await
    .expect("stop task");
    let job = world.job(&image, &mask);
    world.publish(&job).await;
    // Down long enough for the worker to fail and requeue the job twice.
    let deadline = Instant::now() + Duration::from_secs(30);
    while worker.metrics.retries.load(Ordering::SeqCst) < 2 {
        assert!(
            Instant::now() < deadline,
            "no retries while Garage was down"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut garage = garage;
    let garage = tokio::task::spawn_blocking(move || {
        garage.resume();
        garage
    })
    .await
    .expect("resume task");

    let result = world.next_result().await;
    assert_eq!(result.status, JobStatus::Succeeded, "{result:?}");
    assert_eq!(result.job_id, Some(job_id(&job)));
    assert!(
        result.attempt >= 3,
        "two or more failed attempts first, got attempt {}",
        result.attempt
    );
    assert_outputs_exist(&world, &result).await;
    worker.shutdown().await;
    world
        .wait_for_count(&world.settings.topology.jobs_queue, 0)
        .await;
    world
        .wait_for_count(&world.settings.topology.dead_letter_queue, 0)
        .await;
    drop(garage);
}

#[tokio::test]
async fn a_worker_process_killed_mid_job_loses_nothing() {
    let mut world = World::with(|s| {
        // The real engine on the embedded tiny model, in a real process.
        s.engine.backend = EngineBackend::Tch;
        s.engine.device = "cpu".parse().expect("device");
    })
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut doomed = spawn_worker(&world.settings, dir.path(), "doomed");
    let (image, mask) = world.inputs().await;
    let (reply_to, mut replies) = world.reply_queue().await;
    let mut job = world.job(&image, &mask);
    job["params"]["num_inference_steps"] = 40.into();
    job["progress"] = true.into();
    world
        .publish_bytes(
            &serde_json::to_vec(&job).expect("json"),
            BasicProperties::default().with_reply_to(reply_to.into()),
        )
        .await;

    // The first progress event: the job is between denoising steps in the doomed process.
    let event = tokio::time::timeout(Duration::from_secs(300), replies.next())
        .await
        .expect("a progress event (see the doomed worker's log)")
        .expect("open")
        .expect("delivery");
    event
        .acker
        .ack(BasicAckOptions::default())
        .await
        .expect("ack");
    let progress: ProgressEvent = serde_json::from_slice(&event.data).expect("progress event");
    assert_eq!(progress.job_id, job_id(&job));
    assert!(progress.step < progress.total, "{progress:?}");

    // SIGKILL: no shutdown hook, no nack; the broker sees the connection drop.
    doomed.0.kill().expect("SIGKILL");
    let status = doomed.0.wait().expect("reaped");
    assert!(!status.success(), "killed, not exited: {status:?}");
    let survivor = spawn_worker(&world.settings, dir.path(), "survivor");

    let dir = dir.keep(); // the logs stay for a failing run
    // A bound, not a timing: 40 tiny steps take about a second on an idle machine, minutes on a
    // badly oversubscribed one.
    let result = tokio::time::timeout(
        Duration::from_secs(300),
        world.next_result_within(Duration::from_secs(600)),
    )
    .await
    .unwrap_or_else(|_| panic!("no result after the kill; logs in {}", dir.display()));
    assert_eq!(result.status, JobStatus::Succeeded, "{result:?}");
    assert_eq!(result.job_id, Some(job_id(&job)));
    assert_eq!(
        result.attempt, 2,
        "the redelivery after the kill is the second attempt"
    );
    assert_outputs_exist(&world, &result).await;
    // SIGTERM: the survivor drains and exits 0.
    let pid = survivor.0.id().to_string();
    let term = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill -TERM");
    assert!(term.success());
    let status = tokio::task::spawn_blocking(move || {
        let mut survivor = survivor;
        survivor.0.wait()
    })
    .await
    .expect("wait task")
    .expect("survivor exits");
    assert!(status.success(), "graceful exit 0 on SIGTERM: {status:?}");
    world
        .wait_for_count(&world.settings.topology.jobs_queue, 0)
        .await;
    world
        .wait_for_count(&world.settings.topology.dead_letter_queue, 0)
        .await;
    let _ = std::fs::remove_dir_all(&dir);
}
