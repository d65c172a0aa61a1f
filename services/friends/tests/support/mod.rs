//! Test harness: the friends service started through `run_with_directory` on port 0, on a
//! fresh PostgreSQL database, a unique Redis prefix and the test Kafka broker, with an
//! in-memory user directory the test fills.

#![allow(dead_code)] // each test binary uses a different part of the harness

use std::sync::Arc;
use std::time::Duration;

use messenger_common::Shutdown;
use messenger_common::testing::{self, TestDatabase};
use messenger_friends::directory::InMemoryUserDirectory;
use messenger_friends::domain::UserId;
use messenger_friends::{Config, Listeners};
use messenger_proto::v1::friends_service_client::FriendsServiceClient;
use messenger_proto::v1::*;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use uuid::Uuid;

/// A running friends service and the handles a test needs around it.
pub struct TestService {
    pub client: FriendsServiceClient<Channel>,
    pub directory: Arc<InMemoryUserDirectory>,
    pub database: TestDatabase,
    pub config: Config,
    pub shutdown: Shutdown,
    pub server: JoinHandle<Result<(), messenger_friends::Error>>,
    pub admin_addr: std::net::SocketAddr,
}

/// A person known to the directory.
#[derive(Clone, Debug)]
pub struct Person {
    pub id: UserId,
    pub nickname: String,
}

impl Person {
    pub fn id(&self) -> String {
        self.id.to_string()
    }
}

/// The config for a test: fresh names everywhere, a short relay backoff.
pub fn test_config(database: &TestDatabase, kafka_brokers: String) -> Config {
    let mut config = Config::new(
        Config::default_service(),
        database.url(),
        testing::redis_url(),
        kafka_brokers,
        testing::test_key(),
    );
    config.redis_prefix = testing::unique_prefix();
    config.outbox_max_backoff = Duration::from_millis(500);
    config
}

pub async fn bind() -> (Listeners, std::net::SocketAddr, std::net::SocketAddr) {
    let grpc = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind gRPC port");
    let admin = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind admin port");
    let (grpc_addr, admin_addr) = (grpc.local_addr().unwrap(), admin.local_addr().unwrap());
    (Listeners { grpc, admin }, grpc_addr, admin_addr)
}

pub async fn connect(addr: std::net::SocketAddr) -> FriendsServiceClient<Channel> {
    let url = format!("http://{addr}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match FriendsServiceClient::connect(url.clone()).await {
            Ok(client) => return client,
            Err(error) if tokio::time::Instant::now() < deadline => {
                let _ = error;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(error) => panic!("friends service at {url} did not come up: {error}"),
        }
    }
}

impl TestService {
    /// Starts the service against the shared test broker (`TEST_KAFKA_BROKERS`).
    pub async fn start() -> Self {
        Self::start_with_brokers(testing::kafka_brokers()).await
    }

    /// Starts the service publishing to `kafka_brokers`.
    pub async fn start_with_brokers(kafka_brokers: String) -> Self {
        Self::start_with(kafka_brokers, |_| {}).await
    }

    /// Starts the service publishing to `kafka_brokers`, its config changed by `customise`.
    pub async fn start_with(kafka_brokers: String, customise: impl FnOnce(&mut Config)) -> Self {
        let database = TestDatabase::create().await;
        let mut config = test_config(&database, kafka_brokers);
        customise(&mut config);
        let directory = Arc::new(InMemoryUserDirectory::new());
        let (listeners, grpc_addr, admin_addr) = bind().await;
        let shutdown = Shutdown::new();
        let server = tokio::spawn(messenger_friends::run_with_directory(
            config.clone(),
            directory.clone(),
            listeners,
            shutdown.clone(),
        ));
        let client = connect(grpc_addr).await;
        TestService {
            client,
            directory,
            database,
            config,
            shutdown,
            server,
            admin_addr,
        }
    }

    /// Registers a person with a unique nickname starting with `name`.
    pub fn person(&self, name: &str) -> Person {
        let person = Person {
            id: Uuid::now_v7().into(),
            nickname: format!("{name}_{}", &Uuid::new_v4().simple().to_string()[..8]),
        };
        self.directory.insert(person.id, person.nickname.clone());
        person
    }

    pub async fn send(&self, from: &Person, to: &str) -> Result<FriendshipStatus, tonic::Status> {
        let response = self
            .client
            .clone()
            .send_friend_request(testing::as_user(
                from.id(),
                SendFriendRequestRequest {
                    user_id: from.id(),
                    nickname: to.to_owned(),
                },
            ))
            .await?;
        Ok(response.into_inner().status())
    }

    pub async fn accept(&self, by: &Person, from: &str) -> Result<(), tonic::Status> {
        self.client
            .clone()
            .accept_friend_request(testing::as_user(
                by.id(),
                AcceptFriendRequestRequest {
                    user_id: by.id(),
                    nickname: from.to_owned(),
                },
            ))
            .await
            .map(|_| ())
    }

    pub async fn reject(&self, by: &Person, from: &str) -> Result<(), tonic::Status> {
        self.client
            .clone()
            .reject_friend_request(testing::as_user(
                by.id(),
                RejectFriendRequestRequest {
                    user_id: by.id(),
                    nickname: from.to_owned(),
                },
            ))
            .await
            .map(|_| ())
    }

    pub async fn remove(&self, by: &Person, friend: &str) -> Result<(), tonic::Status> {
        self.client
            .clone()
            .remove_friend(testing::as_user(
                by.id(),
                RemoveFriendRequest {
                    user_id: by.id(),
                    nickname: friend.to_owned(),
                },
            ))
            .await
            .map(|_| ())
    }

    /// `(user id, nickname)` of each friend, sorted by nickname.
    pub async fn friends(&self, of: &Person) -> Vec<(String, String)> {
        let mut friends: Vec<(String, String)> = self
            .client
            .clone()
            .get_friends_list(testing::as_user(
                of.id(),
                GetFriendsListRequest {
                    user_id: of.id(),
                    ..Default::default()
                },
            ))
            .await
            .expect("GetFriendsList")
            .into_inner()
            .friends
            .into_iter()
            .map(|friend| (friend.user_id, friend.nickname))
            .collect();
        friends.sort_by(|a, b| a.1.cmp(&b.1));
        friends
    }

    /// One page of `of`'s friends.
    pub async fn friends_page(
        &self,
        of: &Person,
        limit: u32,
        cursor: &str,
    ) -> Result<GetFriendsListResponse, tonic::Status> {
        self.client
            .clone()
            .get_friends_list(testing::as_user(
                of.id(),
                GetFriendsListRequest {
                    user_id: of.id(),
                    limit,
                    cursor: cursor.to_owned(),
                },
            ))
            .await
            .map(tonic::Response::into_inner)
    }

    /// One page of `of`'s pending requests in `direction`.
    pub async fn requests_page(
        &self,
        of: &Person,
        direction: RequestDirection,
        limit: u32,
        cursor: &str,
    ) -> Result<ListFriendRequestsResponse, tonic::Status> {
        self.client
            .clone()
            .list_friend_requests(testing::as_user(
                of.id(),
                ListFriendRequestsRequest {
                    user_id: of.id(),
                    direction: direction.into(),
                    limit,
                    cursor: cursor.to_owned(),
                },
            ))
            .await
            .map(tonic::Response::into_inner)
    }

    /// `(from nickname, to nickname)` of each pending request in `direction`.
    pub async fn requests(
        &self,
        of: &Person,
        direction: RequestDirection,
    ) -> Vec<(String, String)> {
        let mut requests: Vec<(String, String)> = self
            .client
            .clone()
            .list_friend_requests(testing::as_user(
                of.id(),
                ListFriendRequestsRequest {
                    user_id: of.id(),
                    direction: direction.into(),
                    ..Default::default()
                },
            ))
            .await
            .expect("ListFriendRequests")
            .into_inner()
            .requests
            .into_iter()
            .map(|request| {
                assert_eq!(request.status(), FriendshipStatus::Requested);
                (request.from_nickname, request.to_nickname)
            })
            .collect();
        requests.sort();
        requests
    }

    /// Everything each of `people` can read: friends, incoming and outgoing requests.
    pub async fn snapshot(&self, people: &[&Person]) -> Vec<View> {
        let mut views = Vec::new();
        for person in people {
            views.push(View {
                friends: self.friends(person).await,
                incoming: self.requests(person, RequestDirection::Incoming).await,
                outgoing: self.requests(person, RequestDirection::Outgoing).await,
            });
        }
        views
    }

    /// The ids among `others` that `user` is not friends with.
    pub async fn not_friends(&self, user: &Person, others: &[&Person]) -> Vec<String> {
        self.client
            .clone()
            .check_friendship(testing::as_user(
                user.id(),
                CheckFriendshipRequest {
                    user_id: user.id(),
                    other_user_ids: others.iter().map(|p| p.id()).collect(),
                },
            ))
            .await
            .expect("CheckFriendship")
            .into_inner()
            .not_friends
    }

    /// Number of friendship rows between `a` and `b` in the database.
    pub async fn rows_between(&self, a: &Person, b: &Person) -> i64 {
        sqlx::query_scalar(
            "SELECT count(*) FROM friendships WHERE (user_id = $1 AND friend_id = $2) \
             OR (user_id = $2 AND friend_id = $1)",
        )
        .bind(a.id.as_uuid())
        .bind(b.id.as_uuid())
        .fetch_one(self.database.pool())
        .await
        .expect("counting friendship rows")
    }

    pub async fn stop(self) {
        self.shutdown.trigger();
        let result = tokio::time::timeout(Duration::from_secs(30), self.server)
            .await
            .expect("service stops within 30s after shutdown")
            .expect("service task did not panic");
        result.expect("service ran without error");
    }
}

/// What one person sees.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct View {
    pub friends: Vec<(String, String)>,
    pub incoming: Vec<(String, String)>,
    pub outgoing: Vec<(String, String)>,
}

pub fn friend(person: &Person) -> (String, String) {
    (person.id(), person.nickname.clone())
}

pub fn request(from: &Person, to: &Person) -> (String, String) {
    (from.nickname.clone(), to.nickname.clone())
}

pub fn assert_code(result: Result<impl std::fmt::Debug, tonic::Status>, code: tonic::Code) {
    match result {
        Err(status) => assert_eq!(status.code(), code, "unexpected status: {status:?}"),
        Ok(value) => panic!("expected {code:?}, got success {value:?}"),
    }
}
