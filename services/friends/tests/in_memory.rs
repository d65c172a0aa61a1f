//! The all-in-one dev mode: `Config::in_memory` set, the service serves the same gRPC API with friendships,
//! cache and events kept in process.

mod support;

use std::sync::Arc;
use std::time::Duration;

use messenger_common::events::InMemoryEventBus;
use messenger_common::{Shutdown, testing};
use messenger_friends::Config;
use messenger_friends::directory::InMemoryUserDirectory;
use messenger_friends::domain::event_key;
use messenger_proto::topics;
use messenger_proto::v1::event::Payload;
use messenger_proto::v1::{FriendRequestAccepted, GetFriendsListRequest, SendFriendRequestRequest};
use uuid::Uuid;

#[tokio::test]
async fn in_memory_mode_serves_the_api_and_publishes_to_the_bus() {
    let bus = InMemoryEventBus::new();
    let mut events = bus.subscribe(topics::FRIENDS_EVENTS);
    let directory = Arc::new(InMemoryUserDirectory::new());
    let (alice, bob) = (Uuid::now_v7(), Uuid::now_v7());
    directory.insert(alice, "alice");
    directory.insert(bob, "bob");
    let mut config = Config::new(
        Config::default_service(),
        "unused",
        "unused",
        "unused",
        testing::test_key(),
    );
    config.in_memory = Some(bus);
    let (listeners, grpc_addr, _) = support::bind().await;
    let shutdown = Shutdown::new();
    let server = tokio::spawn(messenger_friends::run_with_directory(
        config,
        directory,
        listeners,
        shutdown.clone(),
    ));
    let mut client = support::connect(grpc_addr).await;

    for (from, to) in [(alice, "bob"), (bob, "alice")] {
        client
            .send_friend_request(testing::as_user(
                from.to_string(),
                SendFriendRequestRequest {
                    user_id: from.to_string(),
                    nickname: to.into(),
                },
            ))
            .await
            .unwrap();
    }
    let friends = client
        .get_friends_list(testing::as_user(
            alice.to_string(),
            GetFriendsListRequest {
                user_id: alice.to_string(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .friends;
    assert_eq!(friends.len(), 1);
    assert_eq!(
        (friends[0].user_id.clone(), friends[0].nickname.as_str()),
        (bob.to_string(), "bob")
    );
    let again = client
        .send_friend_request(testing::as_user(
            alice.to_string(),
            SendFriendRequestRequest {
                user_id: alice.to_string(),
                nickname: "BOB".into(),
            },
        ))
        .await;
    assert_eq!(again.unwrap_err().code(), tonic::Code::AlreadyExists);

    let mut received = Vec::new();
    for _ in 0..2 {
        let message = tokio::time::timeout(Duration::from_secs(5), events.recv())
            .await
            .unwrap()
            .unwrap();
        received.push((message.key, message.event.payload));
    }
    assert_eq!(
        received[1],
        (
            event_key(alice.into(), bob.into()),
            Some(Payload::FriendRequestAccepted(FriendRequestAccepted {
                from_user_id: alice.to_string(),
                to_user_id: bob.to_string(),
                from_nickname: "alice".into(),
                to_nickname: "bob".into(),
            }))
        )
    );

    shutdown.trigger();
    server
        .await
        .unwrap()
        .expect("in-memory service stops cleanly");
}
