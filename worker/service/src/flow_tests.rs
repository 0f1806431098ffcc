//! The job flow without a broker: an in-memory store, the pass-through engine, a fixed clock.

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use chrono::TimeZone;
use inpaint_stages::StageConfig;
use inpaint_storage::{ObjectRef, PutRequest, Storage, StorageConfig};
use sha2::{Digest, Sha256};

use super::*;
use crate::images::{self, Provenance};
use crate::inference::{PassThrough, hex};
use crate::settings::{ChainConfig, ConcurrencyConfig};

const BUCKET: &str = "bkt";

struct Bench {
    flow: JobFlow,
    store: Arc<Storage>,
    calls: Arc<std::sync::atomic::AtomicUsize>,
}

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5)
        .single()
        .expect("time")
}

fn settings() -> Settings {
    Settings {
        limits: LimitsConfig {
            max_output_side: 1024,
            ..LimitsConfig::default()
        },
        allow: AllowConfig {
            read_buckets: vec![BUCKET.into()],
            write_buckets: vec![BUCKET.into()],
            ..AllowConfig::default()
        },
        chain: ChainConfig {
            stages: Vec::new(),
            allow_unsafe_chain: true,
        },
        ..Settings::default()
    }
}

async fn bench_with(settings: Settings, at: DateTime<Utc>) -> Bench {
    bench_with_chain(settings, at, Chain::new(Vec::new())).await
}

async fn bench_with_chain(settings: Settings, at: DateTime<Utc>, chain: Chain) -> Bench {
    let store = Arc::new(StorageConfig::Memory.build().expect("memory store"));
    let engine = PassThrough::default();
    let calls = Arc::clone(&engine.calls);
    let inference = InferenceThread::spawn(move || Ok(Box::new(engine) as Box<_>))
        .await
        .expect("engine");
    let parts = Parts {
        storage: Arc::clone(&store) as Arc<dyn ObjectStorage>,
        inference,
        chain: Arc::new(chain),
        metrics: Arc::new(Metrics::default()),
    };
    let flow = JobFlow::new(&settings, &parts, Signer::default()).with_clock(Arc::new(move || at));
    Bench { flow, store, calls }
}

async fn bench() -> Bench {
    bench_with(settings(), now()).await
}

fn png(image: &RgbImage) -> Vec<u8> {
    images::encode(
        image,
        inpaint_job::OutputFormat::Png {},
        &Provenance::default(),
    )
    .expect("png")
}

impl Bench {
    async fn put(&self, key: &str, bytes: Vec<u8>) -> ObjectRef {
        let object = ObjectRef::new(BUCKET, key).expect("ref");
        self.store
            .put(&object, Bytes::from(bytes), &PutRequest::default())
            .await
            .expect("put");
        object
    }

    async fn job(&self, edit: impl FnOnce(&mut serde_json::Value)) -> InpaintJob {
        let image = RgbImage::from_fn(32, 24, |x, y| image::Rgb([x as u8 * 7, y as u8 * 9, 90]));
        let mask = RgbImage::from_fn(32, 24, |x, _| image::Rgb([if x > 16 { 255 } else { 0 }; 3]));
        let image = self.put("in/image.png", png(&image)).await;
        let mask = self.put("in/mask.png", png(&mask)).await;
        let mut job = serde_json::json!({
            "schema_version": 1,
            "job_id": JobId::new_random().to_string(),
            "image": image.to_string(),
            "mask": mask.to_string(),
            "prompt": "a red bicycle",
            "params": {"num_inference_steps": 2, "num_images": 2},
            "output": {"bucket": BUCKET, "prefix": "out"},
        });
        edit(&mut job);
        InpaintJob::from_json(&serde_json::to_vec(&job).expect("json")).expect("valid job")
    }

    async fn run(&self, job: &InpaintJob) -> Result<InpaintResult, JobFailure> {
        let run = JobRun {
            attempt: 1,
            ..JobRun::default()
        };
        self.flow.run(job, run, &mut Timings::new()).await
    }
}

#[tokio::test]
async fn a_job_is_stored_with_its_manifest_and_a_redelivery_is_answered_from_it() {
    let bench = bench().await;
    let job = bench.job(|_| {}).await;
    let result = bench.run(&job).await.expect("succeeds");
    assert_eq!(result.status, JobStatus::Succeeded);
    assert_eq!(
        result.finished_at,
        now(),
        "the flow's clock dates the result"
    );
    assert_eq!(result.outputs.len(), 2);
    for (i, output) in result.outputs.iter().enumerate() {
        let stored = bench.store.get(&output.uri, None).await.expect("stored");
        assert_eq!(
            output.sha256,
            hex(&Sha256::digest(&stored.bytes)),
            "output {i}"
        );
        assert_eq!((output.width, output.height), (32, 24));
    }
    let manifest = bench
        .store
        .get(&manifest_ref(&job).expect("manifest"), None)
        .await
        .expect("manifest stored");
    let stored = InpaintResult::from_json(&manifest.bytes).expect("manifest parses");
    assert_eq!(stored.outputs, result.outputs);
    for step in [
        "download",
        "decode",
        "plugins_before",
        "inference",
        "plugins_after",
        "upload",
    ] {
        assert!(
            result.timings_ms.contains_key(step),
            "{step}: {:?}",
            result.timings_ms
        );
    }

    let again = bench
        .flow
        .run(
            &job,
            JobRun {
                attempt: 2,
                ..JobRun::default()
            },
            &mut Timings::new(),
        )
        .await
        .expect("answered");
    assert_eq!(again.outputs, result.outputs);
    assert_eq!(again.attempt, 2);
    assert_eq!(bench.calls.load(Ordering::SeqCst), 1, "not recomputed");
    // The computed result and the manifest say nothing of a replay; the answer from the
    // manifest says it is one, on the wire too.
    assert!(!result.replay && !stored.replay);
    assert!(
        again.replay,
        "a redelivery answered from the manifest is a replay"
    );
    let wire: serde_json::Value =
        serde_json::from_slice(&again.to_json().expect("json")).expect("parses");
    assert_eq!(wire["replay"], serde_json::Value::Bool(true));
    let computed: serde_json::Value =
        serde_json::from_slice(&result.to_json().expect("json")).expect("parses");
    assert!(computed.get("replay").is_none(), "{computed}");
}

#[tokio::test]
async fn expiry_follows_the_flows_clock() {
    for (offset, expired) in [(-1_i64, true), (0, true), (1, false)] {
        let bench = bench().await;
        let deadline = now() + chrono::Duration::seconds(offset);
        let job = bench
            .job(|j| j["expires_at"] = deadline.to_rfc3339().into())
            .await;
        let outcome = bench.run(&job).await;
        if expired {
            assert_eq!(
                outcome.expect_err("expired").code,
                ErrorCode::Expired,
                "{offset}"
            );
            assert_eq!(bench.calls.load(Ordering::SeqCst), 0);
        } else {
            outcome.expect("not yet expired");
        }
    }
}

#[tokio::test]
async fn admission_refusals_come_before_any_download_or_inference() {
    let bench = bench().await;
    type Edit = fn(&mut serde_json::Value);
    let cases: [(Edit, ErrorCode); 5] = [
        (
            |j| j["image"] = "s3://elsewhere/a.png".into(),
            ErrorCode::BucketNotAllowed,
        ),
        (
            |j| j["mask"] = "s3://elsewhere/m.png".into(),
            ErrorCode::BucketNotAllowed,
        ),
        (
            |j| j["output"]["bucket"] = "elsewhere".into(),
            ErrorCode::BucketNotAllowed,
        ),
        (
            |j| {
                j["params"]
                    .as_object_mut()
                    .expect("params")
                    .extend([("width".into(), 2048.into()), ("height".into(), 64.into())])
            },
            ErrorCode::InvalidParameter,
        ),
        (
            |j| {
                j["params"]
                    .as_object_mut()
                    .expect("params")
                    .extend([("width".into(), 64.into()), ("height".into(), 2048.into())])
            },
            ErrorCode::InvalidParameter,
        ),
    ];
    for (edit, code) in cases {
        let mut job = bench.job(edit).await;
        // A missing input would fail the download: only admission can refuse these.
        if code == ErrorCode::InvalidParameter {
            job.image = Some(ObjectRef::new(BUCKET, "missing.png").expect("ref"));
        }
        let failure = bench.run(&job).await.expect_err("refused");
        assert_eq!(failure.code, code, "{}", failure.message);
        assert!(!failure.transient && !failure.interrupted);
    }
    assert_eq!(bench.calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn the_contracts_admission_rules_refuse_before_inference() {
    let bench = bench().await;
    // An output (or the manifest) on top of an input.
    for (index, key) in [(0, "out/0.png"), (1, "out/result.json")] {
        let mut job = bench.job(|_| {}).await;
        let target = if index == 0 {
            job.output_key(0).expect("key")
        } else {
            manifest_ref(&job).expect("manifest")
        };
        job.mask = Some(target);
        let failure = bench.run(&job).await.expect_err("refused");
        assert_eq!(
            failure.code,
            ErrorCode::OutputOverwritesInput,
            "{key}: {failure}"
        );
    }
    // A job_id reused for another request.
    let first = bench.job(|_| {}).await;
    let result = bench.run(&first).await.expect("first");
    assert_eq!(result.request_sha256, Some(first.request_sha256()));
    let mut other = first.clone();
    other.prompt = "a blue bicycle".into();
    let failure = bench.run(&other).await.expect_err("conflict");
    assert_eq!(failure.code, ErrorCode::JobIdConflict, "{failure}");
    assert_eq!(bench.calls.load(Ordering::SeqCst), 1);

    // A chain whose watermark refuses small images: sizes known up front and after decoding.
    let mut small = settings();
    small.chain.stages = vec![StageConfig::Watermark(Default::default())];
    let bench = bench_with(small, now()).await;
    let sized = bench
        .job(|j| {
            j["params"]["width"] = 64.into();
            j["params"]["height"] = 64.into();
        })
        .await;
    let decoded = bench.job(|_| {}).await;
    for job in [sized, decoded] {
        let failure = bench.run(&job).await.expect_err("too small");
        assert_eq!(failure.code, ErrorCode::UnsupportedByChain, "{failure}");
    }
    assert_eq!(bench.calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn cancelled_and_drained_jobs_never_reach_the_engine() {
    let bench = bench().await;
    let job = bench.job(|_| {}).await;
    bench.flow.cancels().cancel(job.job_id);
    let failure = bench.run(&job).await.expect_err("cancelled");
    assert_eq!(failure.code, ErrorCode::Cancelled);

    // No free slot: a draining worker gives the job back instead of waiting.
    let busy = Settings {
        concurrency: ConcurrencyConfig {
            in_flight: 0,
            ..ConcurrencyConfig::default()
        },
        ..settings()
    };
    let bench = bench_with(busy, now()).await;
    let job = bench.job(|_| {}).await;
    let run = JobRun::default();
    let draining = run.draining.clone();
    let mut timings = Timings::new();
    let flow = bench.flow.run(&job, run, &mut timings);
    tokio::pin!(flow);
    assert!(
        tokio::time::timeout(Duration::from_millis(50), &mut flow)
            .await
            .is_err(),
        "waits for a slot"
    );
    draining.cancel();
    let failure = flow.await.expect_err("released");
    assert!(failure.interrupted, "{failure:?}");
    assert_eq!(
        crate::error::action_for(Err(&failure), 1, &Settings::default().retry),
        crate::error::Action::Release
    );
    assert_eq!(bench.calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn the_stop_token_stops_inference_between_steps() {
    let bench = bench().await;
    let job = bench.job(|_| {}).await;
    let run = JobRun::default();
    run.stop.cancel();
    let failure = bench
        .flow
        .run(&job, run, &mut Timings::new())
        .await
        .expect_err("stopped");
    assert_eq!(failure.code, ErrorCode::Cancelled);
}

#[test]
fn allow_lists_check_bucket_and_prefix() {
    let object = |bucket: &str, key: &str| ObjectRef::new(bucket, key).expect("ref");
    let buckets = vec!["inputs".to_owned()];
    assert!(allowed(&object("inputs", "any/key"), &buckets, &[]));
    assert!(!allowed(&object("other", "any/key"), &buckets, &[]));
    let prefixes = vec!["tenants/".to_owned()];
    assert!(allowed(
        &object("inputs", "tenants/1/a.png"),
        &buckets,
        &prefixes
    ));
    assert!(!allowed(
        &object("inputs", "other/a.png"),
        &buckets,
        &prefixes
    ));
}

#[test]
fn fallback_seeds_are_stable_per_job() {
    let id = JobId::new_random();
    assert_eq!(fallback_seed(id), fallback_seed(id));
    assert!(fallback_seed(id) < (1 << 53));
}

#[test]
fn missing_required_stages_names_what_the_chain_lacks() {
    let missing = missing_required_stages(&[]);
    let required = inpaint_stages::REQUIRED_STAGE_KINDS.map(|kind| kind.as_str().to_owned());
    assert_eq!(missing, required.to_vec());
}

/// A stage that modifies the job before inference and every output after it (as watermark and
/// provenance stages do): each change is an audit entry.
struct Stamping;

impl inpaint_plugin_api::Stage for Stamping {
    fn name(&self) -> &str {
        "stamping"
    }

    fn before_inference(
        &self,
        _: &JobContext,
    ) -> Result<inpaint_plugin_api::Verdict, inpaint_plugin_api::StageError> {
        Ok(stamp())
    }

    fn after_output(
        &self,
        _: &JobContext,
        _: &OutputImage,
    ) -> Result<inpaint_plugin_api::Verdict, inpaint_plugin_api::StageError> {
        Ok(stamp())
    }
}

fn stamp() -> inpaint_plugin_api::Verdict {
    use inpaint_plugin_api::{Change, Modification, Verdict};
    Verdict::Modify(vec![Modification::new(Change::AddMetadata {
        key: "stamp".into(),
        value: "1".into(),
    })])
}

/// Accepts every publish and settlement (the log test needs the settlement's line, not the
/// broker).
struct Nowhere;

impl crate::settle::Outbox for Nowhere {
    fn publish<'a>(
        &'a self,
        _: &'a str,
        _: &'a str,
        _: &'a [u8],
        _: inpaint_queue::lapin::BasicProperties,
    ) -> futures::future::BoxFuture<'a, Result<(), inpaint_queue::QueueError>> {
        Box::pin(async { Ok(()) })
    }
}

impl crate::settle::Settle for Nowhere {
    fn ack(&self) -> futures::future::BoxFuture<'_, Result<(), inpaint_queue::QueueError>> {
        Box::pin(async { Ok(()) })
    }

    fn reject(
        &self,
        _: bool,
    ) -> futures::future::BoxFuture<'_, Result<(), inpaint_queue::QueueError>> {
        Box::pin(async { Ok(()) })
    }
}

/// One info line per job, whatever the number of outputs and stages: a job run through a chain
/// of stamping stages (an audit entry per stage and output), then settled, logs "job done"
/// with its id, status and timings at info and the rest at debug.
#[tokio::test]
async fn a_job_logs_one_info_line_whatever_its_outputs_and_stages() {
    for (stages, images) in [(0usize, 1u32), (1, 1), (2, 4), (3, 3)] {
        let chain = Chain::new(
            (0..stages)
                .map(|_| Box::new(Stamping) as Box<dyn inpaint_plugin_api::Stage>)
                .collect(),
        );
        let bench = bench_with_chain(settings(), now(), chain).await;
        let job = bench
            .job(|j| j["params"]["num_images"] = images.into())
            .await;
        let (log, _guard) = crate::test_log::capture();
        let result = bench.run(&job).await.expect("succeeds");
        let topology = crate::topology::TopologyConfig::with_prefix("t");
        let settling = crate::settle::Settling {
            topology: &topology,
            unsafe_chain: &[],
            metrics: &Metrics::default(),
        };
        let received = crate::settle::Received {
            data: b"{}",
            properties: &Default::default(),
            attempt: 1,
            now_ms: 0,
        };
        crate::settle::carry_out(
            &settling,
            &Nowhere,
            &Nowhere,
            received,
            crate::error::Action::Ack,
            crate::settle::Answer::Result(Box::new(result)),
        )
        .await
        .expect("settled");
        let infos = log.at("INFO");
        assert_eq!(
            infos.len(),
            1,
            "{stages} stages, {images} images: {infos:#?}"
        );
        let line = &infos[0];
        assert!(line.contains("job done"), "{line}");
        assert!(line.contains(&job.job_id.to_string()), "{line}");
        assert!(line.contains("Succeeded"), "{line}");
        assert!(line.contains("inference="), "{line}");
        // The details are still there, at debug: one audit line per stage and hook/output.
        let audits = log
            .at("DEBUG")
            .iter()
            .filter(|l| l.contains("plugin chain audit"))
            .count();
        assert_eq!(audits, stages * (1 + images as usize), "{:#?}", log.lines());
    }
}

/// expires_at is checked at pick-up, after the wait for a slot, before inference, between
/// denoising steps and before storing the outputs. A clock that moves one second per reading, and deadlines one second apart:
/// each later deadline stops the job at the same point or later, every checkpoint is reached
/// by some deadline, a stop during inference comes one step later per second, and every stop
/// is the documented `expired` status.
#[tokio::test]
async fn expiry_is_checked_again_after_the_slot_before_inference_and_between_steps() {
    const STEPS: u32 = 10;
    let phases = [
        "when the job was picked up",
        "while it waited for an inference slot",
        "before inference",
        "during inference",
        "before storing the outputs",
    ];
    let mut seen: Vec<(usize, Option<usize>)> = Vec::new();
    for offset in 0..30i64 {
        let ticks = Arc::new(std::sync::atomic::AtomicI64::new(0));
        let clock_ticks = Arc::clone(&ticks);
        let bench = bench().await;
        let deadline = now() + chrono::Duration::seconds(offset);
        let job = bench
            .job(|j| {
                j["expires_at"] = deadline.to_rfc3339().into();
                j["params"]["num_inference_steps"] = STEPS.into();
            })
            .await;
        let flow = bench.flow.with_clock(Arc::new(move || {
            now() + chrono::Duration::seconds(clock_ticks.fetch_add(1, Ordering::SeqCst))
        }));
        let (tx, mut rx) = tokio::sync::mpsc::channel(64);
        let run = JobRun {
            attempt: 1,
            progress: Some(tx),
            ..JobRun::default()
        };
        let outcome = flow.run(&job, run, &mut Timings::new()).await;
        let mut steps = 0;
        while let Ok((step, _)) = rx.try_recv() {
            steps = step as usize;
        }
        match outcome {
            Ok(result) => {
                assert_eq!(result.status, JobStatus::Succeeded);
                assert_eq!(steps, STEPS as usize, "{offset}");
                seen.push((phases.len(), None));
            }
            Err(failure) => {
                assert_eq!(failure.code, ErrorCode::Expired, "{offset}: {failure}");
                assert_eq!(failure.code.status(), JobStatus::Expired);
                let phase = phases
                    .iter()
                    .position(|p| failure.message.contains(p))
                    .unwrap_or_else(|| panic!("{offset}: {}", failure.message));
                if phase == 3 {
                    // The check follows every step, the last one too (before decoding).
                    assert!(steps <= STEPS as usize, "{offset}: stopped at {steps}");
                    seen.push((phase, Some(steps)));
                } else {
                    let ran = if phase == 4 { STEPS as usize } else { 0 };
                    assert_eq!(steps, ran, "{offset}: {}", failure.message);
                    seen.push((phase, None));
                }
            }
        }
    }
    for pair in seen.windows(2) {
        assert!(pair[0].0 <= pair[1].0, "{seen:?}");
        if let ((3, Some(a)), (3, Some(b))) = (pair[0], pair[1]) {
            assert_eq!(b, a + 1, "one more step per second: {seen:?}");
        }
    }
    for phase in 0..=phases.len() {
        assert!(seen.iter().any(|(p, _)| *p == phase), "{phase}: {seen:?}");
    }
}

/// limits.job_timeout_secs: the same checkpoints as expires_at give `timeout` (status failed)
/// once the budget from pick-up is spent; budgets one second apart on a clock moving one second
/// per reading stop the job at the same point or later, every checkpoint is reached, and a
/// large budget lets it succeed. An expires_at before the budget still says `expired`.
#[tokio::test]
async fn the_job_time_budget_gives_timeout_at_every_checkpoint() {
    const STEPS: u32 = 10;
    let phases = [
        "while it waited for an inference slot",
        "before inference",
        "during inference",
        "before storing the outputs",
    ];
    let mut seen: Vec<usize> = Vec::new();
    for (budget, expires) in (1..30u64).map(|b| (b, None)).chain([(5, Some(3i64))]) {
        let ticks = Arc::new(std::sync::atomic::AtomicI64::new(0));
        let clock_ticks = Arc::clone(&ticks);
        let mut settings = settings();
        settings.limits.job_timeout_secs = budget;
        let bench = bench_with(settings, now()).await;
        let job = bench
            .job(|j| {
                j["params"]["num_inference_steps"] = STEPS.into();
                if let Some(e) = expires {
                    j["expires_at"] = (now() + chrono::Duration::seconds(e)).to_rfc3339().into();
                }
            })
            .await;
        let flow = bench.flow.with_clock(Arc::new(move || {
            now() + chrono::Duration::seconds(clock_ticks.fetch_add(1, Ordering::SeqCst))
        }));
        let run = JobRun {
            attempt: 1,
            ..JobRun::default()
        };
        match flow.run(&job, run, &mut Timings::new()).await {
            Ok(result) => {
                assert!(expires.is_none(), "expires_at 3 s: not expired");
                assert_eq!(result.status, JobStatus::Succeeded);
                seen.push(phases.len());
            }
            Err(failure) if expires.is_some() => {
                assert_eq!(failure.code, ErrorCode::Expired, "{failure}");
            }
            Err(failure) => {
                assert_eq!(failure.code, ErrorCode::Timeout, "{budget}: {failure}");
                assert_eq!(failure.code.status(), JobStatus::Failed);
                assert!(failure.message.contains("job_timeout_secs"), "{failure}");
                let phase = phases
                    .iter()
                    .position(|p| failure.message.contains(p))
                    .unwrap_or_else(|| panic!("{budget}: {}", failure.message));
                seen.push(phase);
            }
        }
    }
    assert!(seen.windows(2).all(|w| w[0] <= w[1]), "{seen:?}");
    for phase in 0..=phases.len() {
        assert!(seen.contains(&phase), "{phase}: {seen:?}");
    }
}
