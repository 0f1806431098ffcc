//! Carrying out the broker's side of a job: [`carry_out`] does every [`Action`] that
//! [`crate::error::action_for`] decides — publish the result then ack, publish the failure then
//! dead-letter, republish to the delay queue then ack, or release to the queue — through two
//! small traits ([`Outbox`], [`Settle`]) that lapin implements in the worker and a recorder
//! implements in tests. [`unless_last_delivery`] answers a poison message before the quorum
//! queue drops it at its delivery limit.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use inpaint_job::InpaintResult;
use inpaint_queue::lapin::options::{BasicAckOptions, BasicNackOptions};
use inpaint_queue::lapin::types::{AMQPValue, FieldTable};
use inpaint_queue::lapin::{Acker, BasicProperties};
use inpaint_queue::{Publisher, QueueError};
use tracing::Instrument;

use crate::error::{Action, JobFailure};
use crate::metrics::Metrics;
use crate::topology::{
    self, ATTEMPT_HEADER, DELIVERY_COUNT_HEADER, ERROR_HEADER, FIRST_FAILURE_MS_HEADER,
    TopologyConfig,
};

/// Header on result messages naming the required stages this worker runs without.
pub const UNSAFE_CHAIN_HEADER: &str = "x-inpaint-unsafe-chain";

/// Confirmed publishing (a [`Publisher`] in the worker).
pub trait Outbox: Send + Sync {
    /// Publishes `body` and waits for the broker's confirm.
    fn publish<'a>(
        &'a self,
        exchange: &'a str,
        routing_key: &'a str,
        body: &'a [u8],
        properties: BasicProperties,
    ) -> BoxFuture<'a, Result<(), QueueError>>;
}

impl Outbox for Publisher {
    fn publish<'a>(
        &'a self,
        exchange: &'a str,
        routing_key: &'a str,
        body: &'a [u8],
        properties: BasicProperties,
    ) -> BoxFuture<'a, Result<(), QueueError>> {
        Box::pin(Publisher::publish(
            self,
            exchange,
            routing_key,
            body,
            properties,
        ))
    }
}

/// Settling one delivery (its [`Acker`] in the worker).
pub trait Settle: Send + Sync {
    /// Acknowledges the delivery.
    fn ack(&self) -> BoxFuture<'_, Result<(), QueueError>>;
    /// Rejects it: back to the queue with `requeue`, else to the dead-letter exchange.
    fn reject(&self, requeue: bool) -> BoxFuture<'_, Result<(), QueueError>>;
}

impl Settle for Acker {
    fn ack(&self) -> BoxFuture<'_, Result<(), QueueError>> {
        Box::pin(async move {
            Acker::ack(self, BasicAckOptions::default())
                .await
                .map(|_| ())
                .map_err(|source| QueueError::Amqp {
                    operation: "acknowledging",
                    source,
                })
        })
    }

    fn reject(&self, requeue: bool) -> BoxFuture<'_, Result<(), QueueError>> {
        Box::pin(async move {
            let options = BasicNackOptions {
                requeue,
                ..Default::default()
            };
            Acker::nack(self, options)
                .await
                .map(|_| ())
                .map_err(|source| QueueError::Amqp {
                    operation: if requeue {
                        "releasing"
                    } else {
                        "dead-lettering"
                    },
                    source,
                })
        })
    }
}

/// The message being settled, as it arrived.
#[derive(Clone, Copy, Debug)]
pub struct Received<'a> {
    /// The body, republished as is on a retry.
    pub data: &'a [u8],
    /// Its properties: headers (attempt), `reply_to`, `correlation_id`.
    pub properties: &'a BasicProperties,
    /// The attempt this delivery was.
    pub attempt: u32,
    /// Now, in Unix milliseconds (stamped on a first retry as the first failure's time).
    pub now_ms: i64,
}

/// How long ago the job first failed transiently ([`FIRST_FAILURE_MS_HEADER`]), at `now_ms`;
/// zero when it has not failed before (or the clock went back).
pub fn since_first_failure(properties: &BasicProperties, now_ms: i64) -> Duration {
    topology::header_i64(properties.headers().as_ref(), FIRST_FAILURE_MS_HEADER)
        .map(|first| now_ms.saturating_sub(first).max(0))
        .map(|ms| Duration::from_millis(u64::try_from(ms).unwrap_or(0)))
        .unwrap_or_default()
}

/// What settling needs besides the delivery: names and counters.
#[derive(Clone, Copy, Debug)]
pub struct Settling<'a> {
    /// Exchange and queue names.
    pub topology: &'a TopologyConfig,
    /// Required stages this worker runs without (the [`UNSAFE_CHAIN_HEADER`]).
    pub unsafe_chain: &'a [String],
    /// Where publish and ack times and retries are counted.
    pub metrics: &'a Metrics,
}

/// What [`carry_out`] is told besides the action: the final result (for [`Action::Ack`] and
/// [`Action::DeadLetter`]) or the error a retry carries.
#[derive(Debug)]
pub enum Answer {
    /// The result to publish before settling.
    Result(Box<InpaintResult>),
    /// Nothing to publish; the error (for a retry's header and the log).
    Nothing(String),
}

/// Does `action` for one delivery. Every broker outcome of a job goes through here: an Err
/// means the delivery is still unsettled (the caller then releases it, through here too).
pub async fn carry_out(
    settling: &Settling<'_>,
    outbox: &dyn Outbox,
    delivery: &dyn Settle,
    received: Received<'_>,
    action: Action,
    answer: Answer,
) -> Result<(), QueueError> {
    let metrics = settling.metrics;
    match (action, answer) {
        (Action::Release, _) => {
            delivery.reject(true).await?;
            tracing::info!("delivery released to the queue");
        }
        (Action::Retry { after }, answer) => {
            let message = match &answer {
                Answer::Nothing(message) => message.clone(),
                Answer::Result(result) => result
                    .error
                    .as_ref()
                    .map(|e| e.message.clone())
                    .unwrap_or_default(),
            };
            tracing::warn!(error = %message, retry_in_ms = after.as_millis() as u64, "transient failure; retrying through the delay queue");
            let properties = retry_properties(received, &message, after);
            outbox
                .publish(
                    "",
                    &settling.topology.delay_queue_for(received.attempt),
                    received.data,
                    properties,
                )
                .await?;
            delivery.ack().await?;
            metrics.retries.fetch_add(1, Ordering::Relaxed);
        }
        (Action::Ack | Action::DeadLetter, Answer::Nothing(message)) => {
            return Err(QueueError::Config(format!(
                "no result to publish for a final action ({message})"
            )));
        }
        (Action::Ack | Action::DeadLetter, Answer::Result(result)) => {
            // Publish and ack happen after the result is final: their times go to the metrics
            // (`inpaint_stage_seconds{stage="publish"|"ack"}`) only.
            let t = Instant::now();
            publish_result(settling, outbox, received.properties, &result)
                .instrument(tracing::info_span!("publish"))
                .await?;
            metrics.observe_stage("publish", t.elapsed().as_secs_f64());
            metrics.count_status(result.status);
            let t = Instant::now();
            if action == Action::Ack {
                delivery.ack().await?;
            } else {
                delivery.reject(false).await?;
            }
            metrics.observe_stage("ack", t.elapsed().as_secs_f64());
            log_done(&result);
        }
    }
    Ok(())
}

/// The failure a delivery is answered with instead of running, when the quorum queue will not
/// deliver this copy again: `None` for every earlier delivery.
///
/// RabbitMQ's quorum queues (3.10, `rabbit_fifo`) count a copy's returns (a nack with requeue,
/// or a consumer or channel that went away with it unsettled) in `delivery_count`, shown to
/// consumers as `x-delivery-count` from the first redelivery on; when a return makes the count
/// exceed `x-delivery-limit` (count > limit), the copy is dead-lettered instead of delivered,
/// with no message to anyone. So counts 0..=limit are delivered and the delivery showing
/// `x-delivery-count == limit` is the last: if this one ends unsettled too (the worker crashes
/// again), the producer never hears back. That delivery (and, should the limit have been
/// raised on a live queue, any later one) is answered `delivery_limit_exceeded` without being
/// run — every earlier delivery of it ended without a settlement, most likely by crashing the
/// worker. The failure is permanent: [`crate::error::action_for`] dead-letters it after the
/// result is published.
pub fn last_delivery_failure(
    properties: &BasicProperties,
    delivery_limit: u32,
) -> Option<JobFailure> {
    let redeliveries =
        topology::header_u32(properties.headers().as_ref(), DELIVERY_COUNT_HEADER).unwrap_or(0);
    (redeliveries >= delivery_limit).then(|| {
        JobFailure::permanent(
            inpaint_job::ErrorCode::DeliveryLimitExceeded,
            format!(
                "delivered {} times without an answer (the jobs queue's delivery limit is {delivery_limit}); not run again",
                u64::from(redeliveries) + 1
            ),
        )
    })
}

/// Runs the job (`run`) unless this is the last delivery the broker makes of it
/// ([`last_delivery_failure`]): then `run` is never called and the outcome is that failure.
pub async fn unless_last_delivery<T, F, Fut>(
    properties: &BasicProperties,
    delivery_limit: u32,
    run: F,
) -> Result<T, JobFailure>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<T, JobFailure>>,
{
    match last_delivery_failure(properties, delivery_limit) {
        Some(failure) => Err(failure),
        None => run().await,
    }
}

/// The one info line of a settled job: id, status, attempt, error code, outputs and timings.
/// Everything else a job logs is at debug (warnings and errors aside).
fn log_done(result: &InpaintResult) {
    let timings_ms = result
        .timings_ms
        .iter()
        .map(|(stage, ms)| format!("{stage}={ms}"))
        .collect::<Vec<_>>()
        .join(",");
    tracing::info!(
        job_id = result.job_id.map(|id| id.to_string()).unwrap_or_default(),
        status = ?result.status,
        attempt = result.attempt,
        replay = result.replay,
        error = result.error.as_ref().map(|e| e.code.as_str()).unwrap_or(""),
        block = result.block.as_ref().map(|b| b.stage.as_str()).unwrap_or(""),
        outputs = result.outputs.len(),
        timings_ms,
        "job done"
    );
}

/// The job as republished to the delay queue: next attempt number, the error, and the delay
/// as the message's expiration. The attempt header is the only count the worker carries
/// forward: `received.attempt` already includes this delivery's broker redeliveries, so the
/// broker's `x-delivery-count` is dropped — copied, it would stay on the new message (a fresh
/// copy the queue has not redelivered gets no header of its own) and be added again on every
/// later delivery.
fn retry_properties(received: Received<'_>, message: &str, after: Duration) -> BasicProperties {
    let mut headers: FieldTable = received
        .properties
        .headers()
        .as_ref()
        .map(|h| {
            h.inner()
                .iter()
                .filter(|(name, _)| name.as_str() != DELIVERY_COUNT_HEADER)
                .map(|(name, value)| (name.clone(), value.clone()))
                .collect::<std::collections::BTreeMap<_, _>>()
                .into()
        })
        .unwrap_or_default();
    headers.insert(
        ATTEMPT_HEADER.into(),
        AMQPValue::LongLongInt(i64::from(received.attempt) + 1),
    );
    // The first failure's time stays; the first retry stamps it.
    if topology::header_i64(Some(&headers), FIRST_FAILURE_MS_HEADER).is_none() {
        headers.insert(
            FIRST_FAILURE_MS_HEADER.into(),
            AMQPValue::LongLongInt(received.now_ms),
        );
    }
    headers.insert(
        ERROR_HEADER.into(),
        AMQPValue::LongString(truncate(message, 500).into()),
    );
    received
        .properties
        .clone()
        .with_headers(headers)
        .with_delivery_mode(2)
        .with_expiration(after.as_millis().to_string().into())
}

fn truncate(text: &str, max: usize) -> String {
    text.char_indices()
        .take_while(|(i, _)| *i < max)
        .map(|(_, c)| c)
        .collect()
}

/// Publishes a result to the results exchange (confirmed) and, best effort, to the job's
/// `reply_to` with its `correlation_id`.
async fn publish_result(
    settling: &Settling<'_>,
    outbox: &dyn Outbox,
    job: &BasicProperties,
    result: &InpaintResult,
) -> Result<(), QueueError> {
    let body = result
        .to_json()
        .map_err(|e| QueueError::Config(format!("serialising the result: {e}")))?;
    let mut properties = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2);
    if let Some(id) = result.job_id {
        properties = properties.with_message_id(id.to_string().into());
    }
    if let Some(correlation) = job.correlation_id() {
        properties = properties.with_correlation_id(correlation.clone());
    }
    if !settling.unsafe_chain.is_empty() {
        let mut headers = FieldTable::default();
        headers.insert(
            UNSAFE_CHAIN_HEADER.into(),
            AMQPValue::LongString(settling.unsafe_chain.join(",").into()),
        );
        properties = properties.with_headers(headers);
    }
    outbox
        .publish(
            &settling.topology.results_exchange,
            &topology::result_routing_key(result.status),
            &body,
            properties.clone(),
        )
        .await?;
    if let Some(reply_to) = job.reply_to()
        && let Err(e) = outbox
            .publish("", reply_to.as_str(), &body, properties)
            .await
    {
        tracing::warn!(error = %e, "could not publish the result to reply_to");
    }
    Ok(())
}

#[cfg(test)]
#[path = "settle_tests.rs"]
mod tests;
