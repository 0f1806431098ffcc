//! The inference thread and its cross-job batching.
//!
//! Jobs arrive one at a time (one per delivery), but a GPU is only busy with batches, so the
//! thread gathers queued requests that can share one denoising loop — equal [`BatchShape`]:
//! inference size, steps, scheduler, strength, eta — into one [`Inference::run_batch`] call:
//! up to `max_batch` images, waiting at most `wait` for company after the first one (0: only
//! what is already queued), and never more than the memory budget allows. Requests that cannot
//! join stay queued in arrival order and lead the next batch. Each request keeps its own cancel
//! token, deadline and progress channel: stopping one leaves the others running.
//!
//! A batch that fails as a whole (out of memory, a model error, a panic) is split in two and each
//! half tried again, down to single requests: an out-of-memory batch becomes smaller batches, not
//! failed jobs, and a request that breaks the model fails alone.

use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::time::{Duration, Instant};

use inpaint_engine::pipeline::{BatchShape, StepControl};
use inpaint_job::ModelInfo;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::inference::{BatchRun, Inference, InferenceError, InferenceOutput, InferenceRequest};

/// Progress of a running job: (step, total).
pub type Progress = mpsc::Sender<(u32, u32)>;

/// Asked before the run and after each step, on the inference thread: true stops the run there
/// as a cancel does (the flow gives the job's deadline, read from its clock).
pub type StopWhen = Arc<dyn Fn() -> bool + Send + Sync>;

/// Free device memory in bytes, asked once the model is loaded (NVML on CUDA).
pub type FreeMemory = Arc<dyn Fn() -> Option<u64> + Send + Sync>;

/// Told after every batch that ran (metrics).
pub type ObserveBatch = Arc<dyn Fn(&BatchStats) + Send + Sync>;

/// How the thread batches: `engine.max_batch`, `engine.batch_wait_ms`, `engine.batch_memory_mib`.
#[derive(Clone, Default)]
pub struct BatchConfig {
    /// Images per batch at most; 0 and 1 both mean one job at a time.
    pub max_batch: usize,
    /// How long the first request of a batch waits for company.
    pub wait: Duration,
    /// Device memory a batch may use beyond the weights, in bytes (None: no limit of its own).
    pub memory_budget: Option<u64>,
    /// Where the device's free memory can be read, the budget is also at most 90 % of what is
    /// free once the model is loaded.
    pub free_memory: Option<FreeMemory>,
    /// Told about every batch that ran.
    pub observe: Option<ObserveBatch>,
}

impl std::fmt::Debug for BatchConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchConfig")
            .field("max_batch", &self.max_batch)
            .field("wait", &self.wait)
            .field("memory_budget", &self.memory_budget)
            .finish_non_exhaustive()
    }
}

/// What one batch did.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BatchStats {
    /// Requests in the batch.
    pub jobs: usize,
    /// Images they asked for.
    pub images: usize,
    /// Time inside the engine (planning, encoding, the denoising loop, decoding).
    pub busy: Duration,
}

struct Work {
    request: InferenceRequest,
    cancelled: CancellationToken,
    stop_when: Option<StopWhen>,
    progress: Option<Progress>,
    reply: oneshot::Sender<Result<InferenceOutput, InferenceError>>,
}

impl std::fmt::Debug for Work {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Work")
            .field("job_id", &self.request.job_id)
            .finish()
    }
}

impl Work {
    fn stopped(&self) -> bool {
        self.cancelled.is_cancelled() || self.stop_when.as_ref().is_some_and(|stop| stop())
    }
}

/// A request waiting for its batch, with what batching compares.
#[derive(Debug)]
struct Queued {
    work: Work,
    shape: BatchShape,
    images: usize,
}

/// The dedicated inference thread. Cloning the handle shares the thread; the thread ends when
/// the last handle is dropped.
#[derive(Clone, Debug)]
pub struct InferenceThread {
    work: std::sync::mpsc::Sender<Work>,
    model: ModelInfo,
}

impl InferenceThread {
    /// Starts the thread without batching (one job at a time) and builds the engine on it with
    /// `factory`; returns once the engine is ready, or with its error.
    pub async fn spawn<F>(factory: F) -> Result<Self, InferenceError>
    where
        F: FnOnce() -> Result<Box<dyn Inference>, InferenceError> + Send + 'static,
    {
        Self::spawn_batching(factory, BatchConfig::default()).await
    }

    /// Starts the thread with cross-job batching as `config` says, and builds the engine on it
    /// with `factory` (models are loaded where they run); returns once the engine is ready, or
    /// with its error.
    pub async fn spawn_batching<F>(factory: F, config: BatchConfig) -> Result<Self, InferenceError>
    where
        F: FnOnce() -> Result<Box<dyn Inference>, InferenceError> + Send + 'static,
    {
        let (ready_tx, ready_rx) = oneshot::channel();
        let (work_tx, work_rx) = std::sync::mpsc::channel::<Work>();
        std::thread::Builder::new()
            .name("inference".into())
            .spawn(move || {
                let engine = match catch_unwind(AssertUnwindSafe(factory)) {
                    Ok(Ok(engine)) => engine,
                    Ok(Err(e)) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                    Err(panic) => {
                        let _ = ready_tx.send(Err(InferenceError::Panicked(panic_message(&panic))));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(engine.model()));
                Batcher::new(engine, config).serve(work_rx);
            })
            .map_err(|e| {
                InferenceError::Failed(format!("cannot start the inference thread: {e}"))
            })?;
        let model = ready_rx.await.map_err(|_| InferenceError::Unavailable)??;
        Ok(Self {
            work: work_tx,
            model,
        })
    }

    /// The loaded model.
    pub fn model(&self) -> &ModelInfo {
        &self.model
    }

    /// Queues `request` and waits for its images. Cancelling `cancelled` stops it while queued
    /// or between steps; `progress` receives (step, total) after each step (dropped when full).
    pub async fn run(
        &self,
        request: InferenceRequest,
        cancelled: CancellationToken,
        progress: Option<Progress>,
    ) -> Result<InferenceOutput, InferenceError> {
        self.run_until(request, cancelled, None, progress).await
    }

    /// [`InferenceThread::run`], also stopped (as by a cancel) once `stop_when` says so: checked
    /// before the run starts and after every step, like the cancel token.
    pub async fn run_until(
        &self,
        request: InferenceRequest,
        cancelled: CancellationToken,
        stop_when: Option<StopWhen>,
        progress: Option<Progress>,
    ) -> Result<InferenceOutput, InferenceError> {
        self.queue(request, cancelled, stop_when, progress)?
            .wait()
            .await
    }

    /// Queues `request` now (requests are batched in the order they are queued) and returns
    /// the handle its result arrives on.
    pub fn queue(
        &self,
        request: InferenceRequest,
        cancelled: CancellationToken,
        stop_when: Option<StopWhen>,
        progress: Option<Progress>,
    ) -> Result<Answer, InferenceError> {
        let (reply, answer) = oneshot::channel();
        self.work
            .send(Work {
                request,
                cancelled,
                stop_when,
                progress,
                reply,
            })
            .map_err(|_| InferenceError::Unavailable)?;
        Ok(Answer(answer))
    }
}

/// Where a queued request's result arrives.
#[derive(Debug)]
pub struct Answer(oneshot::Receiver<Result<InferenceOutput, InferenceError>>);

impl Answer {
    /// Waits for the result.
    pub async fn wait(self) -> Result<InferenceOutput, InferenceError> {
        self.0.await.map_err(|_| InferenceError::Unavailable)?
    }
}

/// The thread's loop: gathers batches and runs them.
struct Batcher {
    engine: Box<dyn Inference>,
    max_batch: usize,
    wait: Duration,
    budget: Option<u64>,
    observe: Option<ObserveBatch>,
    /// Requests that arrived while another shape was being gathered, oldest first.
    pending: VecDeque<Queued>,
}

impl Batcher {
    fn new(engine: Box<dyn Inference>, config: BatchConfig) -> Self {
        let free = config
            .free_memory
            .as_ref()
            .and_then(|free| free())
            .map(|bytes| bytes / 10 * 9);
        let budget = match (config.memory_budget, free) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let max_batch = config.max_batch.max(1);
        if max_batch > 1 {
            tracing::info!(
                max_batch,
                wait_ms = config.wait.as_millis() as u64,
                budget_mib = budget.map(|b| b >> 20),
                "cross-job batching on"
            );
        }
        Self {
            engine,
            max_batch,
            wait: config.wait,
            budget,
            observe: config.observe,
            pending: VecDeque::new(),
        }
    }

    fn serve(mut self, work: Receiver<Work>) {
        loop {
            let first = match self.pending.pop_front() {
                Some(queued) => queued,
                None => match work.recv() {
                    Ok(item) => match self.admit(item) {
                        Some(queued) => queued,
                        None => continue,
                    },
                    Err(_) => return,
                },
            };
            let batch = self.gather(first, &work);
            self.run(batch);
        }
    }

    /// Checks a new request: answered at once when the engine refuses it. Whether it was
    /// stopped is asked once, when its batch starts ([`Batcher::run`]): a deadline is read from
    /// the job's clock at each check, and one check before the first step is what the flow
    /// counts on.
    fn admit(&self, work: Work) -> Option<Queued> {
        let shape = catch_unwind(AssertUnwindSafe(|| self.engine.shape(&work.request)))
            .unwrap_or_else(|panic| Err(panic_failure(&panic)));
        match shape {
            Ok(shape) => Some(Queued {
                images: work.request.spec.seeds.len().max(1),
                shape,
                work,
            }),
            Err(e) => {
                let _ = work.reply.send(Err(e));
                None
            }
        }
    }

    /// Whether `images` images of `shape` fit one batch.
    fn fits(&self, shape: &BatchShape, images: usize) -> bool {
        images <= self.max_batch
            && match (self.budget, self.engine.batch_bytes(shape, images)) {
                (Some(budget), Some(needed)) => needed <= budget,
                _ => true,
            }
    }

    /// `first` and the requests that can join it: queued ones first, then arrivals until the
    /// batch is full or `wait` has passed since it started gathering.
    fn gather(&mut self, first: Queued, work: &Receiver<Work>) -> Vec<Queued> {
        let mut images = first.images;
        let mut batch = vec![first];
        if images >= self.max_batch {
            return batch;
        }
        let mut i = 0;
        while i < self.pending.len() {
            let joins = self.pending[i].shape.matches(&batch[0].shape)
                && self.fits(&batch[0].shape, images + self.pending[i].images);
            match joins.then(|| self.pending.remove(i)).flatten() {
                Some(queued) => {
                    images += queued.images;
                    batch.push(queued);
                }
                None => i += 1,
            }
        }
        let deadline = Instant::now() + self.wait;
        while images < self.max_batch {
            let item = match work.try_recv() {
                Ok(item) => item,
                Err(TryRecvError::Disconnected) => break,
                Err(TryRecvError::Empty) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    match work.recv_timeout(left) {
                        Ok(item) => item,
                        Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
                    }
                }
            };
            let Some(queued) = self.admit(item) else {
                continue;
            };
            if queued.shape.matches(&batch[0].shape)
                && self.fits(&batch[0].shape, images + queued.images)
            {
                images += queued.images;
                batch.push(queued);
            } else {
                self.pending.push_back(queued);
            }
        }
        batch
    }

    /// Runs one batch and answers every request in it; a batch that fails as a whole is split.
    fn run(&mut self, batch: Vec<Queued>) {
        let (stopped, mut batch): (Vec<Queued>, Vec<Queued>) =
            batch.into_iter().partition(|queued| queued.work.stopped());
        for queued in stopped {
            let _ = queued.work.reply.send(Err(InferenceError::Cancelled));
        }
        if batch.is_empty() {
            return;
        }
        let jobs = batch.len();
        let images = batch.iter().map(|q| q.images).sum();
        let _span = tracing::info_span!("inference", jobs, images).entered();
        if jobs == 1 {
            // One job: its id on every line, as before batching.
            tracing::debug!(job_id = %batch[0].work.request.job_id, "inference starts");
        } else {
            let ids: Vec<String> = batch
                .iter()
                .map(|q| q.work.request.job_id.to_string())
                .collect();
            tracing::debug!(jobs = %ids.join(","), "batch starts");
        }
        let started = Instant::now();
        let outcome = {
            let mut callbacks: Vec<Box<dyn FnMut(usize, usize) -> StepControl + '_>> = batch
                .iter()
                .map(|queued| {
                    let work = &queued.work;
                    Box::new(move |step: usize, total: usize| {
                        if let Some(progress) = &work.progress {
                            let _ = progress.try_send((step as u32, total as u32));
                        }
                        if work.stopped() {
                            StepControl::Cancel
                        } else {
                            StepControl::Continue
                        }
                    }) as Box<_>
                })
                .collect();
            let mut runs: Vec<BatchRun<'_>> = batch
                .iter()
                .zip(callbacks.iter_mut())
                .map(|(queued, on_step)| BatchRun {
                    request: &queued.work.request,
                    on_step: &mut **on_step,
                })
                .collect();
            catch_unwind(AssertUnwindSafe(|| self.engine.run_batch(&mut runs)))
                .unwrap_or_else(|panic| Err(panic_failure(&panic)))
        };
        match outcome {
            Ok(results) => {
                if let Some(observe) = &self.observe {
                    observe(&BatchStats {
                        jobs,
                        images,
                        busy: started.elapsed(),
                    });
                }
                let mut results = results.into_iter();
                for queued in batch {
                    let result = results.next().unwrap_or_else(|| {
                        Err(InferenceError::Failed(
                            "the batch returned no result".into(),
                        ))
                    });
                    let _ = queued.work.reply.send(result);
                }
            }
            Err(error) if batch.len() > 1 => {
                tracing::warn!(%error, jobs, images, "batch failed as a whole: split in two and tried again");
                let second = batch.split_off(batch.len() / 2);
                self.run(batch);
                self.run(second);
            }
            Err(error) => {
                if let Some(queued) = batch.pop() {
                    let _ = queued.work.reply.send(Err(error));
                }
            }
        }
    }
}

/// A panic on the inference thread as a job error. libtorch reports a CUDA allocation failure
/// through tch's infallible ops as a panic whose message says "out of memory": that one is
/// transient (another attempt, or another worker, may fit), every other panic is not.
pub(crate) fn panic_failure(panic: &Box<dyn std::any::Any + Send>) -> InferenceError {
    let message = panic_message(panic);
    if message.to_ascii_lowercase().contains("out of memory") {
        InferenceError::OutOfMemory(message)
    } else {
        InferenceError::Panicked(message)
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".into())
}

#[cfg(test)]
#[path = "batching_tests.rs"]
mod tests;
