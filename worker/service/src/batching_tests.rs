//! The inference thread: panics as job errors, progress and cancel, and cross-job batching
//! (which requests share a batch, limits, splitting a failed batch). Ordering is made
//! deterministic with a gate: the first request holds the thread until the test has queued the
//! rest, so batches are formed from what is queued, never from timing.

use std::sync::{Mutex, mpsc as std_mpsc};

use inpaint_engine::job::JobSpec;
use inpaint_engine::schedulers::SchedulerKind;
use inpaint_job::JobId;

use super::*;
use crate::inference::PassThrough;

#[test]
fn an_out_of_memory_panic_is_transient_and_other_panics_are_not() {
    let oom = catch_unwind(|| panic!("Torch(\"CUDA out of memory. Tried to allocate 2.00 GiB\")"))
        .expect_err("panics");
    assert!(matches!(
        panic_failure(&oom),
        InferenceError::OutOfMemory(_)
    ));
    let bug = catch_unwind(|| panic!("index out of bounds")).expect_err("panics");
    assert!(matches!(panic_failure(&bug), InferenceError::Panicked(_)));
}

fn request(prompt: &str, width: u32, seeds: usize) -> InferenceRequest {
    InferenceRequest {
        job_id: JobId::new_random(),
        spec: JobSpec {
            prompt: prompt.into(),
            negative_prompt: None,
            image: None,
            mask: None,
            width: Some(width),
            height: Some(8),
            num_inference_steps: 3,
            guidance_scale: 7.5,
            strength: 1.0,
            eta: 0.0,
            scheduler: SchedulerKind::Pndm,
            seeds: (1..=seeds as u64).collect(),
            preserve_unmasked: true,
            mask_grow_px: 0,
            mask_feather_px: 0,
            crop_to_mask: None,
            max_side: 1024,
        },
    }
}

/// The pass-through engine, recording the prompts of every batch it runs. A request whose
/// prompt is "gate" holds the thread until the test sends on the gate; "boom" panics; batches
/// of more than `fail_above` images fail as a whole with out-of-memory; `bytes_per_image` is
/// its memory estimate.
struct Recorder {
    inner: PassThrough,
    batches: Arc<Mutex<Vec<Vec<String>>>>,
    shaped: Arc<Mutex<Vec<String>>>,
    gate: Option<Receiver<()>>,
    fail_above: usize,
    bytes_per_image: Option<u64>,
}

impl Inference for Recorder {
    fn model(&self) -> ModelInfo {
        self.inner.model()
    }
    fn shape(&self, request: &InferenceRequest) -> Result<BatchShape, InferenceError> {
        self.shaped
            .lock()
            .expect("lock")
            .push(request.spec.prompt.clone());
        if request.spec.prompt == "refuse" {
            return Err(InferenceError::InvalidInput("refused by its shape".into()));
        }
        self.inner.shape(request)
    }
    fn run_batch(
        &mut self,
        batch: &mut [BatchRun<'_>],
    ) -> Result<Vec<Result<InferenceOutput, InferenceError>>, InferenceError> {
        let prompts: Vec<String> = batch
            .iter()
            .map(|r| r.request.spec.prompt.clone())
            .collect();
        self.batches.lock().expect("lock").push(prompts.clone());
        if prompts.iter().any(|p| p == "gate")
            && let Some(gate) = &self.gate
        {
            let _ = gate.recv();
        }
        if prompts.iter().any(|p| p == "boom") {
            panic!("engine exploded");
        }
        let images: usize = batch.iter().map(|r| r.request.spec.seeds.len()).sum();
        if images > self.fail_above {
            return Err(InferenceError::OutOfMemory(format!("{images} images")));
        }
        self.inner.run_batch(batch)
    }
    fn batch_bytes(&self, _shape: &BatchShape, images: usize) -> Option<u64> {
        self.bytes_per_image.map(|b| b * images as u64)
    }
}

struct Bench {
    thread: InferenceThread,
    batches: Arc<Mutex<Vec<Vec<String>>>>,
    shaped: Arc<Mutex<Vec<String>>>,
    open_gate: std_mpsc::Sender<()>,
    stats: Arc<Mutex<Vec<BatchStats>>>,
}

async fn bench(config: BatchConfig, fail_above: usize, bytes_per_image: Option<u64>) -> Bench {
    let batches = Arc::new(Mutex::new(Vec::new()));
    let shaped = Arc::new(Mutex::new(Vec::new()));
    let stats = Arc::new(Mutex::new(Vec::new()));
    let (open_gate, gate) = std_mpsc::channel();
    let recorder = Recorder {
        inner: PassThrough::default(),
        batches: Arc::clone(&batches),
        shaped: Arc::clone(&shaped),
        gate: Some(gate),
        fail_above,
        bytes_per_image,
    };
    let seen = Arc::clone(&stats);
    let config = BatchConfig {
        observe: Some(Arc::new(move |s: &BatchStats| {
            seen.lock().expect("lock").push(*s)
        })),
        ..config
    };
    let thread = InferenceThread::spawn_batching(move || Ok(Box::new(recorder) as Box<_>), config)
        .await
        .expect("spawn");
    Bench {
        thread,
        batches,
        shaped,
        open_gate,
        stats,
    }
}

impl Bench {
    /// Queues a gate request, waits until it holds the thread, queues `requests` in order,
    /// lets the gate go and returns each one's result in order.
    async fn run_gated(
        &self,
        requests: Vec<(InferenceRequest, CancellationToken)>,
    ) -> Vec<Result<InferenceOutput, InferenceError>> {
        let gate = self.hold();
        let answers: Vec<Answer> = requests
            .into_iter()
            .map(|(request, cancelled)| {
                self.thread
                    .queue(request, cancelled, None, None)
                    .expect("queued")
            })
            .collect();
        self.release(gate).await;
        let mut results = Vec::new();
        for answer in answers {
            results.push(answer.wait().await);
        }
        results
    }

    /// Queues the gate and returns once it is running (recorded) on the thread.
    fn hold(&self) -> Answer {
        let gate = self
            .thread
            .queue(request("gate", 8, 1), CancellationToken::new(), None, None)
            .expect("gate");
        while self.batches.lock().expect("lock").is_empty() {
            std::thread::yield_now();
        }
        gate
    }

    async fn release(&self, gate: Answer) {
        self.open_gate.send(()).expect("gate");
        gate.wait().await.expect("gate request");
    }

    /// The batches after the gate's, as prompt lists.
    fn batches(&self) -> Vec<Vec<String>> {
        self.batches.lock().expect("lock")[1..].to_vec()
    }
}

fn batching(max_batch: usize) -> BatchConfig {
    BatchConfig {
        max_batch,
        ..BatchConfig::default()
    }
}

/// `n` one-image requests of one shape, prompts "0", "1", ..., none cancelled.
fn numbered(n: usize) -> Vec<(InferenceRequest, CancellationToken)> {
    plain((0..n).map(|i| request(&i.to_string(), 16, 1)).collect())
}

fn plain(requests: Vec<InferenceRequest>) -> Vec<(InferenceRequest, CancellationToken)> {
    requests
        .into_iter()
        .map(|r| (r, CancellationToken::new()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_requests_of_one_shape_share_a_batch_and_others_wait_their_turn() {
    let bench = bench(batching(8), usize::MAX, None).await;
    let results = bench
        .run_gated(plain(vec![
            request("a", 16, 1),
            request("b", 24, 1),
            request("c", 16, 2),
            request("d", 24, 1),
            request("e", 16, 1),
        ]))
        .await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(
        bench.batches(),
        vec![vec!["a", "c", "e"], vec!["b", "d"]],
        "one batch per shape, oldest shape first, arrival order inside"
    );
    let stats = bench.stats.lock().expect("lock").clone();
    assert_eq!(
        stats[1..]
            .iter()
            .map(|s| (s.jobs, s.images))
            .collect::<Vec<_>>(),
        vec![(3, 4), (2, 2)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_holds_at_most_max_batch_images_and_a_large_job_runs_alone() {
    let bench = bench(batching(3), usize::MAX, None).await;
    let results = bench
        .run_gated(plain(vec![
            request("a", 16, 2),
            request("b", 16, 2),
            request("big", 16, 5),
            request("c", 16, 1),
        ]))
        .await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(
        bench.batches(),
        vec![vec!["a", "c"], vec!["b"], vec!["big"]],
        "a later request fills a batch when it fits; a job larger than the limit still runs"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_budget_bounds_a_batch() {
    let config = BatchConfig {
        memory_budget: Some(250),
        ..batching(8)
    };
    let bench = bench(config, usize::MAX, Some(100)).await;
    let results = bench.run_gated(numbered(5)).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(
        bench.batches(),
        vec![vec!["0", "1"], vec!["2", "3"], vec!["4"]]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_free_device_memory_bounds_the_budget_too() {
    let config = BatchConfig {
        memory_budget: Some(10_000),
        free_memory: Some(Arc::new(|| Some(340))),
        ..batching(8)
    };
    // 90 % of 340 = 306: three images of 100.
    let bench = bench(config, usize::MAX, Some(100)).await;
    let results = bench.run_gated(numbered(4)).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(bench.batches(), vec![vec!["0", "1", "2"], vec!["3"]]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_out_of_memory_batch_is_split_and_every_job_succeeds() {
    let bench = bench(batching(8), 2, None).await;
    let results = bench.run_gated(numbered(5)).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(
        bench.batches(),
        vec![
            vec!["0", "1", "2", "3", "4"],
            vec!["0", "1"],
            vec!["2", "3", "4"],
            vec!["2"],
            vec!["3", "4"],
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_breaks_the_batch_fails_alone() {
    let bench = bench(batching(8), usize::MAX, None).await;
    let results = bench
        .run_gated(plain(vec![
            request("a", 16, 1),
            request("boom", 16, 1),
            request("refuse", 16, 1),
            request("c", 16, 1),
        ]))
        .await;
    assert!(results[0].is_ok() && results[3].is_ok(), "{results:?}");
    assert!(
        matches!(&results[1], Err(InferenceError::Panicked(m)) if m.contains("exploded")),
        "{:?}",
        results[1]
    );
    assert!(
        matches!(&results[2], Err(InferenceError::InvalidInput(m)) if m.contains("refused")),
        "{:?}",
        results[2]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_cancelled_while_queued_or_running_stops_alone() {
    let bench = bench(batching(8), usize::MAX, None).await;
    let queued = CancellationToken::new();
    // Stopped by its deadline check after two steps (asked when the batch starts, then after
    // every step): the others run every step.
    let asked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = Arc::clone(&asked);
    let deadline: StopWhen =
        Arc::new(move || counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst) >= 2);
    let watched = request("watched", 16, 1);
    let (progress_a, mut steps_a) = mpsc::channel(64);
    let gate = bench.hold();
    let thread = &bench.thread;
    let a = thread
        .queue(
            request("a", 16, 1),
            CancellationToken::new(),
            None,
            Some(progress_a),
        )
        .expect("a");
    let q = thread
        .queue(request("q", 16, 1), queued.clone(), None, None)
        .expect("q");
    let w = thread
        .queue(watched, CancellationToken::new(), Some(deadline), None)
        .expect("watched");
    queued.cancel();
    bench.release(gate).await;
    assert_eq!(a.wait().await.expect("a runs").images.len(), 1);
    assert!(matches!(q.wait().await, Err(InferenceError::Cancelled)));
    assert!(matches!(w.wait().await, Err(InferenceError::Cancelled)));
    let mut seen = Vec::new();
    while let Ok(step) = steps_a.try_recv() {
        seen.push(step);
    }
    assert_eq!(
        seen,
        vec![(1, 3), (2, 3), (3, 3)],
        "a's own progress, every step"
    );
    assert_eq!(bench.batches(), vec![vec!["a", "watched"]]);
    assert_eq!(
        asked.load(std::sync::atomic::Ordering::SeqCst),
        3,
        "stopped after step 2"
    );
}

/// Whether the first job waits for company: it is queued alone; once the thread has picked it
/// (its shape was asked), the second is queued.
async fn first_and_second(wait: Duration) -> Vec<Vec<String>> {
    let config = BatchConfig {
        max_batch: 2,
        wait,
        ..BatchConfig::default()
    };
    let bench = bench(config, usize::MAX, None).await;
    let shaped = Arc::clone(&bench.shaped);
    let first = bench
        .thread
        .queue(
            request("first", 16, 1),
            CancellationToken::new(),
            None,
            None,
        )
        .expect("first");
    while shaped.lock().expect("lock").is_empty() {
        std::thread::yield_now();
    }
    let second = bench
        .thread
        .queue(
            request("second", 16, 1),
            CancellationToken::new(),
            None,
            None,
        )
        .expect("second");
    first.wait().await.expect("first");
    second.wait().await.expect("second");
    bench.batches.lock().expect("lock").clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_job_waits_for_company_until_the_batch_is_full() {
    // A 10-minute wait: the test only ends soon because the second job fills the batch.
    assert_eq!(
        first_and_second(Duration::from_secs(600)).await,
        vec![vec!["first", "second"]]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_wait_the_first_job_runs_without_company() {
    // With max_batch 2 and no wait, the first job runs alone although its batch has room: it
    // reaches the engine while nothing else is queued (a waiting batcher would hold it there).
    let config = BatchConfig {
        max_batch: 2,
        ..BatchConfig::default()
    };
    let bench = bench(config, usize::MAX, None).await;
    let first = bench
        .thread
        .queue(
            request("first", 16, 1),
            CancellationToken::new(),
            None,
            None,
        )
        .expect("first");
    first.wait().await.expect("first");
    let second = bench
        .thread
        .queue(
            request("second", 16, 1),
            CancellationToken::new(),
            None,
            None,
        )
        .expect("second");
    second.wait().await.expect("second");
    assert_eq!(
        bench.batches.lock().expect("lock").clone(),
        vec![vec!["first"], vec!["second"]]
    );
}

struct Panicky;
impl Inference for Panicky {
    fn model(&self) -> ModelInfo {
        PassThrough::default().model()
    }
    fn shape(&self, request: &InferenceRequest) -> Result<BatchShape, InferenceError> {
        PassThrough::default().shape(request)
    }
    fn run_batch(
        &mut self,
        batch: &mut [BatchRun<'_>],
    ) -> Result<Vec<Result<InferenceOutput, InferenceError>>, InferenceError> {
        if batch.iter().any(|r| r.request.spec.prompt == "boom") {
            panic!("engine exploded");
        }
        Ok(batch
            .iter()
            .map(|_| {
                Ok(InferenceOutput {
                    images: vec![],
                    prompt_truncated: false,
                })
            })
            .collect())
    }
}

#[tokio::test]
async fn a_panic_is_a_job_error_and_the_thread_lives_on() {
    let thread = InferenceThread::spawn(|| Ok(Box::new(Panicky) as Box<dyn Inference>))
        .await
        .expect("spawn");
    let err = thread
        .run(request("boom", 8, 2), CancellationToken::new(), None)
        .await
        .expect_err("panics");
    assert!(
        matches!(err, InferenceError::Panicked(ref m) if m.contains("exploded")),
        "{err}"
    );
    thread
        .run(request("fine", 8, 2), CancellationToken::new(), None)
        .await
        .expect("still serving");
}

#[tokio::test]
async fn pass_through_reports_progress_and_stops_when_cancelled() {
    let engine = PassThrough::default();
    let thread = InferenceThread::spawn(move || Ok(Box::new(engine) as Box<dyn Inference>))
        .await
        .expect("spawn");
    let (tx, mut rx) = mpsc::channel(16);
    let out = thread
        .run(request("x", 8, 2), CancellationToken::new(), Some(tx))
        .await
        .expect("runs");
    assert_eq!(out.images.len(), 2);
    assert_eq!(out.images[0].dimensions(), (8, 8));
    let mut steps = Vec::new();
    while let Ok(step) = rx.try_recv() {
        steps.push(step);
    }
    assert_eq!(steps, vec![(1, 3), (2, 3), (3, 3)]);
    let cancelled = CancellationToken::new();
    cancelled.cancel();
    let err = thread
        .run(request("x", 8, 2), cancelled, None)
        .await
        .expect_err("cancelled");
    assert!(matches!(err, InferenceError::Cancelled));
}
