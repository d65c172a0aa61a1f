//! Kafka helpers against the real broker: topic creation, the publisher creating missing
//! topics, and the readiness check.

use std::time::Duration;

use messenger_common::admin::ReadinessCheck;
use messenger_common::events::{EventPublisher, KafkaPublisher, Payload, new_event};
use messenger_common::kafka::{self, KafkaReadiness};
use messenger_common::testing::{free_port, kafka_brokers, unique_name, wait_for_event};
use messenger_proto::v1::ChatCreated;
use rdkafka::producer::Producer as _;

fn chat_created(chat: &str) -> messenger_common::events::Event {
    new_event(Payload::ChatCreated(ChatCreated {
        chat_id: chat.into(),
        creator_id: "u1".into(),
        participant_ids: vec!["u1".into(), "u2".into()],
    }))
}

fn topic_partitions(brokers: &str, topic: &str) -> Option<usize> {
    let producer = kafka::producer(brokers).unwrap();
    let metadata = producer
        .client()
        .fetch_metadata(Some(topic), Duration::from_secs(5))
        .unwrap();
    metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none())
        .map(|t| t.partitions().len())
}

#[tokio::test]
async fn ensure_topics_creates_missing_topics_and_tolerates_existing_ones() {
    let brokers = kafka_brokers();
    let topic = unique_name("test.topics");
    kafka::ensure_topics(&brokers, &[&topic])
        .await
        .unwrap_or_else(|e| panic!("TEST_KAFKA_BROKERS={brokers} unreachable: {e}"));
    kafka::ensure_topics(&brokers, &[&topic])
        .await
        .expect("creating an existing topic again is fine");
    let brokers_for_metadata = brokers.clone();
    let partitions =
        tokio::task::spawn_blocking(move || topic_partitions(&brokers_for_metadata, &topic))
            .await
            .unwrap();
    assert_eq!(partitions, Some(kafka::DEFAULT_PARTITIONS as usize));
}

#[tokio::test]
async fn the_publisher_creates_a_missing_topic_on_first_publish() {
    let brokers = kafka_brokers();
    let topic = unique_name("test.autocreate");
    let publisher = KafkaPublisher::connect(&brokers).unwrap();
    let event = chat_created("c1");
    publisher
        .publish(&topic, "c1", &event)
        .await
        .unwrap_or_else(|e| panic!("publish to TEST_KAFKA_BROKERS={brokers}: {e}"));
    let received = wait_for_event(
        &brokers,
        &topic,
        |e| e.event_id == event.event_id,
        Duration::from_secs(30),
    )
    .await
    .expect("the event is readable");
    assert_eq!(received.key, "c1");
    assert_eq!(received.event, event);
}

#[tokio::test]
async fn kafka_readiness_passes_on_a_live_broker_and_fails_on_a_dead_one() {
    let live = KafkaReadiness::new(kafka::producer(kafka_brokers()).unwrap());
    assert_eq!(live.name(), "kafka");
    assert_eq!(
        live.check().await,
        Ok(()),
        "TEST_KAFKA_BROKERS={}",
        kafka_brokers()
    );

    let dead = KafkaReadiness::new(kafka::producer(format!("127.0.0.1:{}", free_port())).unwrap());
    let started = std::time::Instant::now();
    assert!(dead.check().await.is_err());
    assert!(started.elapsed() < Duration::from_secs(5));
}
