//! [`Broker`] (one connection), [`Publisher`] (confirmed publishing) and consuming.

use lapin::Confirmation;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, Consumer};

use crate::{BrokerConfig, QueueError};

/// One AMQP connection. Channels are cheap; make one per concern.
#[derive(Debug)]
pub struct Broker {
    connection: Connection,
}

impl BrokerConfig {
    /// Connects to the broker.
    pub async fn connect(&self) -> Result<Broker, QueueError> {
        let properties = ConnectionProperties::default()
            .with_connection_name(self.connection_name.clone().into());
        let connection = Connection::connect(&self.url, properties)
            .await
            .map_err(|source| QueueError::Amqp {
                operation: "connecting to the broker",
                source,
            })?;
        tracing::debug!(url = %self.redacted_url(), "connected to the broker");
        Ok(Broker { connection })
    }
}

impl Broker {
    /// A plain channel, for declaring topology or consuming.
    pub async fn channel(&self) -> Result<Channel, QueueError> {
        self.connection
            .create_channel()
            .await
            .map_err(QueueError::amqp("opening a channel"))
    }

    /// A channel in publisher-confirm mode.
    pub async fn publisher(&self) -> Result<Publisher, QueueError> {
        let channel = self.channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(QueueError::amqp("enabling publisher confirms"))?;
        Ok(Publisher { channel })
    }

    /// Starts consuming `queue` with manual acknowledgement on a channel of its own, with at most
    /// `prefetch` unacknowledged deliveries outstanding. Acknowledge each delivery through its own
    /// `acker`: delivery tags belong to the channel they arrived on.
    pub async fn consume(
        &self,
        queue: &str,
        consumer_tag: &str,
        prefetch: u16,
    ) -> Result<Consumer, QueueError> {
        let channel = self.channel().await?;
        channel
            .basic_qos(prefetch, BasicQosOptions::default())
            .await
            .map_err(QueueError::amqp("setting the prefetch count"))?;
        channel
            .basic_consume(
                queue.into(),
                consumer_tag.into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(QueueError::amqp("starting the consumer"))
    }

    /// Closes the connection politely (reply code 200).
    pub async fn close(&self) -> Result<(), QueueError> {
        self.connection
            .close(200, "worker shutting down".into())
            .await
            .map_err(QueueError::amqp("closing the connection"))
    }
}

/// A channel in confirm mode. [`Publisher::publish`] returns only after the broker has confirmed
/// the message: for a durable queue and a persistent message, that means it is on disk (on a
/// quorum of nodes for a quorum queue).
#[derive(Debug)]
pub struct Publisher {
    channel: Channel,
}

impl Publisher {
    /// Publishes `payload` as a mandatory message and waits for the broker's confirm.
    /// A nack, or a message that reaches no queue, is an error.
    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        payload: &[u8],
        properties: BasicProperties,
    ) -> Result<(), QueueError> {
        let confirm = self
            .channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                payload,
                properties,
            )
            .await
            .map_err(QueueError::amqp("publishing"))?
            .await
            .map_err(QueueError::amqp("waiting for the publisher confirm"))?;
        let names = || (exchange.to_owned(), routing_key.to_owned());
        match confirm {
            Confirmation::Ack(None) => Ok(()),
            Confirmation::Ack(Some(_returned)) => {
                let (exchange, routing_key) = names();
                Err(QueueError::Unroutable {
                    exchange,
                    routing_key,
                })
            }
            Confirmation::Nack(_) => {
                let (exchange, routing_key) = names();
                Err(QueueError::Nacked {
                    exchange,
                    routing_key,
                })
            }
            Confirmation::NotRequested => Err(QueueError::Config(
                "publisher channel is not in confirm mode".into(),
            )),
        }
    }

    /// The underlying channel, for declarations.
    pub fn channel(&self) -> &Channel {
        &self.channel
    }
}
