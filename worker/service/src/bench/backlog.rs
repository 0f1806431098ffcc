//! `bench --backlog N`: N jobs queued at once on the worker's batching inference thread, drained
//! once per `--max-batch` value and `--repeats` times, interleaved; the best run of each setting
//! is reported with the batches the thread formed.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use inpaint_job::{JobId, ModelInfo};
use tokio_util::sync::CancellationToken;

use super::{BacklogFigures, BenchArgs, BenchError, job};
use crate::batching::{BatchConfig, BatchStats, InferenceThread};
use crate::inference::{Inference, InferenceRequest, TchEngine};

/// Every `--max-batch` value's figures, in the order given.
pub(super) fn run(args: &BenchArgs, side: u32) -> Result<Vec<BacklogFigures>, BenchError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| BenchError::Invalid(format!("cannot start a runtime: {e}")))?;
    // Interleaved (1, 8, 1, 8, ...) so that a slow spell of a shared machine falls on every
    // setting alike; the best run of each is reported.
    let mut runs: Vec<Vec<BacklogRun>> = args.max_batch.iter().map(|_| Vec::new()).collect();
    for _ in 0..args.repeats.max(1) {
        for (i, &max_batch) in args.max_batch.iter().enumerate() {
            runs[i].push(runtime.block_on(drain_backlog(args, max_batch, side))?);
        }
    }
    let mut figures = Vec::new();
    for (&max_batch, runs) in args.max_batch.iter().zip(runs) {
        let Some(best) = runs.iter().min_by(|a, b| a.seconds.total_cmp(&b.seconds)) else {
            continue;
        };
        figures.push(BacklogFigures {
            max_batch,
            jobs: args.backlog,
            seconds: best.seconds,
            jobs_per_s: args.backlog as f64 / best.seconds,
            batches: best.batches.clone(),
            runs: runs.iter().map(|r| r.seconds).collect(),
        });
    }
    Ok(figures)
}

/// One timed drain of the backlog.
struct BacklogRun {
    seconds: f64,
    /// Images of each batch the inference thread ran, in order.
    batches: Vec<usize>,
}

/// Queues `args.backlog` jobs at once on an inference thread batching up to `max_batch`
/// images and waits for every answer.
async fn drain_backlog(
    args: &BenchArgs,
    max_batch: usize,
    side: u32,
) -> Result<BacklogRun, BenchError> {
    let (pipeline, _) = args.load()?;
    let model = ModelInfo {
        id: args.model.clone(),
        weights_sha256: String::new(),
    };
    let engine = TchEngine::from_pipeline(pipeline, model);
    let batches = Arc::new(Mutex::new(Vec::new()));
    let seen = batches.clone();
    let thread = InferenceThread::spawn_batching(
        move || Ok(Box::new(engine) as Box<dyn Inference>),
        BatchConfig {
            max_batch,
            wait: Duration::from_millis(args.batch_wait_ms),
            observe: Some(Arc::new(move |stats: &BatchStats| {
                seen.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(stats.images)
            })),
            ..BatchConfig::default()
        },
    )
    .await?;
    let steps = args.steps.max(1);
    let drain = |jobs: usize| {
        let thread = thread.clone();
        async move {
            let started = Instant::now();
            let answers = (0..jobs as u32)
                .map(|v| {
                    let request = InferenceRequest {
                        job_id: JobId::new_random(),
                        spec: job(side, side, steps, v),
                    };
                    thread.queue(request, CancellationToken::new(), None, None)
                })
                .collect::<Result<Vec<_>, _>>()?;
            for answer in answers {
                answer.wait().await?;
            }
            Ok::<_, BenchError>(started.elapsed())
        }
    };
    // Untimed: one full batch first, so that per-shape kernel set-up (oneDNN, cuDNN) is not
    // counted against either setting.
    drain(max_batch).await?;
    let take = || std::mem::take(&mut *batches.lock().unwrap_or_else(|p| p.into_inner()));
    take();
    let seconds = drain(args.backlog).await?.as_secs_f64();
    Ok(BacklogRun {
        seconds,
        batches: take(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use inpaint_engine::{DeviceSpec, PrecisionSpec};

    fn args(backlog: usize, max_batch: Vec<usize>, batch_wait_ms: u64) -> BenchArgs {
        BenchArgs {
            model: crate::settings::EMBEDDED_TINY.into(),
            device: DeviceSpec::Cpu,
            precision: PrecisionSpec::Auto,
            vae_precision: PrecisionSpec::Auto,
            channels_last: false,
            size: 64,
            batches: vec![1],
            steps: 2,
            repeats: 2,
            backlog,
            max_batch,
            batch_wait_ms,
            compare_cpu: false,
            tolerance: 2.0,
            json: false,
        }
    }

    #[test]
    fn every_setting_drains_the_whole_backlog_each_repeat_in_batches_it_allows() {
        // A wait long enough that the thread gathers whole batches however the queueing and
        // the thread interleave.
        let figures = run(&args(5, vec![1, 2, 4], 300), 64).expect("backlog");
        assert_eq!(
            figures.iter().map(|f| f.max_batch).collect::<Vec<_>>(),
            [1, 2, 4]
        );
        for f in &figures {
            assert_eq!(f.jobs, 5);
            assert_eq!(f.runs.len(), 2, "{f:?}");
            assert!(f.runs.iter().all(|&r| r >= f.seconds), "{f:?}");
            assert_eq!(f.batches.iter().sum::<usize>(), 5, "{f:?}");
            assert!(
                f.batches.iter().all(|&b| (1..=f.max_batch).contains(&b)),
                "{f:?}"
            );
            assert!((f.jobs_per_s - 5.0 / f.seconds).abs() < 1e-9, "{f:?}");
        }
        assert_eq!(figures[1].batches, [2, 2, 1]);
        assert_eq!(figures[2].batches, [4, 1]);
    }
}
