//! The broker topology: every queue, exchange and header name the worker uses, and
//! [`declare`], which creates them idempotently at start-up.
//!
//! ```text
//! producers ──► jobs queue (quorum, x-delivery-limit) ──► worker
//!                  │ nack(requeue=false) / delivery limit
//!                  ▼
//!               dead-letter exchange (fanout) ──► dead-letter queue
//! worker ──(transient failure, attempt n)──► delay queue n ──(per-message TTL)──► jobs queue
//! worker ──► results exchange (topic, key = status) ──► results queue (bound to `#`)
//! producers ──► cancel exchange (fanout) ──► one exclusive queue per worker
//! ```
//!
//! Retries go through one delay queue per attempt number (`{delay_queue}.{n}`): every message in
//! a queue carries the same TTL, so expiry at the head of the queue (the only place RabbitMQ
//! expires messages) never holds a short delay behind a long one.

use inpaint_queue::QueueError;
use inpaint_queue::lapin::options::{
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use inpaint_queue::lapin::types::{AMQPValue, FieldTable, ShortString};
use inpaint_queue::lapin::{Channel, ExchangeKind};
use serde::{Deserialize, Serialize};

use crate::settings::SettingsError;

/// Header carrying the attempt number of a job republished for a retry (1 = first attempt).
pub const ATTEMPT_HEADER: &str = "x-inpaint-attempt";
/// Header RabbitMQ's quorum queues set on redelivered messages: earlier deliveries of this copy.
pub const DELIVERY_COUNT_HEADER: &str = "x-delivery-count";
/// When a job first failed transiently, in Unix milliseconds: set on its first retry and carried
/// on every later one; outages are retried while within `retry.max_elapsed_secs` of it.
pub const FIRST_FAILURE_MS_HEADER: &str = "x-inpaint-first-failure-ms";
/// Header naming the error behind a dead-lettered or retried message (for operators).
pub const ERROR_HEADER: &str = "x-inpaint-error";
/// When the producer sent the job, in Unix milliseconds: the header RabbitMQ's
/// message-timestamp plugin sets, and `inpaint-worker submit` too. Finer than the AMQP
/// `timestamp` property (whole seconds), which is the fallback for the queue-wait metric.
pub const TIMESTAMP_MS_HEADER: &str = "timestamp_in_ms";
/// Queue argument: the queue type.
pub const QUEUE_TYPE_ARG: &str = "x-queue-type";
/// Queue argument: deliveries before a quorum queue dead-letters a message.
pub const DELIVERY_LIMIT_ARG: &str = "x-delivery-limit";
/// Queue argument: where rejected and expired messages go.
pub const DEAD_LETTER_EXCHANGE_ARG: &str = "x-dead-letter-exchange";
/// Queue argument: the routing key dead-lettered messages get.
pub const DEAD_LETTER_ROUTING_KEY_ARG: &str = "x-dead-letter-routing-key";
/// Queue argument: delete the queue after this many idle milliseconds.
pub const EXPIRES_ARG: &str = "x-expires";
/// Routing key of progress events on the results exchange.
pub const PROGRESS_ROUTING_KEY: &str = "progress";

/// Names and arguments of the topology (section `[topology]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TopologyConfig {
    /// The quorum queue jobs are published to (through the default exchange).
    pub jobs_queue: String,
    /// Deliveries of one message before RabbitMQ dead-letters it (a poison message that kills
    /// workers ends in the dead-letter queue this way).
    pub delivery_limit: u32,
    /// Prefix of the per-attempt retry delay queues (`{delay_queue}.{n}`).
    pub delay_queue: String,
    /// The exchange rejected jobs are dead-lettered to.
    pub dead_letter_exchange: String,
    /// The queue bound to the dead-letter exchange.
    pub dead_letter_queue: String,
    /// The topic exchange results are published to (routing key: the status; progress events:
    /// `progress`).
    pub results_exchange: String,
    /// A durable queue bound to the results exchange for results (`#` minus nothing: every
    /// key); empty: declare none (then someone else must bind a queue, or publishes fail).
    pub results_queue: String,
    /// The fanout exchange cancel requests are published to.
    pub cancel_exchange: String,
    /// Delete idle queues after this many milliseconds (0: never). For ephemeral environments
    /// and tests; leave 0 in production.
    pub queue_expires_ms: u64,
}

impl Default for TopologyConfig {
    fn default() -> Self {
        Self {
            jobs_queue: "inpaint.jobs".into(),
            delivery_limit: 5,
            delay_queue: "inpaint.jobs.delay".into(),
            dead_letter_exchange: "inpaint.dlx".into(),
            dead_letter_queue: "inpaint.jobs.dead".into(),
            results_exchange: "inpaint.results".into(),
            results_queue: "inpaint.results".into(),
            cancel_exchange: "inpaint.cancel".into(),
            queue_expires_ms: 0,
        }
    }
}

impl TopologyConfig {
    /// A topology whose every name starts with `prefix` (tests use one per test).
    pub fn with_prefix(prefix: &str) -> Self {
        let d = Self::default();
        Self {
            jobs_queue: format!("{prefix}.{}", d.jobs_queue),
            delay_queue: format!("{prefix}.{}", d.delay_queue),
            dead_letter_exchange: format!("{prefix}.{}", d.dead_letter_exchange),
            dead_letter_queue: format!("{prefix}.{}", d.dead_letter_queue),
            results_exchange: format!("{prefix}.{}", d.results_exchange),
            results_queue: format!("{prefix}.{}", d.results_queue),
            cancel_exchange: format!("{prefix}.{}", d.cancel_exchange),
            ..d
        }
    }

    /// The delay queue used after failed attempt `attempt`.
    pub fn delay_queue_for(&self, attempt: u32) -> String {
        format!("{}.{attempt}", self.delay_queue)
    }

    pub(crate) fn validate(&self) -> Result<(), SettingsError> {
        for (key, value) in [
            ("topology.jobs_queue", &self.jobs_queue),
            ("topology.delay_queue", &self.delay_queue),
            ("topology.dead_letter_exchange", &self.dead_letter_exchange),
            ("topology.dead_letter_queue", &self.dead_letter_queue),
            ("topology.results_exchange", &self.results_exchange),
            ("topology.cancel_exchange", &self.cancel_exchange),
        ] {
            if value.trim().is_empty() {
                return Err(SettingsError::Invalid {
                    key: key.into(),
                    message: "must not be empty".into(),
                });
            }
            if value.len() > 200 {
                return Err(SettingsError::Invalid {
                    key: key.into(),
                    message: "must be at most 200 bytes".into(),
                });
            }
        }
        if self.delivery_limit == 0 {
            return Err(SettingsError::Invalid {
                key: "topology.delivery_limit".into(),
                message: "must be at least 1".into(),
            });
        }
        Ok(())
    }

    fn expiring(&self, mut args: FieldTable) -> FieldTable {
        if self.queue_expires_ms > 0 {
            let ms = i64::try_from(self.queue_expires_ms).unwrap_or(i64::MAX);
            args.insert(EXPIRES_ARG.into(), AMQPValue::LongLongInt(ms));
        }
        args
    }
}

fn string(value: &str) -> AMQPValue {
    AMQPValue::LongString(value.into())
}

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    }
}

async fn exchange(channel: &Channel, name: &str, kind: ExchangeKind) -> Result<(), QueueError> {
    channel
        .exchange_declare(
            name.into(),
            kind,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(|source| QueueError::Amqp {
            operation: "declaring an exchange",
            source,
        })
}

async fn queue(channel: &Channel, name: &str, args: FieldTable) -> Result<(), QueueError> {
    channel
        .queue_declare(name.into(), durable(), args)
        .await
        .map(|_| ())
        .map_err(|source| QueueError::Amqp {
            operation: "declaring a queue",
            source,
        })
}

async fn bind(channel: &Channel, queue: &str, exchange: &str, key: &str) -> Result<(), QueueError> {
    channel
        .queue_bind(
            queue.into(),
            exchange.into(),
            key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|source| QueueError::Amqp {
            operation: "binding a queue",
            source,
        })
}

/// Declares the whole topology; declaring what exists with the same arguments is a no-op.
/// `max_attempts` is the retry setting: one delay queue per retry.
pub async fn declare(
    channel: &Channel,
    topology: &TopologyConfig,
    max_attempts: u32,
) -> Result<(), QueueError> {
    let t = topology;
    exchange(channel, &t.dead_letter_exchange, ExchangeKind::Fanout).await?;
    queue(channel, &t.dead_letter_queue, t.expiring(quorum())).await?;
    bind(channel, &t.dead_letter_queue, &t.dead_letter_exchange, "").await?;

    let mut jobs = quorum();
    jobs.insert(
        DELIVERY_LIMIT_ARG.into(),
        AMQPValue::LongLongInt(i64::from(t.delivery_limit)),
    );
    jobs.insert(
        DEAD_LETTER_EXCHANGE_ARG.into(),
        string(&t.dead_letter_exchange),
    );
    queue(channel, &t.jobs_queue, t.expiring(jobs)).await?;

    for attempt in 1..max_attempts {
        let mut delay = FieldTable::default();
        delay.insert(DEAD_LETTER_EXCHANGE_ARG.into(), string(""));
        delay.insert(DEAD_LETTER_ROUTING_KEY_ARG.into(), string(&t.jobs_queue));
        queue(channel, &t.delay_queue_for(attempt), t.expiring(delay)).await?;
    }

    exchange(channel, &t.results_exchange, ExchangeKind::Topic).await?;
    if !t.results_queue.is_empty() {
        queue(channel, &t.results_queue, t.expiring(quorum())).await?;
        bind(channel, &t.results_queue, &t.results_exchange, "result.#").await?;
    }
    exchange(channel, &t.cancel_exchange, ExchangeKind::Fanout).await?;
    Ok(())
}

/// Declares this worker's exclusive, server-named cancel queue, bound to the cancel exchange;
/// returns its name. It disappears with the connection.
pub async fn declare_cancel_queue(
    channel: &Channel,
    topology: &TopologyConfig,
) -> Result<String, QueueError> {
    let declared = channel
        .queue_declare(
            ShortString::from(""),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(|source| QueueError::Amqp {
            operation: "declaring the cancel queue",
            source,
        })?;
    let name = declared.name().to_string();
    bind(channel, &name, &topology.cancel_exchange, "").await?;
    Ok(name)
}

/// The routing key of a result on the results exchange: `result.<status>`.
pub fn result_routing_key(status: inpaint_job::JobStatus) -> String {
    let status = serde_json::to_value(status)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| "unknown".into());
    format!("result.{status}")
}

fn quorum() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(QUEUE_TYPE_ARG.into(), string("quorum"));
    args
}

/// Reads a non-negative integer header, whatever integer type the sender used.
pub fn header_u32(headers: Option<&FieldTable>, name: &str) -> Option<u32> {
    u32::try_from(header_i64(headers, name)?).ok()
}

/// An integer header, whatever integer type (or decimal string) the producer used.
pub fn header_i64(headers: Option<&FieldTable>, name: &str) -> Option<i64> {
    let value = headers?.inner().get(name)?;
    let n: i64 = match value {
        AMQPValue::ShortShortInt(v) => i64::from(*v),
        AMQPValue::ShortShortUInt(v) => i64::from(*v),
        AMQPValue::ShortInt(v) => i64::from(*v),
        AMQPValue::ShortUInt(v) => i64::from(*v),
        AMQPValue::LongInt(v) => i64::from(*v),
        AMQPValue::LongUInt(v) => i64::from(*v),
        AMQPValue::LongLongInt(v) => *v,
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok()?.parse().ok()?,
        AMQPValue::Timestamp(v) => i64::try_from(*v).ok()?,
        _ => return None,
    };
    Some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_of_any_integer_type_are_read() {
        let mut t = FieldTable::default();
        t.insert("a".into(), AMQPValue::LongLongInt(3));
        t.insert("b".into(), AMQPValue::ShortShortUInt(2));
        t.insert("c".into(), AMQPValue::LongString("4".into()));
        t.insert("d".into(), AMQPValue::LongInt(-1));
        assert_eq!(header_u32(Some(&t), "a"), Some(3));
        assert_eq!(header_u32(Some(&t), "b"), Some(2));
        assert_eq!(header_u32(Some(&t), "c"), Some(4));
        assert_eq!(header_u32(Some(&t), "d"), None);
        assert_eq!(header_u32(Some(&t), "missing"), None);
        assert_eq!(header_u32(None, "a"), None);
    }

    #[test]
    fn names_follow_the_prefix() {
        let t = TopologyConfig::with_prefix("t1");
        assert_eq!(t.jobs_queue, "t1.inpaint.jobs");
        assert_eq!(t.delay_queue_for(2), "t1.inpaint.jobs.delay.2");
        assert_eq!(
            result_routing_key(inpaint_job::JobStatus::Succeeded),
            "result.succeeded"
        );
    }
}
