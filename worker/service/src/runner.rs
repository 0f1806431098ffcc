//! The broker side of the worker: connect, declare, consume jobs and cancel requests, hand each
//! job to the [`JobFlow`], settle its delivery as [`crate::error::action_after`] decides (through
//! [`crate::settle::carry_out`]), forward progress, reconnect with backoff when the broker goes
//! away, and drain on shutdown. Nothing here looks inside a job.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chrono::Utc;
use futures::StreamExt;
use inpaint_job::{InpaintJob, JobId, ProgressEvent};
use inpaint_queue::lapin::message::Delivery;
use inpaint_queue::lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicQosOptions,
};
use inpaint_queue::lapin::types::FieldTable;
use inpaint_queue::lapin::{Acker, BasicProperties};
use inpaint_queue::{Publisher, QueueError};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::error::{Action, JobFailure, action_after};
use crate::flow::{JobFlow, JobRun};
use crate::images;
use crate::metrics::Metrics;
use crate::parts::{Parts, WorkerError};
use crate::settings::Settings;
use crate::settle::{self, Answer, Received, Settling};
use crate::topology::{self, ATTEMPT_HEADER, DELIVERY_COUNT_HEADER, TIMESTAMP_MS_HEADER};

/// Fewest milliseconds between two progress events of one job.
pub const PROGRESS_INTERVAL: Duration = Duration::from_millis(250);
/// First wait before reconnecting to the broker; doubles per failed attempt up to
/// [`MAX_BACKOFF`] and starts again after a session that connected.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Longest wait between two reconnection attempts. Short on purpose: while the broker is down
/// an attempt costs one refused TCP connection, and a longer cap is how long workers sit idle
/// after it comes back (they did for 12–30 s with a 30 s cap).
pub const MAX_BACKOFF: Duration = Duration::from_secs(1);

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

/// What a session tells [`reconnecting`]: that it is connected and consuming. It ends the
/// current outage (logged at info with its length) and resets the backoff.
#[derive(Clone, Debug, Default)]
pub struct Link {
    outage: Arc<std::sync::Mutex<Option<tokio::time::Instant>>>,
    up: Arc<AtomicBool>,
}

impl Link {
    /// The session is connected and consuming.
    pub fn connected(&self) {
        self.up.store(true, Ordering::SeqCst);
        let since = self.outage.lock().map(|mut o| o.take()).unwrap_or_default();
        if let Some(since) = since {
            tracing::info!(
                down_ms = since.elapsed().as_millis() as u64,
                "reconnected to the broker"
            );
        }
    }
}

/// Runs `session` until it ends cleanly or `stopping` is cancelled, waiting between failed
/// sessions: [`FIRST_BACKOFF`], doubling up to [`MAX_BACKOFF`], each wait jittered down to
/// half (so that a fleet does not reconnect in lockstep), reset by a session that connected.
/// An outage is logged once at warn; the further refused attempts of the same outage at debug
/// (the broker being down is expected and handled here, not an error). Generic over the
/// session so that a paused-clock test can drive it.
pub async fn reconnecting<F, Fut, E>(stopping: CancellationToken, mut session: F)
where
    F: FnMut(CancellationToken, Link) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let link = Link::default();
    let mut backoff = FIRST_BACKOFF;
    let mut tries: u64 = 0;
    loop {
        let Err(e) = session(stopping.clone(), link.clone()).await else {
            return;
        };
        if link.up.swap(false, Ordering::SeqCst) {
            backoff = FIRST_BACKOFF;
        }
        tries += 1;
        let wait = jittered(backoff, tries);
        let new_outage = match link.outage.lock() {
            Ok(mut outage) if outage.is_none() => {
                *outage = Some(tokio::time::Instant::now());
                true
            }
            _ => false,
        };
        if new_outage {
            tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "broker connection lost; reconnecting");
        } else {
            tracing::debug!(error = %e, retry_in_ms = wait.as_millis() as u64, "broker still unreachable");
        }
        tokio::select! {
            () = stopping.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// `backoff` scaled into (backoff/2, backoff] by a per-process random hash of `nonce`.
fn jittered(backoff: Duration, nonce: u64) -> Duration {
    use std::hash::BuildHasher;
    static SEED: std::sync::OnceLock<std::collections::hash_map::RandomState> =
        std::sync::OnceLock::new();
    let hash = SEED.get_or_init(Default::default).hash_one(nonce);
    let fraction = 0.5 + 0.5 * ((hash % 1_000) + 1) as f64 / 1_000.0;
    backoff.mul_f64(fraction)
}

/// The tokens one session's jobs watch: `draining` when shutdown begins (jobs waiting for a
/// slot give it back), `stop` when the grace period ends or the connection is lost (inference
/// stops between two steps).
#[derive(Clone, Debug, Default)]
struct Stops {
    draining: CancellationToken,
    stop: CancellationToken,
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
    let mut tasks: JoinSet<()> = JoinSet::new();
    let mut running: HashMap<tokio::task::Id, Acker> = HashMap::new();
    let outcome = loop {
        tokio::select! {
            () = stopping.cancelled() => break Ok(()),
            Some(reaped) = tasks.join_next_with_id() => reap(runner, &publisher, &mut running, reaped).await,
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
                    let acker = delivery.acker.clone();
                    let task = tasks.spawn(handle(Arc::clone(runner), Arc::clone(&publisher), delivery, stops.clone()));
                    running.insert(task.id(), acker);
                }
                Some(Err(source)) => break Err(amqp("receiving jobs")(source)),
                None => break Err(QueueError::Config("the jobs consumer ended (queue deleted or connection lost)".into())),
            },
        }
    };
    runner.ready.store(false, Ordering::SeqCst);
    if outcome.is_ok() {
        tracing::info!(in_flight = running.len(), "shutting down: no new jobs");
        stops.draining.cancel();
        let _ = jobs_channel
            .basic_cancel(consumer_tag.as_str().into(), BasicCancelOptions::default())
            .await;
        let grace = tokio::time::sleep(settings.grace());
        tokio::pin!(grace);
        loop {
            tokio::select! {
                reaped = tasks.join_next_with_id() => match reaped {
                    Some(reaped) => reap(runner, &publisher, &mut running, reaped).await,
                    None => break,
                },
                () = &mut grace => {
                    tracing::warn!(unfinished = running.len(), "grace period over: releasing unfinished jobs to the queue");
                    stops.stop.cancel();
                    tasks.abort_all();
                    for (_, acker) in running.drain() {
                        release(runner, &publisher, &acker).await;
                    }
                    break;
                }
            }
        }
    } else {
        // Deliveries of this connection cannot be settled any more: stop their work; the
        // broker requeues them.
        stops.stop.cancel();
        tasks.abort_all();
        running.clear();
    }
    let _ = broker.close().await;
    outcome
}

/// Forgets a finished delivery task; one that ended without settling (it panicked) has its
/// delivery released.
async fn reap(
    runner: &Runner,
    publisher: &Publisher,
    running: &mut HashMap<tokio::task::Id, Acker>,
    reaped: Result<(tokio::task::Id, ()), tokio::task::JoinError>,
) {
    match reaped {
        Ok((id, ())) => {
            running.remove(&id);
        }
        Err(e) => {
            tracing::error!(error = %e, "job task failed; its delivery returns to the queue");
            if let Some(acker) = running.remove(&e.id()) {
                release(runner, publisher, &acker).await;
            }
        }
    }
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
                        (true, Some(reply_to)) => Some(progress_forwarder(
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

/// Forwards (step, total) from the engine to `reply_to`, at most one event per
/// [`PROGRESS_INTERVAL`] (the last step always goes out). Best effort.
fn progress_forwarder(
    publisher: Arc<Publisher>,
    job_id: JobId,
    reply_to: String,
    correlation_id: Option<inpaint_queue::lapin::types::ShortString>,
) -> crate::inference::Progress {
    let (tx, mut rx) = mpsc::channel::<(u32, u32)>(64);
    tokio::spawn(async move {
        let mut last_sent: Option<Instant> = None;
        while let Some((step, total)) = rx.recv().await {
            let due = last_sent.is_none_or(|at| at.elapsed() >= PROGRESS_INTERVAL) || step == total;
            if !due {
                continue;
            }
            let event = ProgressEvent {
                job_id,
                step,
                total,
            };
            let Ok(body) = event.to_json() else { continue };
            let mut properties =
                BasicProperties::default().with_content_type("application/json".into());
            if let Some(c) = &correlation_id {
                properties = properties.with_correlation_id(c.clone());
            }
            if let Err(e) = publisher.publish("", &reply_to, &body, properties).await {
                tracing::debug!(error = %e, "progress event not delivered");
            }
            last_sent = Some(Instant::now());
        }
    });
    tx
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

    /// Broker outages of every length from 0 to 120 s, starting at different points of the
    /// backoff: the worker is connected again within [`MAX_BACKOFF`] of the broker coming back,
    /// every wait is within (backoff/2, backoff], and a connected session resets the backoff.
    #[tokio::test(start_paused = true)]
    async fn reconnects_within_a_second_of_the_broker_coming_back() {
        use std::sync::Mutex;
        for down_ms in (0..=120_000u64)
            .step_by(7_919)
            .chain([150, 999, 1_001, 12_000])
        {
            let stopping = CancellationToken::new();
            let started = tokio::time::Instant::now();
            let back_at = Duration::from_millis(down_ms);
            let calls: Arc<Mutex<Vec<Duration>>> = Arc::default();
            let record = Arc::clone(&calls);
            let stop = stopping.clone();
            reconnecting(stopping, move |_, link| {
                let record = Arc::clone(&record);
                let stop = stop.clone();
                async move {
                    let now = started.elapsed();
                    record.lock().expect("lock").push(now);
                    if now < back_at {
                        return Err("connection refused");
                    }
                    link.connected();
                    stop.cancel();
                    Ok(())
                }
            })
            .await;
            let at = calls.lock().expect("lock").clone();
            let last = *at.last().expect("a session");
            assert!(last >= back_at, "{down_ms}: {at:?}");
            assert!(
                last - back_at <= Duration::from_secs(1),
                "down {down_ms} ms, reconnected at {last:?}: {at:?}"
            );
            let mut backoff = FIRST_BACKOFF;
            for gap in at.windows(2).map(|w| w[1] - w[0]) {
                assert!(
                    gap > backoff / 2 && gap <= backoff,
                    "{gap:?} vs {backoff:?}"
                );
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }

    /// An outage is one WARN line however many attempts (~20) it takes, the refused attempts are
    /// DEBUG, the reconnection INFO, and nothing is logged as ERROR.
    #[tokio::test(start_paused = true)]
    async fn an_outage_logs_one_warning_and_one_reconnection() {
        let (log, _guard) = crate::test_log::capture();
        let stopping = CancellationToken::new();
        let started = tokio::time::Instant::now();
        let stop = stopping.clone();
        let mut sessions = 0;
        reconnecting(stopping, move |_, link| {
            sessions += 1;
            let stop = stop.clone();
            async move {
                match sessions {
                    // Up for a minute, then the broker is away for 20 s.
                    1 => {
                        link.connected();
                        tokio::time::sleep(Duration::from_secs(60)).await;
                        Err("connection reset by peer")
                    }
                    _ if started.elapsed() < Duration::from_secs(80) => Err("connection refused"),
                    _ => {
                        link.connected();
                        stop.cancel();
                        Ok(())
                    }
                }
            }
        })
        .await;
        let warns = log.at("WARN");
        let infos = log.at("INFO");
        assert!(log.at("ERROR").is_empty(), "{:?}", log.lines());
        assert!(log.at("DEBUG").len() > 10, "{:#?}", log.lines());
        assert_eq!(warns.len(), 1, "{warns:?}");
        assert_eq!(infos.len(), 1, "{infos:?}");
        assert!(infos[0].contains("reconnected"), "{infos:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_connected_session_resets_the_backoff() {
        use std::sync::Mutex;
        let stopping = CancellationToken::new();
        let started = tokio::time::Instant::now();
        // Sessions: refused ×5, connected for 10 s then lost, refused, then up for good.
        let calls: Arc<Mutex<Vec<Duration>>> = Arc::default();
        let record = Arc::clone(&calls);
        let stop = stopping.clone();
        reconnecting(stopping, move |_, link| {
            let record = Arc::clone(&record);
            let stop = stop.clone();
            async move {
                let n = {
                    let mut calls = record.lock().expect("lock");
                    calls.push(started.elapsed());
                    calls.len()
                };
                match n {
                    1..=5 | 7 => Err("connection refused"),
                    6 => {
                        link.connected();
                        tokio::time::sleep(Duration::from_secs(10)).await;
                        Err("connection reset")
                    }
                    _ => {
                        stop.cancel();
                        Ok(())
                    }
                }
            }
        })
        .await;
        let at = calls.lock().expect("lock").clone();
        let gaps: Vec<Duration> = at.windows(2).map(|w| w[1] - w[0]).collect();
        assert_eq!(gaps.len(), 7, "{at:?}");
        // After the connected session: the first backoff again, not the cap.
        assert!(
            gaps[5] - Duration::from_secs(10) <= FIRST_BACKOFF,
            "{gaps:?}"
        );
        assert!(gaps[6] <= FIRST_BACKOFF * 2, "{gaps:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_during_the_backoff_ends_the_loop_at_once() {
        let stopping = CancellationToken::new();
        let stop = stopping.clone();
        let started = tokio::time::Instant::now();
        let mut sessions = 0;
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(5)).await;
            stop.cancel();
        });
        reconnecting(stopping, |_, _| {
            sessions += 1;
            async { Err::<(), _>("refused") }
        })
        .await;
        // Every wait is at most the 1 s cap: at least 5 sessions in 5 s, and the loop ends
        // at the shutdown, not after its wait.
        assert!(sessions >= 5, "{sessions}");
        assert_eq!(started.elapsed(), Duration::from_secs(5));
    }
}
