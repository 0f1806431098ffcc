//! inpaint-queue: the worker's side of RabbitMQ.
//!
//! Layout:
//! - [`config`]: [`BrokerConfig`], plain serde data; [`BrokerConfig::connect`] makes a [`Broker`].
//! - [`broker`]: [`Broker`] (one AMQP connection), [`Publisher`] (a channel in confirm mode: a
//!   publish returns only once the broker has taken responsibility for the message) and
//!   consuming with manual acknowledgement.
//!
//! No libtorch here: this crate builds and tests on any machine.

pub mod broker;
pub mod config;
pub mod error;

pub use broker::{Broker, Publisher};
pub use config::BrokerConfig;
pub use error::QueueError;
pub use lapin;
