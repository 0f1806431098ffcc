//! The broker side of the worker: connect, declare, consume jobs and cancel requests, hand each
//! job to the [`JobFlow`], settle its delivery as [`crate::error::action_after`] decides (through
//! [`crate::settle::carry_out`]), forward progress ([`progress`]), reconnect with backoff when
//! the broker goes away ([`reconnect`]), and drain on shutdown. Nothing here looks inside a job.
//!
//! A session's delivery tasks live in one [`TaskTracker`]: draining waits on it, and each task
//! settles or releases its own delivery (after a panic, or when the grace period ends: see
//! `delivery_tasks.rs`), so the runner keeps no table of deliveries in flight.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chrono::Utc;
use futures::StreamExt;
use inpaint_job::InpaintJob;
use inpaint_queue::lapin::message::Delivery;
use inpaint_queue::lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicQosOptions,
};
use inpaint_queue::lapin::types::FieldTable;
use inpaint_queue::lapin::{Acker, BasicProperties};
use inpaint_queue::{Publisher, QueueError};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::error::{Action, JobFailure, action_after};
use crate::flow::{JobFlow, JobRun};
use crate::images;
use crate::metrics::Metrics;
use crate::parts::{Parts, WorkerError};
use crate::settings::Settings;
use crate::settle::{self, Answer, Received, Settling};
use crate::topology::{self, ATTEMPT_HEADER, DELIVERY_COUNT_HEADER, TIMESTAMP_MS_HEADER};

#[path = "progress.rs"]
pub mod progress;
#[path = "reconnect.rs"]
pub mod reconnect;
#[path = "delivery_tasks.rs"]
mod tasks;
pub use progress::PROGRESS_INTERVAL;
pub use reconnect::{FIRST_BACKOFF, Link, MAX_BACKOFF, reconnecting};
use tasks::Stops;

/// Runs the worker until `shutdown` completes: builds its parts from `settings`, then
/// [`run_with`].
pub async fn run(
    settings: Settings,
    shutdown: impl Future<Output = ()>,
) -> Result<(), WorkerError> {
    settings.validate()?;
    // Credentials before the model: a real model takes a while to load, bad keys do not.
    let signer = images::Signer::build(&settings)?;
    let parts = Parts::build(&settings).await?;
    serve(settings, parts, signer, shutdown).await
}

/// Runs the worker with the given parts until `shutdown` completes, then drains: stops
/// consuming, lets in-flight jobs finish within the grace period and releases the rest to the
/// queue. Returns Ok after a clean shutdown; broker failures are retried, not returned.
pub async fn run_with(
    settings: Settings,
    parts: Parts,
    shutdown: impl Future<Output = ()>,
) -> Result<(), WorkerError> {
    settings.validate()?;
    // Here rather than in `Parts`, which tests and benchmarks build field by field: every
    // worker signs as its settings say, and bad credentials stop it before the first delivery.
    let signer = images::Signer::build(&settings)?;
    serve(settings, parts, signer, shutdown).await
}

/// What the broker side shares between its sessions and delivery tasks.
struct Runner {
    settings: Settings,
    flow: JobFlow,
    metrics: Arc<Metrics>,
    ready: AtomicBool,
}

impl Runner {
    fn settling(&self) -> Settling<'_> {
        Settling {
            topology: &self.settings.topology,
            unsafe_chain: self.flow.missing_required_stages(),
            metrics: &self.metrics,
        }
    }
}

/// [`run_with`] on validated settings and a built signer.
async fn serve(
    settings: Settings,
    parts: Parts,
    signer: images::Signer,
    shutdown: impl Future<Output = ()>,
) -> Result<(), WorkerError> {
    for warning in settings.chain_warnings() {
        tracing::warn!("{warning}");
    }
    let runner = Arc::new(Runner {
        flow: JobFlow::new(&settings, &parts, signer),
        metrics: Arc::clone(&parts.metrics),
        ready: AtomicBool::new(false),
        settings,
    });
    let http = if runner.settings.http.bind.is_empty() {
        None
    } else {
        let listener = tokio::net::TcpListener::bind(&runner.settings.http.bind).await?;
        let metrics = Arc::clone(&runner.metrics);
        let health = Arc::clone(&runner);
        Some(tokio::spawn(crate::http::serve(
            listener,
            metrics,
            move || health.ready.load(Ordering::SeqCst),
        )))
    };
    tracing::info!(
        model = %runner.flow.model().id,
        jobs_queue = %runner.settings.topology.jobs_queue,
        c2pa = runner.flow.is_signing(),
        "worker starting"
    );
    // One token for the whole shutdown: sessions stop consuming and drain when it fires.
    let stopping = CancellationToken::new();
    let sessions = reconnecting(stopping.clone(), |stopping, link| {
        let runner = Arc::clone(&runner);
        async move {
            let outcome = session(&runner, stopping, link).await;
            runner.ready.store(false, Ordering::SeqCst);
            outcome
        }
    });
    tokio::pin!(sessions);
    tokio::select! {
        () = &mut sessions => {}
        () = shutdown => {
            stopping.cancel();
            sessions.await;
        }
    }
    if let Some(http) = http {
        http.abort();
    }
    tracing::info!("worker stopped");
    Ok(())
}

/// One broker connection's life: declare, consume, dispatch, drain. Ok(()) after a clean
/// shutdown.
async fn session(
    runner: &Arc<Runner>,
    stopping: CancellationToken,
    link: Link,
) -> Result<(), QueueError> {
    let settings = &runner.settings;
    let broker = settings.broker.connect().await?;
    let control = broker.channel().await?;
    topology::declare(&control, &settings.topology, settings.retry.attempt_cap()).await?;
    let publisher = Arc::new(broker.publisher().await?);
    let cancel_queue = topology::declare_cancel_queue(&control, &settings.topology).await?;
    let mut cancels = broker.consume(&cancel_queue, "cancel", 64).await?;

    let jobs_channel = broker.channel().await?;
    let amqp = |operation: &'static str| move |source| QueueError::Amqp { operation, source };
    jobs_channel
        .basic_qos(settings.concurrency.prefetch, BasicQosOptions::default())
        .await
        .map_err(amqp("setting the prefetch count"))?;
    let mut jobs = jobs_channel
        .basic_consume(
            settings.topology.jobs_queue.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(amqp("starting the jobs consumer"))?;
    let consumer_tag = jobs.tag().to_string();
    runner.ready.store(true, Ordering::SeqCst);
    link.connected();
    tracing::info!(queue = %settings.topology.jobs_queue, "consuming jobs");

    let stops = Stops::default();
    let tasks = TaskTracker::new();
    let outcome = loop {
        tokio::select! {
            () = stopping.cancelled() => break Ok(()),
            cancel = cancels.next() => match cancel {
                Some(Ok(delivery)) => {
                    match inpaint_job::CancelRequest::from_json(&delivery.data) {
                        Ok(request) => {
                            tracing::info!(job_id = %request.job_id, "cancel request");
                            runner.flow.cancels().cancel(request.job_id);
                        }
                        Err(e) => tracing::warn!(error = %e, "ignoring an unreadable cancel request"),
                    }
                    let _ = delivery.acker.ack(BasicAckOptions::default()).await;
                }
                Some(Err(source)) => break Err(amqp("receiving cancel requests")(source)),
                None => break Err(QueueError::Config("the cancel consumer ended".into())),
            },
            delivery = jobs.next() => match delivery {
                Some(Ok(delivery)) => {
                    tasks.spawn(delivery_task(Arc::clone(runner), Arc::clone(&publisher), delivery, stops.clone()));
                }
                Some(Err(source)) => break Err(amqp("receiving jobs")(source)),
                None => break Err(QueueError::Config("the jobs consumer ended (queue deleted or connection lost)".into())),
            },
        }
    };
    runner.ready.store(false, Ordering::SeqCst);
    if outcome.is_ok() {
        tracing::info!(in_flight = tasks.len(), "shutting down: no new jobs");
        stops.draining.cancel();
        let _ = jobs_channel
            .basic_cancel(consumer_tag.as_str().into(), BasicCancelOptions::default())
            .await;
        tasks::drain(&tasks, &stops, settings.grace()).await;
    } else {
        // Deliveries of this connection cannot be settled any more: stop their work; the
        // broker requeues them.
        tasks::abandon(&tasks, &stops).await;
    }
    let _ = broker.close().await;
    outcome
}

/// One delivery's task: [`handle`] settles the delivery; a panic in it, or the end of the grace
/// period, releases it instead ([`tasks::guarded`]).
async fn delivery_task(
    runner: Arc<Runner>,
    publisher: Arc<Publisher>,
    delivery: Delivery,
    stops: Stops,
) {
    let acker = delivery.acker.clone();
    let work = handle(
        Arc::clone(&runner),
        Arc::clone(&publisher),
        delivery,
        stops.clone(),
    );
    tasks::guarded(work, &stops, || async move {
        release(&runner, &publisher, &acker).await;
    })
    .await;
}

/// Releases a delivery whose job this worker will not answer (best effort: a lost connection
/// releases it anyway).
async fn release(runner: &Runner, publisher: &Publisher, acker: &Acker) {
    let received = Received {
        data: &[],
        properties: &BasicProperties::default(),
        attempt: 0,
        now_ms: Utc::now().timestamp_millis(),
    };
    let answer = Answer::Nothing("released".into());
    if let Err(e) = settle::carry_out(
        &runner.settling(),
        publisher,
        acker,
        received,
        Action::Release,
        answer,
    )
    .await
    {
        tracing::warn!(error = %e, "could not release a delivery; the broker requeues it when the channel closes");
    }
}

/// Handles one delivery from start to settlement.
async fn handle(runner: Arc<Runner>, publisher: Arc<Publisher>, delivery: Delivery, stops: Stops) {
    let attempt = attempt_of(&delivery.properties);
    if let Some(waited) = queue_wait(&delivery.properties, Utc::now().timestamp_millis()) {
        runner
            .metrics
            .queue_wait_seconds
            .observe(waited.as_secs_f64());
    }
    let job = InpaintJob::from_json(&delivery.data);
    let job_id = match &job {
        Ok(job) => Some(job.job_id),
        Err(_) => inpaint_job::peek_job_id(&delivery.data),
    };
    let span = tracing::info_span!(
        "job",
        job_id = job_id.map(|id| id.to_string()).unwrap_or_default(),
        attempt,
        delivery_tag = delivery.delivery_tag,
        message_id = delivery
            .properties
            .message_id()
            .as_ref()
            .map(|m| m.to_string())
            .unwrap_or_default(),
    );
    async move {
        let metrics = &runner.metrics;
        metrics.in_flight.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let mut timings = crate::flow::Timings::new();
        // A message the broker will not deliver again is answered, not run (it ended every
        // earlier delivery unsettled, most likely by crashing the worker).
        let limit = runner.settings.topology.delivery_limit;
        let outcome = settle::unless_last_delivery(&delivery.properties, limit, || async {
            match &job {
                Ok(job) => {
                    let progress = match (job.progress, delivery.properties.reply_to()) {
                        (true, Some(reply_to)) => Some(progress::progress_forwarder(
                            Arc::clone(&publisher),
                            job.job_id,
                            reply_to.to_string(),
                            delivery.properties.correlation_id().clone(),
                        )),
                        _ => None,
                    };
                    let run = JobRun {
                        attempt,
                        progress,
                        draining: stops.draining.clone(),
                        stop: stops.stop.clone(),
                    };
                    runner.flow.run(job, run, &mut timings).await
                }
                Err(e) => Err(JobFailure::from(e)),
            }
        })
        .await;
        let now_ms = Utc::now().timestamp_millis();
        let action = action_after(
            outcome.as_ref().map(|_| ()),
            attempt,
            settle::since_first_failure(&delivery.properties, now_ms),
            &runner.settings.retry,
        );
        // Received → result final; the result's publish and the ack follow (their histograms).
        timings.insert("total".to_owned(), started.elapsed().as_millis() as u64);
        let answer = match outcome {
            Ok(mut result) => {
                result.timings_ms.extend(timings);
                Answer::Result(Box::new(result))
            }
            Err(failure) => {
                log_failure(metrics, &failure, action);
                if matches!(action, Action::Ack | Action::DeadLetter) {
                    let metadata = job.as_ref().map(|j| j.metadata.clone()).unwrap_or_default();
                    let mut result = runner
                        .flow
                        .failure_result(job_id, attempt, metadata, &failure);
                    result.timings_ms = timings;
                    Answer::Result(Box::new(result))
                } else {
                    Answer::Nothing(failure.to_string())
                }
            }
        };
        let received = Received {
            data: &delivery.data,
            properties: &delivery.properties,
            attempt,
            now_ms,
        };
        let settling = runner.settling();
        let acker = &delivery.acker;
        if let Err(e) =
            settle::carry_out(&settling, &*publisher, acker, received, action, answer).await
        {
            tracing::warn!(error = %e, "could not settle the delivery; releasing it to the queue");
            let answer = Answer::Nothing(e.to_string());
            let _ = settle::carry_out(
                &settling,
                &*publisher,
                acker,
                received,
                Action::Release,
                answer,
            )
            .await;
        }
        metrics.in_flight.fetch_sub(1, Ordering::Relaxed);
        metrics.job_seconds.observe(started.elapsed().as_secs_f64());
    }
    .instrument(span)
    .await;
}

/// Counts blocks and logs why a job did not succeed (stage and category, never the prompt), at
/// debug: the job's info line ("job done", when it is settled) names the status and error code.
fn log_failure(metrics: &Metrics, failure: &JobFailure, action: Action) {
    match (&failure.block, action) {
        (_, Action::Retry { .. } | Action::Release) => {}
        (Some(block), _) => {
            metrics.blocks.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(stage = %block.stage, category = %block.category, "job blocked");
        }
        (None, _) => {
            tracing::debug!(code = failure.code.as_str(), error = %failure.message, "job did not succeed")
        }
    }
}

/// The attempt number of a delivery: the retry header (1 when absent) plus the quorum queue's
/// count of earlier deliveries of this copy.
pub fn attempt_of(properties: &BasicProperties) -> u32 {
    let headers = properties.headers().as_ref();
    let retries = topology::header_u32(headers, ATTEMPT_HEADER)
        .unwrap_or(1)
        .max(1);
    let redeliveries = topology::header_u32(headers, DELIVERY_COUNT_HEADER).unwrap_or(0);
    retries.saturating_add(redeliveries)
}

/// How long a job waited between its producer and this pick-up: from the `timestamp_in_ms`
/// header, else the AMQP `timestamp` property (whole seconds); `None` when the producer set
/// neither. A producer clock ahead of ours counts as no wait.
pub fn queue_wait(properties: &BasicProperties, now_ms: i64) -> Option<Duration> {
    let sent_ms = topology::header_i64(properties.headers().as_ref(), TIMESTAMP_MS_HEADER)
        .or_else(|| {
            properties
                .timestamp()
                .and_then(|seconds| i64::try_from(seconds).ok()?.checked_mul(1_000))
        })?;
    let waited = now_ms.saturating_sub(sent_ms).max(0);
    Some(Duration::from_millis(u64::try_from(waited).unwrap_or(0)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use inpaint_queue::lapin::types::AMQPValue;

    #[test]
    fn attempts_count_retries_and_redeliveries() {
        assert_eq!(attempt_of(&BasicProperties::default()), 1);
        let mut h = FieldTable::default();
        h.insert(ATTEMPT_HEADER.into(), AMQPValue::LongLongInt(3));
        assert_eq!(
            attempt_of(&BasicProperties::default().with_headers(h.clone())),
            3
        );
        h.insert(DELIVERY_COUNT_HEADER.into(), AMQPValue::LongLongInt(2));
        assert_eq!(attempt_of(&BasicProperties::default().with_headers(h)), 5);
    }

    #[test]
    fn queue_wait_prefers_the_millisecond_header() {
        let now = 1_700_000_010_500_i64;
        assert_eq!(queue_wait(&BasicProperties::default(), now), None);
        let seconds = BasicProperties::default().with_timestamp(1_700_000_000);
        assert_eq!(
            queue_wait(&seconds, now),
            Some(Duration::from_millis(10_500))
        );
        let mut headers = FieldTable::default();
        headers.insert(
            TIMESTAMP_MS_HEADER.into(),
            AMQPValue::LongLongInt(1_700_000_010_000),
        );
        let millis = seconds.with_headers(headers);
        assert_eq!(queue_wait(&millis, now), Some(Duration::from_millis(500)));
        // A producer clock ahead of the worker's: no negative waits.
        let ahead = BasicProperties::default().with_timestamp(1_800_000_000);
        assert_eq!(queue_wait(&ahead, now), Some(Duration::ZERO));
    }
}
