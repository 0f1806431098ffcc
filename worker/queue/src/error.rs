//! The queue error type.

/// Everything that can go wrong talking to the broker.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The configuration is unusable (bad URL, say).
    #[error("invalid broker configuration: {0}")]
    Config(String),
    /// An AMQP operation failed: connection lost, channel closed, access refused, ...
    #[error("{operation} failed: {source}")]
    Amqp {
        operation: &'static str,
        #[source]
        source: lapin::Error,
    },
    /// The broker refused responsibility for a published message (basic.nack).
    #[error(
        "broker nacked the message published to exchange {exchange:?} with key {routing_key:?}"
    )]
    Nacked {
        exchange: String,
        routing_key: String,
    },
    /// A mandatory message matched no queue and came back.
    #[error("message published to exchange {exchange:?} with key {routing_key:?} reached no queue")]
    Unroutable {
        exchange: String,
        routing_key: String,
    },
}

impl QueueError {
    pub(crate) fn amqp(operation: &'static str) -> impl FnOnce(lapin::Error) -> Self {
        move |source| Self::Amqp { operation, source }
    }
}
