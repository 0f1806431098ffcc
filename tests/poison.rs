//! A poison message for real: a job that kills the worker process (SIGKILL, from an `exec`
//! stage) every time it is delivered, with the worker restarted after each death as a
//! supervisor (systemd, Kubernetes) would. The jobs queue's delivery limit is set low; the
//! producer must get exactly one terminal result for the poison (`delivery_limit_exceeded`),
//! never silence, and the jobs published around it must succeed.

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt as _;
use std::time::{Duration, Instant};

use futures::StreamExt;
use inpaint_job::{ErrorCode, InpaintResult, JobId, JobStatus};
use inpaint_queue::lapin::options::BasicAckOptions;
use inpaint_worker::settings::ConcurrencyConfig;

mod common;
use common::*;
#[path = "common/process.rs"]
mod process;
use process::{WorkerProcess, spawn_worker};

/// In the prompt of the job that kills the worker.
const MARKER: &str = "POISON-c0ffee";

/// The jobs queue's delivery limit in this test: the poison kills the worker this many times,
/// and its next delivery (the last the broker makes) is answered.
const DELIVERY_LIMIT: u32 = 2;

/// An exec stage (a shell loop) that answers `continue` to every request, except that a
/// request whose prompt holds [`MARKER`] makes it SIGKILL its parent: the worker process.
fn killer_stage() -> inpaint_stages::StageConfig {
    let script = format!(
        r#"while IFS= read -r line; do
  case "$line" in *{MARKER}*) kill -KILL "$PPID"; exit 0;; esac
  printf '%s\n' '{{"protocol": "inpaint-stage.v1", "verdict": "continue"}}'
done"#
    );
    // Written as an operator would, the script as a TOML string (quoted by the toml crate).
    let args = toml::Value::Array(vec!["-c".into(), script.into()]);
    let text = format!(
        "type = \"exec\"\nname = \"killer\"\nprogram = \"sh\"\nargs = {args}\n\
         hooks = [\"before-inference\"]\n"
    );
    toml::from_str(&text).unwrap_or_else(|e| panic!("stage config: {e}\n{text}"))
}

#[tokio::test]
async fn a_job_that_kills_the_worker_every_time_gets_one_delivery_limit_result() {
    let mut world = World::with(|s| {
        s.topology.delivery_limit = DELIVERY_LIMIT;
        // One delivery at a time: the kills return only the poison, so the other jobs' delivery
        // counts stay 0 (a job in flight beside a poison shares its fate at each crash).
        s.concurrency = ConcurrencyConfig {
            prefetch: 1,
            in_flight: 1,
        };
        s.chain.stages = vec![killer_stage()];
    })
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (image, mask) = world.inputs().await;
    let before = world.job(&image, &mask);
    let mut poison = world.job(&image, &mask);
    poison["prompt"] = format!("a red bicycle {MARKER}").into();
    let after = world.job(&image, &mask);
    for job in [&before, &poison, &after] {
        world.publish(job).await;
    }
    let ids = [job_id(&before), job_id(&poison), job_id(&after)];

    // The supervisor: restart the worker whenever it dies, until every job has a result.
    let mut deaths = 0u32;
    let mut worker: WorkerProcess = spawn_worker(&world.settings, dir.path(), "worker-0");
    let mut results: BTreeMap<JobId, Vec<InpaintResult>> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(240);
    let logs = dir.path().display().to_string();
    while !ids.iter().all(|id| results.contains_key(id)) {
        assert!(
            Instant::now() < deadline,
            "results for {:?} of {ids:?} after {deaths} deaths; logs in {logs}",
            results.keys().collect::<Vec<_>>()
        );
        if let Ok(next) =
            tokio::time::timeout(Duration::from_millis(200), world.results.next()).await
        {
            let delivery = next.expect("results consumer open").expect("delivery");
            delivery
                .acker
                .ack(BasicAckOptions::default())
                .await
                .expect("ack result");
            let result = InpaintResult::from_json(&delivery.data).expect("a result message");
            let id = result.job_id.expect("every result names its job");
            results.entry(id).or_default().push(result);
        }
        if let Some(status) = worker.0.try_wait().expect("worker status") {
            assert_eq!(
                status.signal(),
                Some(9),
                "the worker died only by the stage's SIGKILL: {status:?}; logs in {logs}"
            );
            deaths += 1;
            assert!(
                deaths <= DELIVERY_LIMIT,
                "the poison ran more often than the delivery limit allows; logs in {logs}"
            );
            worker = spawn_worker(&world.settings, dir.path(), &format!("worker-{deaths}"));
        }
    }
    // A second answer would come right after the first: give it the time to show up.
    let settle = Instant::now() + Duration::from_secs(3);
    while let Ok(Some(next)) = tokio::time::timeout_at(settle.into(), world.results.next()).await {
        let delivery = next.expect("delivery");
        delivery
            .acker
            .ack(BasicAckOptions::default())
            .await
            .expect("ack result");
        let result = InpaintResult::from_json(&delivery.data).expect("a result message");
        results
            .entry(result.job_id.expect("job id"))
            .or_default()
            .push(result);
    }

    assert_eq!(
        deaths, DELIVERY_LIMIT,
        "every delivery of the poison before the last killed the worker"
    );
    let answered = &results[&ids[1]];
    assert_eq!(answered.len(), 1, "exactly one result: {answered:?}");
    let result = &answered[0];
    assert_eq!(result.status, JobStatus::Failed, "{result:?}");
    let error = result.error.as_ref().expect("an error");
    assert_eq!(error.code, ErrorCode::DeliveryLimitExceeded, "{error:?}");
    assert!(!error.retryable, "{error:?}");
    assert!(
        error
            .message
            .contains(&format!("delivered {} times", DELIVERY_LIMIT + 1)),
        "{error:?}"
    );
    assert!(result.outputs.is_empty());
    for (id, name) in [(ids[0], "before"), (ids[2], "after")] {
        let answered = &results[&id];
        assert_eq!(answered.len(), 1, "{name}: {answered:?}");
        assert_eq!(
            answered[0].status,
            JobStatus::Succeeded,
            "{name}: {answered:?}"
        );
        assert_outputs_exist(&world, &answered[0]).await;
    }
    // The poison was dead-lettered after its answer; nothing is left to deliver.
    world
        .wait_for_count(&world.settings.topology.dead_letter_queue, 1)
        .await;
    world
        .wait_for_count(&world.settings.topology.jobs_queue, 0)
        .await;
    drop(worker);
}
