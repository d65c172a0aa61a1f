//! Service tests: the users service started through `run` on a fresh PostgreSQL database, a
//! unique Redis key prefix, the shared Kafka broker and a unique consumer group; gRPC on
//! port 0, called through the generated client. Profiles are created the real way: a
//! `UserRegistered` event published to `messenger.auth.events`.
//!
//! Every test's consumer reads the whole topic (other tests' events included), so each test
//! uses nicknames under its own random tag.

use std::time::Duration;

use messenger_common::Shutdown;
use messenger_common::events::{EventPublisher, KafkaPublisher, Payload, new_event};
use messenger_common::testing::{
    self, TestDatabase, kafka_brokers, redis_url, unique_name, unique_prefix,
};
use messenger_proto::topics::AUTH_EVENTS;
use messenger_proto::v1::users_service_client::UsersServiceClient;
use messenger_proto::v1::{
    Event, FriendRequestSent, GetUserProfileByNicknameRequest, GetUserProfileRequest,
    GetUserProfilesRequest, SearchUsersRequest, UpdateUserProfileRequest, UserProfile,
    UserRegistered,
};
use messenger_users::{Config, Listeners, StorageConfig, UsersError};
use rdkafka::producer::Producer as _;
use redis::AsyncCommands;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tonic::Code;
use tonic::transport::Channel;
use uuid::Uuid;

/// Upper bound for an event to travel through Kafka and the consumer.
const EVENT_WAIT: Duration = Duration::from_secs(60);

struct TestService {
    client: UsersServiceClient<Channel>,
    grpc_address: std::net::SocketAddr,
    admin_address: std::net::SocketAddr,
    publisher: KafkaPublisher,
    brokers: String,
    redis_key_prefix: String,
    shutdown: Shutdown,
    task: JoinHandle<Result<(), UsersError>>,
    _database: TestDatabase,
}

impl TestService {
    async fn start() -> Self {
        Self::start_with(redis_url(), kafka_brokers()).await
    }

    async fn start_with_redis(redis_url: String) -> Self {
        Self::start_with(redis_url, kafka_brokers()).await
    }

    async fn start_with(redis_url: String, brokers: String) -> Self {
        let database = TestDatabase::create().await;
        let redis_key_prefix = unique_prefix();
        let config = Config::new(
            StorageConfig {
                database_url: database.url().into(),
                redis_url: redis_url.into(),
                redis_key_prefix: redis_key_prefix.clone(),
                kafka: brokers.clone().into(),
                kafka_consumer_group: unique_name("users-test"),
            },
            testing::test_key(),
        );
        let grpc = TcpListener::bind("127.0.0.1:0").await.expect("bind gRPC");
        let admin = TcpListener::bind("127.0.0.1:0").await.expect("bind admin");
        let address = grpc.local_addr().expect("gRPC address");
        let admin_address = admin.local_addr().expect("admin address");
        let shutdown = Shutdown::new();
        let task = tokio::spawn(messenger_users::run(
            config,
            Listeners { grpc, admin },
            shutdown.clone(),
        ));
        let channel = Channel::from_shared(format!("http://{address}"))
            .expect("endpoint")
            .timeout(Duration::from_secs(10))
            .connect_lazy();
        // The service creates the topic too, but concurrently: publish only once it exists.
        messenger_common::kafka::ensure_topics(&brokers, &[AUTH_EVENTS])
            .await
            .unwrap_or_else(|e| {
                panic!("TEST_KAFKA_BROKERS {brokers}: cannot create {AUTH_EVENTS}: {e}")
            });
        let publisher = KafkaPublisher::connect(&brokers).unwrap_or_else(|e| {
            panic!("TEST_KAFKA_BROKERS {brokers}: cannot create a producer: {e}")
        });
        Self {
            client: UsersServiceClient::new(channel),
            grpc_address: address,
            admin_address,
            publisher,
            brokers,
            redis_key_prefix,
            shutdown,
            task,
            _database: database,
        }
    }

    /// Stops the service and checks it shut down cleanly.
    async fn stop(self) {
        self.shutdown.trigger();
        let result = tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("the service stops within 30s of shutdown")
            .expect("the service task did not panic");
        result.expect("the service ran and stopped without error");
    }

    fn grpc_address(&self) -> std::net::SocketAddr {
        self.grpc_address
    }

    fn client(&self) -> UsersServiceClient<Channel> {
        self.client.clone()
    }

    async fn publish(&self, key: &str, event: &Event) {
        self.publisher
            .publish(AUTH_EVENTS, key, event)
            .await
            .unwrap_or_else(|e| panic!("publishing to {AUTH_EVENTS} on {}: {e}", self.brokers));
    }

    /// Publishes a `UserRegistered` event keyed by the user id; returns the event.
    async fn publish_registration(&self, user_id: Uuid, nickname: &str) -> Event {
        let event = registration_event(user_id, nickname);
        self.publish(&user_id.to_string(), &event).await;
        event
    }

    /// The profile of `user_id`, waiting (bounded) for the consumer to create it.
    async fn wait_for_profile(&self, user_id: Uuid) -> UserProfile {
        let deadline = tokio::time::Instant::now() + EVENT_WAIT;
        loop {
            match self.get(user_id).await {
                Ok(profile) => return profile,
                Err(status) if status.code() == Code::NotFound => {}
                Err(status) => panic!("GetUserProfile({user_id}) failed: {status:?}"),
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no profile for {user_id} within {EVENT_WAIT:?}: the event was not consumed"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Registers a user through Kafka and returns the created profile.
    async fn register(&self, nickname: &str) -> UserProfile {
        let user_id = Uuid::now_v7();
        self.publish_registration(user_id, nickname).await;
        self.wait_for_profile(user_id).await
    }

    async fn get(&self, user_id: impl ToString) -> Result<UserProfile, tonic::Status> {
        self.client()
            .get_user_profile(testing::as_service(
                "gateway",
                GetUserProfileRequest {
                    user_id: user_id.to_string(),
                },
            ))
            .await
            .map(tonic::Response::into_inner)
    }

    async fn get_by_nickname(&self, nickname: &str) -> Result<UserProfile, tonic::Status> {
        self.client()
            .get_user_profile_by_nickname(testing::as_service(
                "gateway",
                GetUserProfileByNicknameRequest {
                    nickname: nickname.to_owned(),
                },
            ))
            .await
            .map(tonic::Response::into_inner)
    }

    async fn update(
        &self,
        request: UpdateUserProfileRequest,
    ) -> Result<UserProfile, tonic::Status> {
        // Signed for the user it edits (a random one when the id is malformed).
        let signer =
            uuid::Uuid::parse_str(&request.user_id).unwrap_or_else(|_| uuid::Uuid::now_v7());
        self.client()
            .update_user_profile(testing::as_user(signer.to_string(), request))
            .await
            .map(tonic::Response::into_inner)
    }

    async fn search(
        &self,
        prefix: &str,
        page_size: u32,
        page_token: &str,
    ) -> Result<(Vec<UserProfile>, String), tonic::Status> {
        let response = self
            .client()
            .search_users(testing::as_service(
                "gateway",
                SearchUsersRequest {
                    prefix: prefix.to_owned(),
                    page_size,
                    page_token: page_token.to_owned(),
                },
            ))
            .await?
            .into_inner();
        Ok((response.users, response.next_page_token))
    }

    /// Every nickname matching `prefix`, page by page.
    async fn search_all(&self, prefix: &str, page_size: u32) -> Vec<String> {
        let mut nicknames = Vec::new();
        let mut token = String::new();
        for _ in 0..1000 {
            let (users, next) = self
                .search(prefix, page_size, &token)
                .await
                .expect("search");
            assert!(
                users.len() <= page_size as usize,
                "page larger than page_size"
            );
            nicknames.extend(users.into_iter().map(|u| u.nickname));
            if next.is_empty() {
                return nicknames;
            }
            token = next;
        }
        panic!("search for {prefix:?} did not end after 1000 pages");
    }

    /// `GET path` on the admin listener: (status code, body).
    async fn admin_get(&self, path: &str) -> (u16, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(self.admin_address)
            .await
            .expect("connect to the admin listener");
        let request = format!("GET {path} HTTP/1.1\r\nHost: users\r\nConnection: close\r\n\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .expect("send request");
        let mut response = String::new();
        stream
            .read_to_string(&mut response)
            .await
            .expect("read response");
        let status = response
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"));
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, body)| body.to_owned())
            .unwrap_or_default();
        (status, body)
    }

    async fn redis(&self) -> redis::aio::ConnectionManager {
        let url = redis_url();
        messenger_common::redis::connect(&url)
            .await
            .unwrap_or_else(|e| panic!("TEST_REDIS_URL {url}: {e}"))
    }
}

fn registration_event(user_id: Uuid, nickname: &str) -> Event {
    new_event(Payload::UserRegistered(UserRegistered {
        user_id: user_id.to_string(),
        nickname: nickname.to_owned(),
    }))
}

/// A short random tag so this test's nicknames are its own.
fn tag() -> String {
    format!("t{}", &Uuid::new_v4().simple().to_string()[..8])
}

fn last_hex(user_id: &str, digits: usize) -> String {
    let hex = Uuid::parse_str(user_id).unwrap().simple().to_string();
    hex[hex.len() - digits..].to_owned()
}

fn no_change() -> UpdateUserProfileRequest {
    UpdateUserProfileRequest::default()
}

#[tokio::test]
async fn a_published_registration_creates_the_profile() {
    let service = TestService::start().await;
    let nickname = format!("{}-Alice", tag());
    let user_id = Uuid::now_v7();
    service.publish_registration(user_id, &nickname).await;
    let profile = service.wait_for_profile(user_id).await;
    assert_eq!(profile.user_id, user_id.to_string());
    assert_eq!(profile.nickname, nickname.to_lowercase());
    assert_eq!(
        (profile.bio.as_str(), profile.avatar_url.as_str()),
        ("", "")
    );
    assert!(profile.created_at.is_some() && profile.updated_at.is_some());
    service.stop().await;
}

#[tokio::test]
async fn a_replayed_event_changes_nothing() {
    let service = TestService::start().await;
    let tag = tag();
    let user_id = Uuid::now_v7();
    let event = service
        .publish_registration(user_id, &format!("{tag}-bob"))
        .await;
    service.wait_for_profile(user_id).await;
    let edited = service
        .update(UpdateUserProfileRequest {
            user_id: user_id.to_string(),
            bio: Some("edited after registration".into()),
            ..no_change()
        })
        .await
        .expect("update");

    // The same event again, then a second event for the same user, then a marker on the
    // same key (same partition): once the marker's profile exists, both were consumed.
    service.publish(&user_id.to_string(), &event).await;
    let second = registration_event(user_id, &format!("{tag}-bobby"));
    service.publish(&user_id.to_string(), &second).await;
    let marker_id = Uuid::now_v7();
    let marker = registration_event(marker_id, &format!("{tag}-marker"));
    service.publish(&user_id.to_string(), &marker).await;
    service.wait_for_profile(marker_id).await;

    assert_eq!(
        service.get(user_id).await.expect("profile"),
        edited,
        "unchanged"
    );
    let (found, _) = service.search(&tag, 100, "").await.expect("search");
    let nicknames: Vec<_> = found.iter().map(|p| p.nickname.as_str()).collect();
    assert_eq!(
        nicknames,
        [format!("{tag}-bob"), format!("{tag}-marker")],
        "one profile each"
    );
    service.stop().await;
}

#[tokio::test]
async fn a_taken_nickname_is_resolved_with_the_user_id_suffix() {
    let service = TestService::start().await;
    let tag = tag();
    let first = service.register(&format!("{tag}-carol")).await;

    // Same nickname in another case: gets `-` + the last 6 hex digits of its user id.
    let second = service
        .register(&format!("{}-CAROL", tag.to_uppercase()))
        .await;
    assert_eq!(
        second.nickname,
        format!("{tag}-carol-{}", last_hex(&second.user_id, 6))
    );
    assert_eq!(
        service.get(first.user_id.clone()).await.unwrap(),
        first,
        "first keeps its nickname"
    );

    // When the 6-digit form is taken as well, the suffix grows to 7 digits.
    let third_id = Uuid::now_v7();
    let six = format!("{tag}-dan-{}", last_hex(&third_id.to_string(), 6));
    service.register(&format!("{tag}-dan")).await;
    service.register(&six).await;
    service
        .publish_registration(third_id, &format!("{tag}-dan"))
        .await;
    let third = service.wait_for_profile(third_id).await;
    assert_eq!(
        third.nickname,
        format!("{tag}-dan-{}", last_hex(&third.user_id, 7))
    );
    service.stop().await;
}

#[tokio::test]
async fn invalid_and_undecodable_events_are_skipped() {
    let service = TestService::start().await;
    let tag = tag();
    let key = Uuid::now_v7().to_string();
    let invalid_id = Uuid::now_v7();
    let invalid = registration_event(invalid_id, "x!"); // too short, bad character
    service.publish(&key, &invalid).await;
    let bad_user_id = new_event(Payload::UserRegistered(UserRegistered {
        user_id: "not-a-uuid".into(),
        nickname: format!("{tag}-ghost"),
    }));
    service.publish(&key, &bad_user_id).await;
    let other_payload = new_event(Payload::FriendRequestSent(FriendRequestSent {
        from_user_id: Uuid::now_v7().to_string(),
        to_user_id: Uuid::now_v7().to_string(),
        ..Default::default()
    }));
    service.publish(&key, &other_payload).await;
    let producer = service.publisher.producer();
    producer
        .send(
            rdkafka::producer::FutureRecord::to(AUTH_EVENTS)
                .key(key.as_str())
                .payload(b"not a protobuf \xff".as_slice()),
            Duration::from_secs(5),
        )
        .await
        .expect("raw record published");

    // All on one key (one partition): the marker behind them proves they were passed.
    let marker_id = Uuid::now_v7();
    service
        .publish(
            &key,
            &registration_event(marker_id, &format!("{tag}-marker")),
        )
        .await;
    service.wait_for_profile(marker_id).await;
    assert_eq!(
        service.get(invalid_id).await.unwrap_err().code(),
        Code::NotFound
    );
    assert_eq!(
        service
            .get_by_nickname(&format!("{tag}-ghost"))
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    service.stop().await;
}

#[tokio::test]
async fn lookups_validate_ids_and_find_nicknames_case_insensitively() {
    let service = TestService::start().await;
    let tag = tag();
    let erin = service.register(&format!("{tag}-erin")).await;

    assert_eq!(
        service.get("not-a-uuid").await.unwrap_err().code(),
        Code::InvalidArgument
    );
    assert_eq!(
        service.get(Uuid::now_v7()).await.unwrap_err().code(),
        Code::NotFound
    );
    for spelling in [
        format!("{tag}-erin"),
        format!("{}-ERIN", tag.to_uppercase()),
        format!("{tag}-Erin"),
    ] {
        assert_eq!(
            service.get_by_nickname(&spelling).await.expect(&spelling),
            erin
        );
    }
    assert_eq!(
        service
            .get_by_nickname(&format!("{tag}-nobody"))
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    assert_eq!(
        service.get_by_nickname("a b").await.unwrap_err().code(),
        Code::InvalidArgument
    );
    service.stop().await;
}

#[tokio::test]
async fn profiles_are_looked_up_a_hundred_at_a_time() {
    let service = TestService::start().await;
    let tag = tag();
    let fay = service.register(&format!("{tag}-fay")).await;
    let gus = service.register(&format!("{tag}-gus")).await;
    let batch = |ids: Vec<String>| async {
        service
            .client()
            .get_user_profiles(testing::as_service(
                "friends",
                GetUserProfilesRequest { user_ids: ids },
            ))
            .await
            .map(tonic::Response::into_inner)
    };
    let mut found = batch(vec![
        gus.user_id.clone(),
        Uuid::now_v7().to_string(),
        fay.user_id.clone(),
        gus.user_id.clone(),
    ])
    .await
    .unwrap()
    .profiles;
    found.sort_by(|a, b| a.nickname.cmp(&b.nickname));
    assert_eq!(found, vec![fay, gus]);
    for bad in [
        vec!["not-a-uuid".to_owned()],
        (0..101).map(|_| Uuid::now_v7().to_string()).collect(),
    ] {
        let status = batch(bad).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(
            status.message().contains("user_ids"),
            "{}",
            status.message()
        );
    }
    service.stop().await;
}

#[tokio::test]
async fn updates_change_the_profile_and_validate_every_field() {
    let service = TestService::start().await;
    let tag = tag();
    let frank = service.register(&format!("{tag}-frank")).await;
    let grace = service.register(&format!("{tag}-grace")).await;

    let updated = service
        .update(UpdateUserProfileRequest {
            user_id: frank.user_id.clone(),
            nickname: Some(format!("{tag}-Franky")),
            bio: Some("Hello, I'm Frank.\nI like tests.".into()),
            avatar_url: Some("https://cdn.example.com/frank.png".into()),
        })
        .await
        .expect("valid update");
    assert_eq!(updated.nickname, format!("{tag}-franky"));
    assert_eq!(updated.bio, "Hello, I'm Frank.\nI like tests.");
    assert_eq!(updated.avatar_url, "https://cdn.example.com/frank.png");
    assert_eq!(updated.created_at, frank.created_at);
    assert_eq!(service.get(frank.user_id.clone()).await.unwrap(), updated);

    // Nothing set: the profile comes back unchanged.
    let same = service
        .update(UpdateUserProfileRequest {
            user_id: frank.user_id.clone(),
            ..no_change()
        })
        .await
        .unwrap();
    assert_eq!(same, updated);

    let refused: Vec<(UpdateUserProfileRequest, Code)> = vec![
        (
            UpdateUserProfileRequest {
                nickname: Some(format!("{tag}-GRACE")),
                ..no_change()
            },
            Code::AlreadyExists,
        ),
        (
            UpdateUserProfileRequest {
                nickname: Some("ab".into()),
                ..no_change()
            },
            Code::InvalidArgument,
        ),
        (
            UpdateUserProfileRequest {
                nickname: Some("no spaces".into()),
                ..no_change()
            },
            Code::InvalidArgument,
        ),
        (
            UpdateUserProfileRequest {
                nickname: Some("x".repeat(33)),
                ..no_change()
            },
            Code::InvalidArgument,
        ),
        (
            UpdateUserProfileRequest {
                bio: Some("b".repeat(501)),
                ..no_change()
            },
            Code::InvalidArgument,
        ),
        (
            UpdateUserProfileRequest {
                avatar_url: Some("ftp://example.com/a.png".into()),
                ..no_change()
            },
            Code::InvalidArgument,
        ),
        (
            UpdateUserProfileRequest {
                avatar_url: Some("not a url".into()),
                ..no_change()
            },
            Code::InvalidArgument,
        ),
        (
            UpdateUserProfileRequest {
                avatar_url: Some(format!("https://example.com/{}", "a".repeat(2048))),
                ..no_change()
            },
            Code::InvalidArgument,
        ),
        // One bad field refuses the whole update, the valid ones included.
        (
            UpdateUserProfileRequest {
                nickname: Some(format!("{tag}-new")),
                bio: Some("b".repeat(501)),
                ..no_change()
            },
            Code::InvalidArgument,
        ),
        (
            UpdateUserProfileRequest {
                bio: Some("fine".into()),
                avatar_url: Some("javascript:alert(1)".into()),
                ..no_change()
            },
            Code::InvalidArgument,
        ),
    ];
    for (request, code) in refused {
        let request = UpdateUserProfileRequest {
            user_id: frank.user_id.clone(),
            ..request
        };
        let status = service.update(request.clone()).await.unwrap_err();
        assert_eq!(status.code(), code, "{request:?}: {status:?}");
        assert_eq!(
            service.get(frank.user_id.clone()).await.unwrap(),
            updated,
            "{request:?} changed nothing"
        );
    }
    assert_eq!(service.get(grace.user_id.clone()).await.unwrap(), grace);

    // Empty strings clear bio and avatar.
    let cleared = service
        .update(UpdateUserProfileRequest {
            user_id: frank.user_id.clone(),
            bio: Some(String::new()),
            avatar_url: Some(String::new()),
            ..no_change()
        })
        .await
        .unwrap();
    assert_eq!(
        (cleared.bio.as_str(), cleared.avatar_url.as_str()),
        ("", "")
    );
    assert_eq!(cleared.nickname, updated.nickname);

    let unknown = service
        .update(UpdateUserProfileRequest {
            user_id: Uuid::now_v7().to_string(),
            bio: Some("hi".into()),
            ..no_change()
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
    let malformed = service
        .update(UpdateUserProfileRequest {
            user_id: "42".into(),
            bio: Some("hi".into()),
            ..no_change()
        })
        .await
        .unwrap_err();
    // "42" names nobody a caller can be signed for.
    assert_eq!(malformed.code(), Code::Unauthenticated);
    service.stop().await;
}

#[tokio::test]
async fn search_pages_through_every_match_exactly_once() {
    let service = TestService::start().await;
    let tag = tag();
    let mut expected: Vec<String> = (0..7).map(|i| format!("{tag}_m{i}")).collect();
    expected.push(format!("{tag}.dot"));
    expected.push(format!("{tag}-dash"));
    let mut ids = Vec::new();
    for nickname in &expected {
        let user_id = Uuid::now_v7();
        service.publish_registration(user_id, nickname).await;
        ids.push(user_id);
    }
    // Not matches: another tag, and a nickname where `_` would match as a LIKE wildcard.
    let other = service.register(&format!("{}-other", self::tag())).await;
    for user_id in ids {
        service.wait_for_profile(user_id).await;
    }
    expected.sort();

    for page_size in [1, 2, 4, 100] {
        assert_eq!(
            service.search_all(&tag.to_uppercase(), page_size).await,
            expected,
            "page size {page_size}"
        );
    }
    let (first_page, token) = service.search(&tag, 4, "").await.unwrap();
    assert_eq!(first_page.len(), 4);
    assert!(!token.is_empty());
    assert_eq!(
        service.search_all(&format!("{tag}_"), 3).await,
        expected[2..]
    );
    let (default_page, _) = service.search(&tag, 0, "").await.unwrap();
    assert_eq!(
        default_page.len(),
        expected.len(),
        "default page size is 20"
    );
    assert!(service.search_all(&format!("{tag}zz"), 10).await.is_empty());
    assert!(
        !service
            .search_all(&tag, 100)
            .await
            .contains(&other.nickname)
    );

    for (prefix, size, token, what) in [
        (tag.as_str(), 101, "", "page_size over 100"),
        ("", 10, "", "empty prefix"),
        ("a%", 10, "", "prefix with a character no nickname has"),
        (tag.as_str(), 10, "garbage", "malformed token"),
    ] {
        let status = service.search(prefix, size, token).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{what}");
    }
    // A token belongs to its own search.
    let other_prefix = service.search("zz", 10, &token).await.unwrap_err();
    assert_eq!(other_prefix.code(), Code::InvalidArgument);
    service.stop().await;
}

#[tokio::test]
async fn reads_after_an_update_show_the_new_data() {
    let service = TestService::start().await;
    let tag = tag();
    let old_nickname = format!("{tag}-heidi");
    let new_nickname = format!("{tag}-hedy");
    let heidi = service.register(&old_nickname).await;

    // Fill the cache on every read path and check it really is cached.
    assert_eq!(service.get(heidi.user_id.clone()).await.unwrap(), heidi);
    assert_eq!(service.get_by_nickname(&old_nickname).await.unwrap(), heidi);
    let (before, _) = service.search(&tag, 10, "").await.unwrap();
    assert_eq!(before, std::slice::from_ref(&heidi));
    let mut redis = service.redis().await;
    let profile_key = format!("{}profile:{}", service.redis_key_prefix, heidi.user_id);
    let nickname_key = format!("{}nickname:{old_nickname}", service.redis_key_prefix);
    assert!(
        redis.exists::<_, bool>(&profile_key).await.unwrap(),
        "profile cached"
    );
    assert!(
        redis.exists::<_, bool>(&nickname_key).await.unwrap(),
        "nickname cached"
    );

    let updated = service
        .update(UpdateUserProfileRequest {
            user_id: heidi.user_id.clone(),
            nickname: Some(new_nickname.clone()),
            bio: Some("new bio".into()),
            ..no_change()
        })
        .await
        .unwrap();
    assert_eq!(service.get(heidi.user_id.clone()).await.unwrap(), updated);
    assert_eq!(
        service.get_by_nickname(&new_nickname).await.unwrap(),
        updated
    );
    assert_eq!(
        service
            .get_by_nickname(&old_nickname)
            .await
            .unwrap_err()
            .code(),
        Code::NotFound,
        "the old nickname is free"
    );
    let (after, _) = service.search(&tag, 10, "").await.unwrap();
    assert_eq!(after, std::slice::from_ref(&updated));
    assert!(service.search_all(&old_nickname, 10).await.is_empty());

    // A bio-only update shows up in cached search pages too.
    let again = service
        .update(UpdateUserProfileRequest {
            user_id: heidi.user_id.clone(),
            bio: Some("newer bio".into()),
            ..no_change()
        })
        .await
        .unwrap();
    assert_eq!(
        service.search(&tag, 10, "").await.unwrap().0,
        std::slice::from_ref(&again)
    );
    assert_eq!(service.get_by_nickname(&new_nickname).await.unwrap(), again);

    // Someone else may now take the old nickname, and lookups find them, not Heidi.
    let ivan = service.register(&format!("{tag}-ivan")).await;
    let taken_over = service
        .update(UpdateUserProfileRequest {
            user_id: ivan.user_id.clone(),
            nickname: Some(old_nickname.clone()),
            ..no_change()
        })
        .await
        .unwrap();
    assert_eq!(
        service.get_by_nickname(&old_nickname).await.unwrap(),
        taken_over
    );
    service.stop().await;
}

#[tokio::test]
async fn the_service_answers_from_the_database_while_redis_is_down() {
    // Nothing listens on port 1: every cache call fails, every RPC must still succeed.
    let service = TestService::start_with_redis("redis://127.0.0.1:1".into()).await;
    let tag = tag();
    let judy = service.register(&format!("{tag}-judy")).await;
    assert_eq!(service.get(judy.user_id.clone()).await.unwrap(), judy);
    assert_eq!(
        service
            .get_by_nickname(&format!("{tag}-judy"))
            .await
            .unwrap(),
        judy
    );
    let updated = service
        .update(UpdateUserProfileRequest {
            user_id: judy.user_id.clone(),
            bio: Some("still works".into()),
            ..no_change()
        })
        .await
        .unwrap();
    assert_eq!(updated.bio, "still works");
    assert_eq!(service.search(&tag, 10, "").await.unwrap().0, [updated]);
    service.stop().await;
}

#[tokio::test]
async fn racing_renames_to_one_nickname_give_one_already_exists() {
    let service = TestService::start().await;
    let tag = tag();
    let a = service.register(&format!("{tag}-racer-a")).await;
    let b = service.register(&format!("{tag}-racer-b")).await;
    let wanted = format!("{tag}-winner");
    let rename = |user_id: String| {
        service.update(UpdateUserProfileRequest {
            user_id,
            nickname: Some(wanted.clone()),
            ..no_change()
        })
    };
    let (ra, rb) = tokio::join!(rename(a.user_id.clone()), rename(b.user_id.clone()));
    let (winner, loser_status, loser) = match (ra, rb) {
        (Ok(winner), Err(status)) => (winner, status, &b),
        (Err(status), Ok(winner)) => (winner, status, &a),
        other => panic!("expected exactly one rename to succeed: {other:?}"),
    };
    assert_eq!(loser_status.code(), Code::AlreadyExists, "{loser_status:?}");
    assert_eq!(service.get_by_nickname(&wanted).await.unwrap(), winner);
    assert_eq!(
        service.get(loser.user_id.clone()).await.unwrap(),
        *loser,
        "loser unchanged"
    );
    service.stop().await;
}

#[tokio::test]
async fn admin_endpoints_report_health_readiness_and_rpc_metrics() {
    let service = TestService::start().await;
    assert_eq!(
        service.get("not-a-uuid").await.unwrap_err().code(),
        Code::InvalidArgument
    );
    assert_eq!(
        service.get(Uuid::now_v7()).await.unwrap_err().code(),
        Code::NotFound
    );
    let kim = service.register(&format!("{}-kim", tag())).await;
    // The second read is served by the cache.
    service.get(kim.user_id.clone()).await.unwrap();
    service.get(kim.user_id.clone()).await.unwrap();
    let (status, _) = service.admin_get("/healthz").await;
    assert_eq!(status, 200);
    let (status, body) = service.admin_get("/readyz").await;
    assert_eq!(status, 200, "{body}");
    let (status, metrics) = service.admin_get("/metrics").await;
    assert_eq!(status, 200);
    assert!(
        metrics.contains("GetUserProfile"),
        "per-RPC metrics missing:\n{metrics}"
    );
    assert!(
        metrics.contains("NotFound") && metrics.contains("InvalidArgument"),
        "codes missing:\n{metrics}"
    );
    assert!(
        metrics.contains(r#"users_cache_lookups_total{kind="profile",result="hit"}"#),
        "cache hits not counted:\n{metrics}"
    );
    service.stop().await;
}

#[tokio::test]
async fn grpc_health_reports_the_users_service_serving() {
    let service = TestService::start().await;
    let channel = Channel::from_shared(format!("http://{}", service.grpc_address()))
        .unwrap()
        .connect_lazy();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let response = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "messenger.v1.UsersService".into(),
        })
        .await
        .expect("health check")
        .into_inner();
    assert_eq!(
        response.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    service.stop().await;
}

#[tokio::test]
async fn on_a_fresh_broker_the_service_creates_its_topic_and_consumes_it() {
    let broker =
        messenger_common::testing::TansuBroker::start(messenger_common::testing::free_port());
    let brokers = broker.brokers();
    let producer = messenger_common::kafka::producer(&brokers).expect("producer");
    let topic_exists = || {
        let producer = producer.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                producer
                    .client()
                    .fetch_metadata(Some(AUTH_EVENTS), Duration::from_secs(1))
                    .is_ok_and(|metadata| {
                        metadata
                            .topics()
                            .iter()
                            .any(|t| t.error().is_none() && !t.partitions().is_empty())
                    })
            })
            .await
            .unwrap_or(false)
        }
    };
    assert!(!topic_exists().await, "a fresh broker has no {AUTH_EVENTS}");

    // Not TestService::start_with: that creates the topic itself before publishing.
    let database = TestDatabase::create().await;
    let config = Config::new(
        StorageConfig {
            database_url: database.url().into(),
            redis_url: redis_url().into(),
            redis_key_prefix: unique_prefix(),
            kafka: brokers.clone().into(),
            kafka_consumer_group: unique_name("users-test"),
        },
        testing::test_key(),
    );
    let grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = grpc.local_addr().unwrap();
    let shutdown = Shutdown::new();
    let task = tokio::spawn(messenger_users::run(
        config,
        Listeners { grpc, admin },
        shutdown.clone(),
    ));
    assert!(
        messenger_common::testing::wait_until(Duration::from_secs(30), topic_exists).await,
        "the service did not create {AUTH_EVENTS} within 30s"
    );

    let user_id = Uuid::now_v7();
    let event = registration_event(user_id, &format!("{}-fresh", tag()));
    KafkaPublisher::new(producer.clone())
        .publish(AUTH_EVENTS, &user_id.to_string(), &event)
        .await
        .expect("publish to the private broker");
    let channel = Channel::from_shared(format!("http://{address}"))
        .unwrap()
        .connect_lazy();
    let mut client = UsersServiceClient::new(channel);
    let found = messenger_common::testing::wait_until(EVENT_WAIT, || {
        let mut client = client.clone();
        async move {
            client
                .get_user_profile(testing::as_service(
                    "gateway",
                    GetUserProfileRequest {
                        user_id: user_id.to_string(),
                    },
                ))
                .await
                .is_ok()
        }
    })
    .await;
    assert!(found, "no profile within {EVENT_WAIT:?}");
    let profile = client
        .get_user_profile(testing::as_service(
            "gateway",
            GetUserProfileRequest {
                user_id: user_id.to_string(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(profile.nickname.ends_with("-fresh"));

    shutdown.trigger();
    tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .expect("stops")
        .unwrap()
        .expect("stops cleanly");
}

/// Internal trust: a profile is edited only by a call signed for its owner; lookups
/// need a valid assertion from anyone; refused calls change nothing.
#[tokio::test]
async fn only_the_owner_edits_a_profile_and_every_call_needs_an_assertion() {
    let service = TestService::start().await;
    let tag = tag();
    let alice = service.register(&format!("{tag}-alice")).await;
    let bob = service.register(&format!("{tag}-bob")).await;
    let deface = || UpdateUserProfileRequest {
        user_id: alice.user_id.clone(),
        bio: Some("hacked".into()),
        ..no_change()
    };
    let mut client = service.client();
    let mut expired = tonic::Request::new(deface());
    expired.metadata_mut().insert(
        messenger_common::identity::IDENTITY_METADATA,
        testing::expired_assertion(
            &testing::test_key(),
            &messenger_common::identity::Caller::User(Uuid::parse_str(&alice.user_id).unwrap()),
        )
        .parse()
        .unwrap(),
    );
    let attempts = [
        (
            "another user",
            client
                .update_user_profile(testing::as_user(&bob.user_id, deface()))
                .await,
        ),
        (
            "a service",
            client
                .update_user_profile(testing::as_service("gateway", deface()))
                .await,
        ),
        ("unsigned", client.update_user_profile(deface()).await),
        ("expired", client.update_user_profile(expired).await),
    ];
    for (what, result) in attempts {
        let status = result.expect_err(what);
        assert_eq!(status.code(), Code::Unauthenticated, "{what}: {status:?}");
    }
    let unsigned_lookup = client
        .get_user_profile(GetUserProfileRequest {
            user_id: alice.user_id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(unsigned_lookup.code(), Code::Unauthenticated);

    // Any verified caller may look profiles up: the gateway, or another user.
    let seen_by_bob = client
        .get_user_profile(testing::as_user(
            &bob.user_id,
            GetUserProfileRequest {
                user_id: alice.user_id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(seen_by_bob.bio, "", "unchanged");
    assert_eq!(service.get(&alice.user_id).await.unwrap(), alice);
    service.stop().await;
}
