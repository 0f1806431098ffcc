//! `inpaint-worker run` end to end against the real RabbitMQ and Garage: every test declares its
//! own topology (names prefixed with a fresh id), runs workers in-process with the pass-through
//! engine (the tiny real model for one happy path) and watches results, the dead-letter queue
//! and the objects in S3.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use futures::future::BoxFuture;
use inpaint_e2e::bucket;
use inpaint_job::{ErrorCode, InpaintResult, JobId, JobStatus};
use inpaint_queue::lapin::BasicProperties;
use inpaint_storage::{ObjectRef, PutRequest, StorageError, StoredObject};
use inpaint_worker::Parts;
use inpaint_worker::inference::PassThrough;
use inpaint_worker::settings::EngineBackend;
use inpaint_worker::store::ObjectStorage;

mod common;
use common::*;

#[tokio::test]
async fn happy_path_writes_outputs_then_publishes_then_acks() {
    let mut world = World::new().await;
    let worker = world.start(PassThrough::default()).await;
    let (image, mask) = world.inputs().await;
    let mut job = world.job(&image, &mask);
    job["params"]["num_images"] = 2.into();
    job["metadata"] = serde_json::json!({"tenant": "42"});
    world.publish(&job).await;

    let result = world.next_result().await;
    assert_eq!(result.status, JobStatus::Succeeded, "{result:?}");
    assert_eq!(result.job_id, Some(job_id(&job)));
    assert_eq!(result.outputs.len(), 2);
    assert_eq!(result.attempt, 1);
    assert_eq!(
        result.metadata.get("tenant").map(String::as_str),
        Some("42")
    );
    // The job's metadata comes back untouched; the chain override (these tests run without the
    // safety checker and watermark) is reported by the worker section.
    assert_eq!(result.metadata.len(), 1, "{:?}", result.metadata);
    assert_eq!(
        result.worker.missing_required_stages,
        ["safety-checker", "watermark"]
    );
    for (i, output) in result.outputs.iter().enumerate() {
        assert_eq!(output.index, i as u32);
        assert_eq!((output.width, output.height), (96, 64));
        assert!(
            output
                .uri
                .key()
                .ends_with(&format!("{}/{i}.png", job_id(&job)))
        );
    }
    assert_ne!(result.outputs[0].seed, result.outputs[1].seed);
    for stage in [
        "download",
        "decode",
        "inference",
        "upload",
        "manifest",
        "total",
    ] {
        assert!(
            result.timings_ms.contains_key(stage),
            "{:?}",
            result.timings_ms
        );
    }
    assert_outputs_exist(&world, &result).await;
    // The job is acknowledged: nothing ready, and after shutdown nothing unacked comes back.
    worker.shutdown().await;
    world
        .wait_for_count(&world.settings.topology.jobs_queue, 0)
        .await;
    world
        .wait_for_count(&world.settings.topology.dead_letter_queue, 0)
        .await;
}

#[tokio::test]
async fn tiny_real_model_happy_path() {
    let mut world = World::with(|s| {
        s.engine.backend = EngineBackend::Tch;
        s.engine.device = inpaint_engine::DeviceSpec::Cpu;
    })
    .await;
    let parts = Parts::build(&world.settings)
        .await
        .expect("tiny model loads");
    let worker = Worker::spawn(world.settings.clone(), parts, Arc::default());
    let (image, mask) = world.inputs().await;
    let mut job = world.job(&image, &mask);
    job["params"]["width"] = 64.into();
    job["params"]["height"] = 64.into();
    job["params"]["seed"] = 7.into();
    world.publish(&job).await;
    let result = world.next_result().await;
    assert_eq!(result.status, JobStatus::Succeeded, "{result:?}");
    assert_eq!(result.model.id, "tiny-sd-a");
    assert_ne!(result.model.weights_sha256, "0".repeat(64));
    assert_eq!(result.outputs.len(), 1);
    assert_eq!(
        (result.outputs[0].width, result.outputs[0].height),
        (64, 64)
    );
    assert_eq!(result.outputs[0].seed, 7);
    assert_outputs_exist(&world, &result).await;

    // No explicit size: the output has the input's size, and preserve_unmasked (the default)
    // keeps every pixel outside the mask (x <= 48) exactly.
    let job = world.job(&image, &mask);
    world.publish(&job).await;
    let result = world.next_result().await;
    assert_eq!(result.status, JobStatus::Succeeded, "{result:?}");
    assert_eq!(
        (result.outputs[0].width, result.outputs[0].height),
        (96, 64)
    );
    let stored = world
        .storage
        .get(&result.outputs[0].uri, None)
        .await
        .expect("output");
    let out = image::load_from_memory(&stored.bytes)
        .expect("png")
        .to_rgb8();
    let input = world.storage.get(&image, None).await.expect("input");
    let input = image::load_from_memory(&input.bytes)
        .expect("png")
        .to_rgb8();
    for y in 0..64 {
        for x in 0..=40 {
            assert_eq!(
                out.get_pixel(x, y),
                input.get_pixel(x, y),
                "pixel {x},{y} outside the mask"
            );
        }
    }
    worker.shutdown().await;
}

#[tokio::test]
async fn a_malformed_message_among_good_ones_fails_alone() {
    let mut world = World::new().await;
    let worker = world.start(PassThrough::default()).await;
    let (image, mask) = world.inputs().await;
    let good: Vec<_> = (0..3).map(|_| world.job(&image, &mask)).collect();
    world.publish(&good[0]).await;
    let broken_id = JobId::new_random();
    world
        .publish_bytes(
            format!(r#"{{"job_id": "{broken_id}", "prompt": "trunc"#).as_bytes(),
            BasicProperties::default().with_correlation_id("broken".into()),
        )
        .await;
    world.publish(&good[1]).await;
    world.publish(&good[2]).await;

    let mut by_id = HashMap::new();
    for _ in 0..4 {
        let r = world.next_result().await;
        by_id.insert(r.job_id.expect("id"), r);
    }
    let broken = &by_id[&broken_id];
    assert_eq!(broken.status, JobStatus::Rejected);
    assert_eq!(
        broken.error.as_ref().map(|e| e.code),
        Some(ErrorCode::MalformedJson)
    );
    for job in &good {
        assert_eq!(by_id[&job_id(job)].status, JobStatus::Succeeded);
    }
    world
        .wait_for_count(&world.settings.topology.dead_letter_queue, 1)
        .await;
    worker.shutdown().await;
}

#[tokio::test]
async fn a_redelivered_job_with_outputs_is_answered_without_recomputing() {
    let mut world = World::new().await;
    let worker = world.start(PassThrough::default()).await;
    let (image, mask) = world.inputs().await;
    let job = world.job(&image, &mask);
    world.publish(&job).await;
    let first = world.next_result().await;
    assert_eq!(first.status, JobStatus::Succeeded);
    world.publish(&job).await;
    let second = world.next_result().await;
    assert_eq!(second.status, JobStatus::Succeeded);
    assert_eq!(second.outputs, first.outputs, "same outputs, same hashes");
    assert_eq!(worker.calls.load(Ordering::SeqCst), 1, "inference ran once");
    worker.shutdown().await;
}

#[tokio::test]
async fn a_worker_that_dies_mid_job_loses_nothing() {
    let mut world = World::new().await;
    let slow = PassThrough {
        step_delay: Duration::from_millis(100),
        ..PassThrough::default()
    };
    let doomed = world.start(slow.clone()).await;
    let (image, mask) = world.inputs().await;
    let mut job = world.job(&image, &mask);
    job["params"]["num_inference_steps"] = 30.into();
    world.publish(&job).await;
    doomed.wait_until_inference_started().await;
    // Crash: the worker's task disappears mid-inference, its connection with it, nothing acked.
    doomed.task.abort();
    let survivor = world.start(PassThrough::default()).await;
    let result = world.next_result().await;
    assert_eq!(result.status, JobStatus::Succeeded, "{result:?}");
    assert_eq!(result.job_id, Some(job_id(&job)));
    assert_eq!(
        result.attempt, 2,
        "the redelivery counts as the second attempt"
    );
    assert_eq!(survivor.calls.load(Ordering::SeqCst), 1);
    survivor.shutdown().await;
    world
        .wait_for_count(&world.settings.topology.jobs_queue, 0)
        .await;
}

#[tokio::test]
async fn permanent_errors_get_their_status_and_go_to_the_dead_letter_queue() {
    let mut world = World::with(|s| s.limits.max_decoded_pixels = 5_000).await;
    let worker = world.start(PassThrough::default()).await;
    let (image, mask) = world.inputs().await;
    let garbage = world
        .put("in/garbage.png", b"not an image at all".to_vec())
        .await;
    let big = world
        .put("in/big.png", png(&image::RgbImage::new(100, 100)))
        .await;

    let mut cases: Vec<(serde_json::Value, ErrorCode)> = Vec::new();
    let mut j = world.job(&image, &mask);
    j["colour"] = "red".into();
    cases.push((j, ErrorCode::SchemaViolation));
    let mut j = world.job(&image, &mask);
    j["params"]["width"] = 500.into();
    cases.push((j, ErrorCode::InvalidParameter));
    let j = world.job(&world.object("in/missing.png"), &mask);
    cases.push((j, ErrorCode::ObjectNotFound));
    let j = world.job(&garbage, &mask);
    cases.push((j, ErrorCode::UndecodableImage));
    let j = world.job(&big, &mask);
    cases.push((j, ErrorCode::ImageTooLarge));
    let mut j = world.job(&image, &mask);
    j["output"]["bucket"] = "not-allowed-bucket".into();
    cases.push((j, ErrorCode::BucketNotAllowed));
    let j = world.job(&ObjectRef::new("elsewhere", "a.png").expect("ref"), &mask);
    cases.push((j, ErrorCode::BucketNotAllowed));

    for (job, _) in &cases {
        world.publish(job).await;
    }
    let mut by_id = HashMap::new();
    for _ in 0..cases.len() {
        let r = world.next_result().await;
        by_id.insert(r.job_id.expect("id"), r);
    }
    for (job, code) in &cases {
        let r = &by_id[&job_id(job)];
        assert_eq!(r.status, JobStatus::Rejected, "{code:?}: {r:?}");
        let error = r.error.as_ref().expect("error");
        assert_eq!(error.code, *code, "{}", error.message);
        assert!(!error.retryable);
        assert!(r.outputs.is_empty());
    }
    world
        .wait_for_count(
            &world.settings.topology.dead_letter_queue,
            cases.len() as u32,
        )
        .await;
    assert_eq!(
        worker.calls.load(Ordering::SeqCst),
        0,
        "no job reached inference"
    );
    worker.shutdown().await;
}

/// A store whose first `failures` reads fail like an unreachable S3.
struct Flaky {
    inner: Arc<inpaint_storage::Storage>,
    failures: AtomicUsize,
    gets: AtomicUsize,
}

impl ObjectStorage for Flaky {
    fn get<'a>(
        &'a self,
        object: &'a ObjectRef,
        max_bytes: Option<u64>,
    ) -> BoxFuture<'a, Result<StoredObject, StorageError>> {
        Box::pin(async move {
            self.gets.fetch_add(1, Ordering::SeqCst);
            let fail = !object.key().ends_with("result.json")
                && self
                    .failures
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok();
            if fail {
                return Err(StorageError::Backend {
                    object: object.to_string(),
                    source: object_store::Error::Generic {
                        store: "S3",
                        source: "connection refused (injected)".into(),
                    },
                });
            }
            self.inner.get(object, max_bytes).await
        })
    }

    fn put<'a>(
        &'a self,
        object: &'a ObjectRef,
        bytes: Bytes,
        request: &'a PutRequest,
    ) -> BoxFuture<'a, Result<(), StorageError>> {
        Box::pin(self.inner.put(object, bytes, request))
    }

    fn size_of<'a>(
        &'a self,
        object: &'a ObjectRef,
    ) -> BoxFuture<'a, Result<Option<u64>, StorageError>> {
        Box::pin(self.inner.size_of(object))
    }
}

#[tokio::test]
async fn transient_storage_errors_are_retried_through_the_delay_queue() {
    let mut world = World::new().await;
    let (image, mask) = world.inputs().await;
    // Manifest reads pass; the first two input reads fail (one per attempt: the pair is read
    // concurrently, and the first failure ends the attempt).
    let flaky = Arc::new(Flaky {
        inner: Arc::clone(&world.storage),
        failures: AtomicUsize::new(0),
        gets: AtomicUsize::new(0),
    });
    let worker = world
        .start_with(
            PassThrough::default(),
            Arc::clone(&flaky) as Arc<dyn ObjectStorage>,
            world.settings.clone(),
        )
        .await;
    flaky.failures.store(2, Ordering::SeqCst);
    let job = world.job(&image, &mask);
    world.publish(&job).await;
    let result = world.next_result().await;
    assert_eq!(result.status, JobStatus::Succeeded, "{result:?}");
    assert_eq!(result.attempt, 3, "two failed attempts, then success");
    assert_eq!(worker.metrics.retries.load(Ordering::SeqCst), 2);

    // Past max_attempts: a failed result, retryable, dead-lettered.
    flaky.failures.store(1_000, Ordering::SeqCst);
    let job = world.job(&image, &mask);
    world.publish(&job).await;
    let result = world.next_result().await;
    assert_eq!(result.status, JobStatus::Failed, "{result:?}");
    let error = result.error.expect("error");
    assert_eq!(error.code, ErrorCode::StorageUnavailable);
    assert!(error.retryable);
    assert_eq!(result.attempt, 3);
    world
        .wait_for_count(&world.settings.topology.dead_letter_queue, 1)
        .await;
    worker.shutdown().await;
}

#[tokio::test]
async fn expired_jobs_are_answered_before_any_download() {
    let mut world = World::new().await;
    let flaky = Arc::new(Flaky {
        inner: Arc::clone(&world.storage),
        failures: AtomicUsize::new(0),
        gets: AtomicUsize::new(0),
    });
    let worker = world
        .start_with(
            PassThrough::default(),
            Arc::clone(&flaky) as Arc<dyn ObjectStorage>,
            world.settings.clone(),
        )
        .await;
    let mut job = world.job(
        &world.object("in/never-read.png"),
        &world.object("in/never-read-mask.png"),
    );
    job["expires_at"] = "2020-01-01T00:00:00Z".into();
    world.publish(&job).await;
    let result = world.next_result().await;
    assert_eq!(result.status, JobStatus::Expired, "{result:?}");
    assert_eq!(
        flaky.gets.load(Ordering::SeqCst),
        0,
        "nothing was downloaded"
    );
    world
        .wait_for_count(&world.settings.topology.dead_letter_queue, 0)
        .await;
    worker.shutdown().await;
}

#[tokio::test]
async fn cancel_requests_stop_running_and_queued_jobs() {
    let mut world = World::new().await;
    let slow = PassThrough {
        step_delay: Duration::from_millis(100),
        ..PassThrough::default()
    };
    let worker = world.start(slow).await;
    let (image, mask) = world.inputs().await;

    // A reply queue for progress events.
    let (reply_name, mut replies) = world.reply_queue().await;

    let mut running = world.job(&image, &mask);
    running["params"]["num_inference_steps"] = 200.into();
    running["progress"] = true.into();
    let body = serde_json::to_vec(&running).expect("json");
    world
        .publish_bytes(
            &body,
            BasicProperties::default()
                .with_reply_to(reply_name.clone().into())
                .with_correlation_id("c-1".into()),
        )
        .await;
    // Wait for progress: the job is between denoising steps.
    let event = tokio::time::timeout(WAIT, replies.next())
        .await
        .expect("a progress event")
        .expect("open")
        .expect("delivery");
    let progress: inpaint_job::ProgressEvent =
        serde_json::from_slice(&event.data).expect("progress event");
    assert_eq!(progress.job_id, job_id(&running));
    assert_eq!(progress.total, 200);
    assert_eq!(
        event
            .properties
            .correlation_id()
            .as_ref()
            .map(|c| c.as_str()),
        Some("c-1")
    );

    let cancel = |id: JobId| {
        serde_json::to_vec(&serde_json::json!({"job_id": id.to_string()})).expect("json")
    };
    // Cancelled while queued: its cancel request goes out before the running job's. The worker
    // reads cancel requests in order on one consumer, so once the running job reports
    // `cancelled`, the queued job's request has been heard: no sleep orders the two.
    let queued = world.job(&image, &mask);
    for id in [job_id(&queued), job_id(&running)] {
        world
            .publisher
            .publish(
                &world.settings.topology.cancel_exchange,
                "",
                &cancel(id),
                BasicProperties::default(),
            )
            .await
            .expect("publish cancel");
    }
    let result = world.next_result().await;
    assert_eq!(result.job_id, Some(job_id(&running)));
    assert_eq!(result.status, JobStatus::Cancelled, "{result:?}");
    assert!(result.outputs.is_empty());

    world.publish(&queued).await;
    let result = world.next_result().await;
    assert_eq!(result.job_id, Some(job_id(&queued)));
    assert_eq!(result.status, JobStatus::Cancelled, "{result:?}");
    assert_eq!(
        worker.calls.load(Ordering::SeqCst),
        1,
        "the queued job never ran"
    );
    worker.shutdown().await;
}

#[tokio::test]
async fn fifty_jobs_over_two_workers_get_exactly_one_result_each() {
    let mut world = World::new().await;
    let a = world.start(PassThrough::default()).await;
    let b = world.start(PassThrough::default()).await;
    let (image, mask) = world.inputs().await;
    let jobs: Vec<_> = (0..50).map(|_| world.job(&image, &mask)).collect();
    for job in &jobs {
        world.publish(job).await;
    }
    let mut results: HashMap<JobId, InpaintResult> = HashMap::new();
    for _ in 0..50 {
        let r = world.next_result().await;
        assert_eq!(r.status, JobStatus::Succeeded, "{r:?}");
        assert!(
            results.insert(r.job_id.expect("id"), r).is_none(),
            "a second result for one job"
        );
    }
    let uris: BTreeSet<String> = results
        .values()
        .flat_map(|r| r.outputs.iter().map(|o| o.uri.to_string()))
        .collect();
    assert_eq!(uris.len(), 50, "one distinct output per job");
    for job in &jobs {
        assert!(results.contains_key(&job_id(job)));
    }
    // No stray extra result arrives.
    assert!(
        tokio::time::timeout(Duration::from_secs(1), world.results.next())
            .await
            .is_err()
    );
    let (ca, cb) = (
        a.calls.load(Ordering::SeqCst),
        b.calls.load(Ordering::SeqCst),
    );
    assert_eq!(ca + cb, 50, "each job computed once");
    a.shutdown().await;
    b.shutdown().await;
}

/// Force-closes every broker connection named `name`, as an operator (or a broker restart)
/// would: `rabbitmqctl close_connection`.
fn close_connections_named(name: &str) -> usize {
    let list = std::process::Command::new("rabbitmqctl")
        .args(["-q", "list_connections", "pid", "client_properties"])
        .output()
        .expect("rabbitmqctl runs (it comes with the RabbitMQ that ops/dev/services.sh starts)");
    let text = String::from_utf8_lossy(&list.stdout);
    let mut closed = 0;
    for line in text.lines().filter(|l| l.contains(name)) {
        let Some(pid) = line.split_whitespace().next() else {
            continue;
        };
        let status = std::process::Command::new("rabbitmqctl")
            .args(["-q", "close_connection", pid, "e2e: forced close"])
            .status()
            .expect("rabbitmqctl close_connection");
        assert!(status.success());
        closed += 1;
    }
    closed
}

#[tokio::test]
async fn the_worker_recovers_when_its_connection_is_force_closed() {
    let mut world = World::new().await;
    let mut settings = world.settings.clone();
    settings.broker.connection_name = format!("{}-worker", world.prefix);
    let name = settings.broker.connection_name.clone();
    let worker = world
        .start_with(
            PassThrough::default(),
            Arc::clone(&world.storage) as Arc<dyn ObjectStorage>,
            settings,
        )
        .await;
    let (image, mask) = world.inputs().await;
    world.publish(&world.job(&image, &mask)).await;
    assert_eq!(world.next_result().await.status, JobStatus::Succeeded);

    let closed = tokio::task::spawn_blocking(move || close_connections_named(&name))
        .await
        .expect("rabbitmqctl task");
    assert_eq!(
        closed, 1,
        "the worker's one connection was found and closed"
    );

    let job = world.job(&image, &mask);
    world.publish(&job).await;
    let result = world.next_result().await;
    assert_eq!(result.status, JobStatus::Succeeded, "{result:?}");
    assert_eq!(result.job_id, Some(job_id(&job)));
    worker.shutdown().await;
}

#[tokio::test]
async fn shutdown_lets_in_flight_jobs_finish_within_the_grace_period() {
    let mut world = World::new().await;
    let slow = PassThrough {
        step_delay: Duration::from_millis(50),
        ..PassThrough::default()
    };
    let worker = world.start(slow).await;
    let (image, mask) = world.inputs().await;
    let mut job = world.job(&image, &mask);
    job["params"]["num_inference_steps"] = 20.into();
    world.publish(&job).await;
    worker.wait_until_inference_started().await;
    // SIGTERM equivalent while the job is mid-inference: it still completes, then the worker
    // exits cleanly with nothing left in the queue.
    worker.shutdown().await;
    let result = world.next_result().await;
    assert_eq!(result.status, JobStatus::Succeeded, "{result:?}");
    world
        .wait_for_count(&world.settings.topology.jobs_queue, 0)
        .await;
}

#[tokio::test]
async fn unfinished_jobs_return_to_the_queue_when_the_grace_period_ends() {
    let mut world = World::with(|s| s.shutdown.grace_secs = 1).await;
    let slow = PassThrough {
        step_delay: Duration::from_millis(100),
        ..PassThrough::default()
    };
    let worker = world.start(slow).await;
    let (image, mask) = world.inputs().await;
    let mut job = world.job(&image, &mask);
    job["params"]["num_inference_steps"] = 600.into();
    world.publish(&job).await;
    worker.wait_until_inference_started().await;
    worker.shutdown().await;
    // Released, not answered: the job waits for the next worker.
    world
        .wait_for_count(&world.settings.topology.jobs_queue, 1)
        .await;
    assert!(
        tokio::time::timeout(Duration::from_millis(500), world.results.next())
            .await
            .is_err()
    );
}

#[tokio::test]
async fn a_prompt_policy_block_writes_nothing_and_is_dead_lettered() {
    let mut world = World::with(|s| {
        s.chain.stages = vec![inpaint_stages::StageConfig::PromptPolicy(Default::default())];
    })
    .await;
    let worker = world.start(PassThrough::default()).await;
    let (image, mask) = world.inputs().await;
    let mut job = world.job(&image, &mask);
    job["prompt"] = "a decapitated soldier".into();
    world.publish(&job).await;
    let result = world.next_result().await;
    assert_eq!(result.status, JobStatus::Blocked, "{result:?}");
    let block = result.block.expect("block");
    assert_eq!(block.stage, "prompt-policy");
    assert_eq!(block.category, "violence_gore");
    assert!(
        !block.reason.contains("decapitated"),
        "no prompt text in the reason"
    );
    assert_eq!(result.error.map(|e| e.code), Some(ErrorCode::PolicyBlocked));
    assert!(result.outputs.is_empty());
    let first_output = ObjectRef::new(
        bucket(),
        format!("{}/out/{}/0.png", world.prefix, job_id(&job)),
    )
    .expect("ref");
    assert_eq!(
        world.storage.size_of(&first_output).await.expect("head"),
        None
    );
    assert_eq!(worker.calls.load(Ordering::SeqCst), 0);
    let exposition = worker.metrics.render();
    assert!(
        exposition.contains(
            "inpaint_plugin_actions_total{action=\"blocked\",category=\"violence_gore\"} 1"
        ),
        "{exposition}"
    );
    world
        .wait_for_count(&world.settings.topology.dead_letter_queue, 1)
        .await;
    worker.shutdown().await;
}

#[tokio::test]
async fn tiny_real_model_results_carry_safety_scores_and_watermark() {
    let checker = Path::new(env!("CARGO_MANIFEST_DIR")).join("parity/safety/fixtures/checker-a");
    let stages: Vec<inpaint_stages::StageConfig> = serde_json::from_value(serde_json::json!([
        {"type": "safety-checker", "model": checker, "device": "cpu", "action": "black_out"},
        {"type": "watermark", "small_images": "skip"},
    ]))
    .expect("stage configs");
    let mut world = World::with(|s| {
        s.engine.backend = EngineBackend::Tch;
        s.engine.device = inpaint_engine::DeviceSpec::Cpu;
        s.chain.stages = stages;
    })
    .await;
    let parts = Parts::build(&world.settings).await.expect("parts");
    let worker = Worker::spawn(world.settings.clone(), parts, Arc::default());
    let (image, mask) = world.inputs().await;
    let mut job = world.job(&image, &mask);
    job["params"]["width"] = 256.into();
    job["params"]["height"] = 256.into();
    world.publish(&job).await;
    let result = world.next_result().await;
    assert_eq!(result.status, JobStatus::Succeeded, "{result:?}");
    let out = &result.outputs[0];
    let safety = out.safety.as_ref().expect("safety report");
    assert_eq!(safety.concept_scores.len(), 17 + 3, "{safety:?}");
    assert!(safety.concept_scores.contains_key("concept.00"));
    assert_eq!(safety.nsfw, !safety.flagged_concepts.is_empty());
    let watermark = out.watermark.as_ref().expect("watermark");
    assert_eq!(watermark.method, "dwtDct");
    assert!(!watermark.payload_hex.is_empty());
    worker.shutdown().await;
}

#[tokio::test]
async fn submit_uploads_local_files_publishes_and_waits_for_the_result() {
    use inpaint_worker::submit::{SubmitRequest, submit};

    let mut world = World::new().await;
    let worker = world.start(PassThrough::default()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let image = image::RgbImage::from_fn(64, 48, |x, y| image::Rgb([x as u8 * 3, y as u8 * 5, 7]));
    let mask = image::RgbImage::from_fn(64, 48, |x, _| {
        image::Rgb(if x > 30 { [255; 3] } else { [0; 3] })
    });
    std::fs::write(dir.path().join("image.png"), png(&image)).expect("write image");
    std::fs::write(dir.path().join("mask.png"), png(&mask)).expect("write mask");
    let request = SubmitRequest {
        image: Some(dir.path().join("image.png").display().to_string()),
        mask: Some(dir.path().join("mask.png").display().to_string()),
        prompt: Some("a kite over the beach".into()),
        wait: Some(WAIT),
        ..SubmitRequest::default()
    };
    let (job_id, result) = submit(&world.settings, &request).await.expect("submit");
    let result = result.expect("waited for the result");
    assert_eq!(result.job_id, Some(job_id));
    assert_eq!(result.status, JobStatus::Succeeded, "{result:?}");
    let uploaded =
        ObjectRef::new(bucket(), format!("uploads/{job_id}/image-image.png")).expect("ref");
    assert!(
        world
            .storage
            .size_of(&uploaded)
            .await
            .expect("head")
            .is_some(),
        "image uploaded"
    );
    let output = &result.outputs[0].uri;
    assert!(
        world.storage.size_of(output).await.expect("head").is_some(),
        "output written"
    );
    // The results exchange got the same result as the reply_to queue.
    assert_eq!(world.next_result().await.job_id, Some(job_id));
    // submit stamps the message, so the worker measured how long the job waited.
    let metrics = worker.metrics.render();
    assert!(
        metrics.contains("inpaint_queue_wait_seconds_count 1\n"),
        "{metrics}"
    );
    worker.shutdown().await;
}

/// A stage configuration as an operator writes it in `[[chain.stages]]`.
fn stage(toml_text: &str) -> inpaint_stages::StageConfig {
    toml::from_str(toml_text).unwrap_or_else(|e| panic!("stage config: {e}\n{toml_text}"))
}

fn repo_path(relative: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(relative)
        .display()
        .to_string()
}

#[tokio::test]
async fn an_external_exec_stage_blocks_and_passes_jobs_through_the_worker() {
    let script = repo_path("ops/plugins/verdict_exec.py");
    let mut world = World::with(|s| {
        s.chain.stages = vec![stage(&format!(
            r#"
type = "exec"
name = "word-filter"
program = "python3"
args = ["{script}", "--block-word", "forbidden"]
hooks = ["before-inference", "after-output"]
"#
        ))];
    })
    .await;
    let worker = world.start(PassThrough::default()).await;
    let (image, mask) = world.inputs().await;

    let mut blocked = world.job(&image, &mask);
    blocked["prompt"] = "a forbidden door in a garden".into();
    world.publish(&blocked).await;
    let result = world.next_result().await;
    assert_eq!(result.status, JobStatus::Blocked, "{result:?}");
    let block = result.block.expect("block");
    assert_eq!(block.stage, "word-filter");
    assert_eq!(block.category, "operator_blocklist");
    assert!(result.outputs.is_empty());
    assert_eq!(worker.calls.load(Ordering::SeqCst), 0, "no inference");
    world
        .wait_for_count(&world.settings.topology.dead_letter_queue, 1)
        .await;

    // An ordinary prompt passes both hooks (after output the example reports brightness).
    let passed = world.job(&image, &mask);
    world.publish(&passed).await;
    let result = world.next_result().await;
    assert_eq!(result.status, JobStatus::Succeeded, "{result:?}");
    assert_eq!(result.job_id, Some(job_id(&passed)));
    assert_outputs_exist(&world, &result).await;
    worker.shutdown().await;
}

#[tokio::test]
async fn a_hanging_exec_stage_is_retried_then_fails_or_blocks_as_configured() {
    // A real program that never answers.
    let hang = |on_failure: &str| {
        stage(&format!(
            r#"
type = "exec"
name = "hangs"
program = "python3"
args = ["-c", "import time; time.sleep(600)"]
hooks = ["before-inference"]
timeout_ms = 300
startup_grace_ms = 100
attempts = 1
on_failure = "{on_failure}"
"#
        ))
    };
    let mut world = World::with(|s| s.chain.stages = vec![hang("retry")]).await;
    let worker = world.start(PassThrough::default()).await;
    let (image, mask) = world.inputs().await;
    let job = world.job(&image, &mask);
    world.publish(&job).await;
    // Retryable: every attempt times out, then a failed result and the dead-letter queue.
    let result = world.next_result().await;
    assert_eq!(result.status, JobStatus::Failed, "{result:?}");
    assert_eq!(result.attempt, world.settings.retry.max_attempts);
    let error = result.error.expect("error");
    assert_eq!(error.code, ErrorCode::Timeout, "{error:?}");
    assert!(error.retryable);
    assert_eq!(
        worker.metrics.retries.load(Ordering::SeqCst),
        u64::from(world.settings.retry.max_attempts - 1)
    );
    world
        .wait_for_count(&world.settings.topology.dead_letter_queue, 1)
        .await;
    worker.shutdown().await;

    // The same program with on_failure = "block": blocked at once, fail closed.
    let mut world = World::with(|s| s.chain.stages = vec![hang("block")]).await;
    let worker = world.start(PassThrough::default()).await;
    let (image, mask) = world.inputs().await;
    world.publish(&world.job(&image, &mask)).await;
    let result = world.next_result().await;
    assert_eq!(result.status, JobStatus::Blocked, "{result:?}");
    assert_eq!(result.attempt, 1);
    let block = result.block.expect("block");
    assert_eq!(block.category, "external_stage_unavailable");
    assert_eq!(worker.calls.load(Ordering::SeqCst), 0);
    worker.shutdown().await;
}

#[tokio::test]
async fn inpaint_on_local_files_writes_the_bytes_the_worker_wrote() {
    use inpaint_stages::StageConfig;
    use inpaint_worker::inpaint_cli::{InpaintArgs, inpaint};
    let stages = vec![
        StageConfig::PromptPolicy(Default::default()),
        StageConfig::Provenance(Default::default()),
    ];
    let mut world = World::with(|s| {
        s.engine.backend = EngineBackend::Tch;
        s.engine.device = inpaint_engine::DeviceSpec::Cpu;
        s.engine.model = inpaint_worker::settings::EMBEDDED_TINY.into();
        s.chain.stages = stages;
    })
    .await;
    let parts = Parts::build(&world.settings)
        .await
        .expect("tiny model loads");
    let worker = Worker::spawn(world.settings.clone(), parts, Arc::default());
    let (image, mask) = world.inputs().await;
    let mut job = world.job(&image, &mask);
    job["params"]["seed"] = 11.into();
    world.publish(&job).await;
    let result = world.next_result().await;
    assert_eq!(result.status, JobStatus::Succeeded, "{result:?}");
    worker.shutdown().await;

    // The same job and seed on local files, through `inpaint`.
    let dir = tempfile::tempdir().expect("tempdir");
    for (object, name) in [(&image, "image.png"), (&mask, "mask.png")] {
        let stored = world.storage.get(object, None).await.expect("input");
        std::fs::write(dir.path().join(name), &stored.bytes).expect("write");
    }
    let chain = dir.path().join("chain.toml");
    std::fs::write(
        &chain,
        "[[stages]]\ntype = \"prompt-policy\"\n[[stages]]\ntype = \"provenance\"\n",
    )
    .expect("write");
    let path = |name: &str| dir.path().join(name).display().to_string();
    let args = InpaintArgs::parse([
        "--image".into(),
        path("image.png"),
        "--mask".into(),
        path("mask.png"),
        "--prompt".into(),
        job["prompt"].as_str().expect("prompt").to_owned(),
        "--output".into(),
        path("out.png"),
        "--steps".into(),
        "2".into(),
        "--seed".into(),
        "11".into(),
        "--job-id".into(),
        job_id(&job).to_string(),
        "--chain".into(),
        chain.display().to_string(),
        "--allow-unsafe-chain".into(),
        "--device".into(),
        "cpu".into(),
    ])
    .expect("arguments");
    let (written, local) = inpaint(&args).await.expect("inpaint");
    let bytes = std::fs::read(&written[0]).expect("read");
    let stored = world
        .storage
        .get(&result.outputs[0].uri, None)
        .await
        .expect("worker output");
    assert!(
        bytes == stored.bytes.as_ref(),
        "inpaint and the worker wrote different bytes"
    );
    assert_eq!(local.outputs[0].sha256, result.outputs[0].sha256);
    assert!(
        bytes
            .windows(b"provenance.job_id".len())
            .any(|w| w == b"provenance.job_id"),
        "provenance in the file"
    );
}
