//! Publish to and consume from the real RabbitMQ: confirms, manual ack, redelivery, unroutable.

use std::time::Duration;

use futures::StreamExt;
use inpaint_e2e::{START_SERVICES, broker_config};
use inpaint_queue::lapin::options::{BasicAckOptions, BasicNackOptions, QueueDeclareOptions};
use inpaint_queue::lapin::types::FieldTable;
use inpaint_queue::lapin::{BasicProperties, message::Delivery};
use inpaint_queue::{Broker, QueueError};

async fn connect() -> Broker {
    let config = broker_config();
    match config.connect().await {
        Ok(broker) => broker,
        Err(e) => panic!(
            "RabbitMQ at {} unreachable ({e}); {START_SERVICES}",
            config.redacted_url()
        ),
    }
}

async fn temp_queue(broker: &Broker) -> String {
    let channel = broker.channel().await.expect("channel");
    let options = QueueDeclareOptions {
        auto_delete: true,
        ..QueueDeclareOptions::default()
    };
    let queue = channel
        .queue_declare(
            format!("e2e-{}", uuid::Uuid::new_v4()).into(),
            options,
            FieldTable::default(),
        )
        .await
        .expect("declare queue");
    queue.name().to_string()
}

async fn next(consumer: &mut inpaint_queue::lapin::Consumer) -> Delivery {
    tokio::time::timeout(Duration::from_secs(10), consumer.next())
        .await
        .expect("a delivery within 10 s")
        .expect("consumer open")
        .expect("delivery ok")
}

#[tokio::test]
async fn confirmed_publish_is_consumed_with_its_properties() {
    let broker = connect().await;
    let queue = temp_queue(&broker).await;
    let publisher = broker.publisher().await.expect("publisher");
    let properties = BasicProperties::default()
        .with_message_id("job-1".into())
        .with_correlation_id("corr-1".into())
        .with_delivery_mode(2);
    publisher
        .publish("", &queue, br#"{"job":1}"#, properties)
        .await
        .expect("confirmed publish");

    let mut consumer = broker.consume(&queue, "e2e", 4).await.expect("consume");
    let delivery = next(&mut consumer).await;
    assert_eq!(delivery.data, br#"{"job":1}"#);
    assert_eq!(
        delivery
            .properties
            .message_id()
            .as_ref()
            .map(|s| s.as_str()),
        Some("job-1")
    );
    assert_eq!(
        delivery
            .properties
            .correlation_id()
            .as_ref()
            .map(|s| s.as_str()),
        Some("corr-1")
    );
    assert!(!delivery.redelivered);
    delivery
        .acker
        .ack(BasicAckOptions::default())
        .await
        .expect("ack");
    broker.close().await.expect("close");
}

#[tokio::test]
async fn an_unacked_delivery_comes_back_after_the_consumer_dies() {
    let queue = {
        let broker = connect().await;
        let queue = temp_queue(&broker).await;
        let publisher = broker.publisher().await.expect("publisher");
        publisher
            .publish("", &queue, b"work", BasicProperties::default())
            .await
            .expect("publish");
        broker.close().await.expect("close");
        queue
    };
    // The first worker takes the job and dies without acknowledging it...
    let first = connect().await;
    // ...while a second worker is already waiting, so the auto-delete queue keeps a consumer.
    let second = connect().await;
    let mut taken = first.consume(&queue, "first", 1).await.expect("consume");
    let delivery = next(&mut taken).await;
    assert!(!delivery.redelivered);
    let mut waiting = second.consume(&queue, "second", 1).await.expect("consume");
    drop(delivery);
    first.close().await.expect("close without ack");
    let again = next(&mut waiting).await;
    assert_eq!(again.data, b"work");
    assert!(
        again.redelivered,
        "the broker marks the second delivery as a redelivery"
    );
    again
        .acker
        .nack(BasicNackOptions {
            requeue: false,
            ..Default::default()
        })
        .await
        .expect("nack");
    second.close().await.expect("close");
}

#[tokio::test]
async fn a_message_that_reaches_no_queue_is_an_error_not_a_silent_loss() {
    let broker = connect().await;
    let publisher = broker.publisher().await.expect("publisher");
    let err = publisher
        .publish(
            "",
            "no-such-queue-for-inpaint-e2e",
            b"lost?",
            BasicProperties::default(),
        )
        .await
        .expect_err("unroutable");
    assert!(matches!(err, QueueError::Unroutable { .. }), "{err:?}");
    broker.close().await.expect("close");
}
