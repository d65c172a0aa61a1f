//! CreateChat asking a friends service over gRPC (`FRIENDS_URL`): an in-test
//! `FriendsService` on port 0 answers `CheckFriendship` from a set of friendships, so the
//! real `GrpcFriendshipChecker` (channel, deadline, error mapping, the forwarded caller)
//! is what is tested. It is served by the common `GrpcServer`, so it verifies callers as
//! the real friends service does.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use messenger_chat::config::FriendsConfig;
use messenger_chat::domain::UserId;
use messenger_chat::friendship::{FriendshipChecker, InMemoryFriendships};
use messenger_chat::{Config, Listeners, run};
use messenger_common::events::InMemoryEventBus;
use messenger_common::grpc::GrpcServer;
use messenger_common::{Metrics, Shutdown, identity, testing};
use messenger_proto::v1 as proto;
use messenger_proto::v1::chat_service_client::ChatServiceClient;
use messenger_proto::v1::friends_service_server::{FriendsService, FriendsServiceServer};
use tokio::net::TcpListener;
use tonic::{Code, Request, Response, Status};

/// Answers CheckFriendship from `friendships` after `delay`; counts calls that carried a
/// deadline (`grpc-timeout`).
struct InTestFriendsService {
    friendships: Arc<InMemoryFriendships>,
    delay: Duration,
    calls_with_deadline: Arc<AtomicUsize>,
}

fn unimplemented<T>() -> Result<Response<T>, Status> {
    Err(Status::unimplemented("not part of this test"))
}

#[tonic::async_trait]
impl FriendsService for InTestFriendsService {
    async fn get_friends_list(
        &self,
        _: Request<proto::GetFriendsListRequest>,
    ) -> Result<Response<proto::GetFriendsListResponse>, Status> {
        unimplemented()
    }

    async fn send_friend_request(
        &self,
        _: Request<proto::SendFriendRequestRequest>,
    ) -> Result<Response<proto::SendFriendRequestResponse>, Status> {
        unimplemented()
    }

    async fn accept_friend_request(
        &self,
        _: Request<proto::AcceptFriendRequestRequest>,
    ) -> Result<Response<proto::AcceptFriendRequestResponse>, Status> {
        unimplemented()
    }

    async fn reject_friend_request(
        &self,
        _: Request<proto::RejectFriendRequestRequest>,
    ) -> Result<Response<proto::RejectFriendRequestResponse>, Status> {
        unimplemented()
    }

    async fn remove_friend(
        &self,
        _: Request<proto::RemoveFriendRequest>,
    ) -> Result<Response<proto::RemoveFriendResponse>, Status> {
        unimplemented()
    }

    async fn list_friend_requests(
        &self,
        _: Request<proto::ListFriendRequestsRequest>,
    ) -> Result<Response<proto::ListFriendRequestsResponse>, Status> {
        unimplemented()
    }

    async fn check_friendship(
        &self,
        request: Request<proto::CheckFriendshipRequest>,
    ) -> Result<Response<proto::CheckFriendshipResponse>, Status> {
        // As the real friends service: only for the user chat acts for.
        identity::require_user(&request, &request.get_ref().user_id)?;
        if request.metadata().get("grpc-timeout").is_some() {
            self.calls_with_deadline.fetch_add(1, Ordering::SeqCst);
        }
        tokio::time::sleep(self.delay).await;
        let request = request.into_inner();
        let parse =
            |id: &str| UserId::parse("id", id).map_err(|e| Status::invalid_argument(e.to_string()));
        let user = parse(&request.user_id)?;
        let others = request
            .other_user_ids
            .iter()
            .map(|id| parse(id))
            .collect::<Result<Vec<_>, _>>()?;
        let not_friends = self
            .friendships
            .not_friends(user, &others)
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(proto::CheckFriendshipResponse {
            not_friends: not_friends.iter().map(ToString::to_string).collect(),
        }))
    }
}

struct Started {
    client: ChatServiceClient<tonic::transport::Channel>,
    friendships: Arc<InMemoryFriendships>,
    calls_with_deadline: Arc<AtomicUsize>,
    shutdown: Shutdown,
}

impl Drop for Started {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

/// The friends stand-in answering after `delay`, and the chat service calling it with
/// `timeout` (no Redis: the cache is off).
async fn start(delay: Duration, timeout: Duration) -> Started {
    let shutdown = Shutdown::new();
    let friendships = Arc::new(InMemoryFriendships::new());
    let calls_with_deadline = Arc::new(AtomicUsize::new(0));
    let friends_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let friends_address = friends_listener.local_addr().unwrap();
    let friends = InTestFriendsService {
        friendships: Arc::clone(&friendships),
        delay,
        calls_with_deadline: Arc::clone(&calls_with_deadline),
    };
    let friends_shutdown = shutdown.clone();
    tokio::spawn(
        GrpcServer::new(&Metrics::new())
            .internal_key(testing::test_key())
            .add_service(FriendsServiceServer::new(friends))
            .serve_with_listener(friends_listener, friends_shutdown),
    );

    let mut config = Config::in_memory(
        InMemoryEventBus::new(),
        Arc::new(InMemoryFriendships::new()),
        testing::test_key(),
    );
    config.friends = FriendsConfig::Grpc {
        url: format!("http://{friends_address}"),
        timeout,
    };
    let grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let chat_address = grpc.local_addr().unwrap();
    tokio::spawn(run(config, Listeners { grpc, admin }, shutdown.clone()));
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{chat_address}"))
        .unwrap()
        .connect_lazy();
    Started {
        client: ChatServiceClient::new(channel),
        friendships,
        calls_with_deadline,
        shutdown,
    }
}

fn create(creator: &UserId, others: &[&UserId]) -> Request<proto::CreateChatRequest> {
    testing::as_user(
        creator.to_string(),
        proto::CreateChatRequest {
            creator_id: creator.to_string(),
            participant_ids: others.iter().map(ToString::to_string).collect(),
        },
    )
}

#[tokio::test]
async fn create_chat_asks_the_friends_service_with_a_deadline() {
    let mut started = start(Duration::ZERO, Duration::from_secs(2)).await;
    let (a, b, c) = (
        UserId::new_random(),
        UserId::new_random(),
        UserId::new_random(),
    );
    started.friendships.befriend(a, b);

    let chat = started
        .client
        .create_chat(create(&a, &[&b]))
        .await
        .expect("friends may open a chat")
        .into_inner();
    assert_eq!(chat.participant_ids, vec![a.to_string(), b.to_string()]);
    let refused = started
        .client
        .create_chat(create(&a, &[&b, &c]))
        .await
        .expect_err("c is not a friend");
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert!(
        refused.message().contains(&c.to_string()) && !refused.message().contains(&b.to_string())
    );
    assert_eq!(
        started.calls_with_deadline.load(Ordering::SeqCst),
        2,
        "every friends call carries a deadline"
    );

    let chats = started
        .client
        .get_user_chats(testing::as_user(
            a.to_string(),
            proto::GetUserChatsRequest {
                user_id: a.to_string(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .chats;
    assert_eq!(chats.len(), 1, "the refused group was not created");
}

#[tokio::test]
async fn a_slow_friends_service_makes_create_chat_unavailable_within_the_deadline() {
    let mut started = start(Duration::from_secs(5), Duration::from_millis(300)).await;
    let (a, b) = (UserId::new_random(), UserId::new_random());
    started.friendships.befriend(a, b);
    let began = Instant::now();
    let status = started
        .client
        .create_chat(create(&a, &[&b]))
        .await
        .expect_err("the friends call times out");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        began.elapsed() < Duration::from_secs(3),
        "took {:?}",
        began.elapsed()
    );
    let chats = started
        .client
        .get_user_chats(testing::as_user(
            a.to_string(),
            proto::GetUserChatsRequest {
                user_id: a.to_string(),
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    assert!(chats.into_inner().chats.is_empty());
}
