//! Friend events reach Kafka through the outbox, keyed by the pair of users (so every
//! event about one relationship is on one partition, in order), including an event
//! written while the broker was down.

mod support;

use std::time::Duration;

use messenger_common::outbox;
use messenger_common::testing::{self, TansuBroker, wait_for_event};
use messenger_friends::domain::event_key;
use messenger_proto::topics;
use messenger_proto::v1::event::Payload;
use messenger_proto::v1::{
    Event, FriendRemoved, FriendRequestAccepted, FriendRequestRejected, FriendRequestSent,
};
use support::TestService;

const EVENT_TIMEOUT: Duration = Duration::from_secs(60);

fn has_payload(expected: Payload) -> impl Fn(&Event) -> bool {
    move |event| event.payload.as_ref() == Some(&expected)
}

/// Waits until the relay has published every outbox row of the service's database.
async fn wait_until_relayed(service: &TestService, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let pending = outbox::pending_count(service.database.pool())
            .await
            .unwrap();
        if pending == 0 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{pending} outbox events still unpublished after {within:?}: is the Kafka broker \
             ({}) up?",
            service.config.kafka.brokers
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn every_change_publishes_its_event_keyed_by_the_pair() {
    let service = TestService::start().await;
    let brokers = testing::kafka_brokers();
    let (alice, bob, carol) = (
        service.person("alice"),
        service.person("bob"),
        service.person("carol"),
    );
    service.send(&alice, &bob.nickname).await.unwrap();
    service.accept(&bob, &alice.nickname).await.unwrap();
    service.remove(&alice, &bob.nickname).await.unwrap();
    service.send(&carol, &alice.nickname).await.unwrap();
    service.reject(&alice, &carol.nickname).await.unwrap();
    wait_until_relayed(&service, EVENT_TIMEOUT).await;

    let expected = [
        (
            "alice+bob",
            Payload::FriendRequestSent(FriendRequestSent {
                from_user_id: alice.id(),
                to_user_id: bob.id(),
                from_nickname: alice.nickname.clone(),
                to_nickname: bob.nickname.clone(),
            }),
        ),
        (
            "alice+bob",
            Payload::FriendRequestAccepted(FriendRequestAccepted {
                from_user_id: alice.id(),
                to_user_id: bob.id(),
                from_nickname: alice.nickname.clone(),
                to_nickname: bob.nickname.clone(),
            }),
        ),
        (
            "alice+bob",
            Payload::FriendRemoved(FriendRemoved {
                user_id: alice.id(),
                friend_user_id: bob.id(),
            }),
        ),
        (
            "alice+carol",
            Payload::FriendRequestSent(FriendRequestSent {
                from_user_id: carol.id(),
                to_user_id: alice.id(),
                from_nickname: carol.nickname.clone(),
                to_nickname: alice.nickname.clone(),
            }),
        ),
        (
            "alice+carol",
            Payload::FriendRequestRejected(FriendRequestRejected {
                from_user_id: carol.id(),
                to_user_id: alice.id(),
            }),
        ),
    ];
    let mut keys: std::collections::HashMap<&str, Vec<String>> = Default::default();
    for (pair, payload) in expected {
        let received = wait_for_event(
            &brokers,
            topics::FRIENDS_EVENTS,
            has_payload(payload.clone()),
            EVENT_TIMEOUT,
        )
        .await
        .unwrap_or_else(|| {
            panic!("{payload:?} did not reach Kafka at TEST_KAFKA_BROKERS ({brokers})")
        });
        assert!(!received.event.event_id.is_empty());
        keys.entry(pair).or_default().push(received.key);
    }
    // One key per relationship, whoever acts: a request, its acceptance and the removal
    // share a partition and are consumed in the order they happened.
    for (pair, keys) in &keys {
        assert!(keys.windows(2).all(|w| w[0] == w[1]), "{pair}: {keys:?}");
        for person in [&alice, &bob, &carol] {
            assert_ne!(
                keys[0],
                person.id(),
                "{pair} is not keyed by one of its users"
            );
        }
    }
    assert_ne!(keys["alice+bob"][0], keys["alice+carol"][0]);
    service.stop().await;
}

#[tokio::test]
async fn an_event_written_while_kafka_is_down_is_delivered_after() {
    let mut broker = TansuBroker::stopped(testing::free_port());
    let service = TestService::start_with_brokers(broker.brokers()).await;
    let (alice, bob) = (service.person("alice"), service.person("bob"));

    // The change succeeds with the broker down; its event waits in the outbox.
    service.send(&alice, &bob.nickname).await.unwrap();
    assert_eq!(service.friends(&alice).await, vec![]);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        outbox::pending_count(service.database.pool())
            .await
            .unwrap(),
        1
    );

    broker.restart();
    wait_until_relayed(&service, EVENT_TIMEOUT).await;
    let expected = Payload::FriendRequestSent(FriendRequestSent {
        from_user_id: alice.id(),
        to_user_id: bob.id(),
        from_nickname: alice.nickname.clone(),
        to_nickname: bob.nickname.clone(),
    });
    let received = wait_for_event(
        &broker.brokers(),
        topics::FRIENDS_EVENTS,
        has_payload(expected),
        EVENT_TIMEOUT,
    )
    .await
    .expect("the event written during the outage reaches Kafka after it");
    assert_eq!(received.key, event_key(alice.id, bob.id));
    service.stop().await;
}
