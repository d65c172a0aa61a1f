//! The dev-mode service (`run` with `Config::in_memory`): in-memory stores fed by an in-process event bus,
//! the same gRPC API.

use std::time::Duration;

use messenger_common::events::{EventPublisher, InMemoryEventBus, Payload, new_event};
use messenger_common::{Shutdown, testing};
use messenger_proto::topics::AUTH_EVENTS;
use messenger_proto::v1::users_service_client::UsersServiceClient;
use messenger_proto::v1::{
    GetUserProfileByNicknameRequest, GetUserProfileRequest, SearchUsersRequest,
    UpdateUserProfileRequest, UserProfile, UserRegistered,
};
use messenger_users::{Config, Listeners};
use tokio::net::TcpListener;
use tonic::Code;
use tonic::transport::Channel;
use uuid::Uuid;

async fn get(
    client: &mut UsersServiceClient<Channel>,
    user_id: Uuid,
) -> Result<UserProfile, tonic::Status> {
    client
        .get_user_profile(testing::as_service(
            "gateway",
            GetUserProfileRequest {
                user_id: user_id.to_string(),
            },
        ))
        .await
        .map(tonic::Response::into_inner)
}

async fn wait_for_profile(client: &mut UsersServiceClient<Channel>, user_id: Uuid) -> UserProfile {
    for _ in 0..100 {
        match get(client, user_id).await {
            Ok(profile) => return profile,
            Err(status) if status.code() == Code::NotFound => {}
            Err(status) => panic!("GetUserProfile failed: {status:?}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no profile for {user_id} after 5s");
}

#[tokio::test]
async fn dev_mode_creates_profiles_from_bus_events_and_serves_the_api() {
    let bus = InMemoryEventBus::new();
    let grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = grpc.local_addr().unwrap();
    let shutdown = Shutdown::new();
    let task = tokio::spawn({
        let bus = bus.clone();
        let shutdown = shutdown.clone();
        async move {
            messenger_users::run(
                Config::in_memory(bus, testing::test_key()),
                Listeners { grpc, admin },
                shutdown,
            )
            .await
        }
    });
    let channel = Channel::from_shared(format!("http://{address}"))
        .unwrap()
        .connect_lazy();
    let mut client = UsersServiceClient::new(channel);
    // Once the server answers, the service has subscribed to the bus.
    assert_eq!(
        get(&mut client, Uuid::now_v7()).await.unwrap_err().code(),
        Code::NotFound
    );

    let user_id = Uuid::now_v7();
    let event = new_event(Payload::UserRegistered(UserRegistered {
        user_id: user_id.to_string(),
        nickname: "DevUser".into(),
    }));
    bus.publish(AUTH_EVENTS, &user_id.to_string(), &event)
        .await
        .unwrap();
    let profile = wait_for_profile(&mut client, user_id).await;
    assert_eq!(profile.nickname, "devuser");

    let updated = client
        .update_user_profile(testing::as_user(
            user_id.to_string(),
            UpdateUserProfileRequest {
                user_id: user_id.to_string(),
                bio: Some("dev bio".into()),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    // A replay (and then a marker event behind it) leaves the edited profile alone.
    bus.publish(AUTH_EVENTS, &user_id.to_string(), &event)
        .await
        .unwrap();
    let marker = Uuid::now_v7();
    let marker_event = new_event(Payload::UserRegistered(UserRegistered {
        user_id: marker.to_string(),
        nickname: "devmarker".into(),
    }));
    bus.publish(AUTH_EVENTS, &marker.to_string(), &marker_event)
        .await
        .unwrap();
    wait_for_profile(&mut client, marker).await;
    assert_eq!(get(&mut client, user_id).await.unwrap(), updated);

    let by_nickname = client
        .get_user_profile_by_nickname(testing::as_service(
            "gateway",
            GetUserProfileByNicknameRequest {
                nickname: "DEVUSER".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(by_nickname, updated);
    let found = client
        .search_users(testing::as_service(
            "gateway",
            SearchUsersRequest {
                prefix: "dev".into(),
                page_size: 1,
                page_token: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(found.users.len(), 1);
    assert_eq!(found.users[0].nickname, "devmarker");
    assert!(!found.next_page_token.is_empty());

    shutdown.trigger();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("stops within 10s")
        .unwrap()
        .expect("stops cleanly");
}

/// Errors quote at most an excerpt of a rejected value: a near-4 MiB id must come back as
/// a short message, not be echoed whole (which would also blow the gRPC header limits).
#[tokio::test]
async fn huge_invalid_values_come_back_as_short_errors() {
    let grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = grpc.local_addr().unwrap();
    let shutdown = Shutdown::new();
    let task = tokio::spawn(messenger_users::run(
        Config::in_memory(InMemoryEventBus::new(), testing::test_key()),
        Listeners { grpc, admin },
        shutdown.clone(),
    ));
    let channel = Channel::from_shared(format!("http://{address}"))
        .unwrap()
        .connect_lazy();
    let mut client = UsersServiceClient::new(channel);
    let huge = "x".repeat(4 * 1024 * 1024 - 1024);

    let status = client
        .get_user_profile(testing::as_service(
            "gateway",
            GetUserProfileRequest {
                user_id: huge.clone(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().len() < 200,
        "{} bytes",
        status.message().len()
    );
    assert!(
        status.message().contains("is not a UUID") && status.message().contains("bytes"),
        "{}",
        status.message()
    );

    // A user naming somebody else (here: a huge non-id) is refused the same short way.
    let me = Uuid::now_v7();
    let status = client
        .update_user_profile(testing::as_user(
            me.to_string(),
            UpdateUserProfileRequest {
                user_id: huge,
                bio: Some("hi".into()),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(
        status.message().len() < 200,
        "{} bytes",
        status.message().len()
    );
    assert!(
        status.message().contains("may act only for itself"),
        "{}",
        status.message()
    );

    shutdown.trigger();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("stops within 10s")
        .unwrap()
        .expect("stops cleanly");
}
