//! Two people register, become friends, open a chat and read each other's messages —
//! every hop through the real services and the real broker.

use std::collections::HashMap;
use std::time::Duration;

use messenger_common::grpc::Listeners;
use messenger_common::shutdown::Shutdown;
use messenger_common::testing::{self, TestDatabase};
use messenger_proto::v1::auth_service_client::AuthServiceClient;
use messenger_proto::v1::chat_service_client::ChatServiceClient;
use messenger_proto::v1::friends_service_client::FriendsServiceClient;
use messenger_proto::v1::users_service_client::UsersServiceClient;
use messenger_proto::v1::{
    AcceptFriendRequestRequest, CreateChatRequest, FriendshipStatus, GetChatHistoryRequest,
    GetFriendsListRequest, GetUserChatsRequest, GetUserProfileByNicknameRequest,
    GetUserProfileRequest, LoginRequest, RegisterRequest, SendFriendRequestRequest,
    SendMessageRequest, ValidateTokenRequest,
};
use tokio::net::TcpListener;
use tonic::Code;
use tonic::transport::Channel;

/// Profiles are created asynchronously from `UserRegistered`; this bounds the wait.
const EVENT_WAIT: Duration = Duration::from_secs(30);

async fn bind() -> Listeners {
    Listeners {
        grpc: TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind gRPC port"),
        admin: TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind admin port"),
    }
}

/// Runs one service in the background; a service that stops with an error fails the test.
fn spawn_service<E: std::fmt::Display>(
    name: &'static str,
    service: impl Future<Output = Result<(), E>> + Send + 'static,
) {
    tokio::spawn(async move {
        if let Err(error) = service.await {
            panic!("{name} service failed: {error}");
        }
    });
}

fn url(listener: &TcpListener) -> String {
    format!("http://{}", listener.local_addr().expect("local addr"))
}

fn lookup(vars: HashMap<&'static str, String>) -> impl Fn(&str) -> Option<String> {
    move |name| vars.get(name).cloned()
}

async fn channel(url: &str) -> Channel {
    Channel::from_shared(url.to_owned())
        .expect("valid url")
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .unwrap_or_else(|error| panic!("cannot connect to {url}: {error}"))
}

/// The four services, each on its own fresh database and Redis key prefix, wired to each
/// other by URL exactly as in a deployment.
struct Platform {
    auth: AuthServiceClient<Channel>,
    users: UsersServiceClient<Channel>,
    friends: FriendsServiceClient<Channel>,
    chat: ChatServiceClient<Channel>,
    shutdown: Shutdown,
    _databases: Vec<TestDatabase>,
}

impl Platform {
    async fn start() -> Self {
        let shutdown = Shutdown::new();
        let redis = testing::redis_url();
        let kafka = testing::kafka_brokers();
        let prefix = testing::unique_prefix();
        let (auth_db, users_db, friends_db) = (
            TestDatabase::create().await,
            TestDatabase::create().await,
            TestDatabase::create().await,
        );
        let (auth_ports, users_ports, friends_ports, chat_ports) =
            (bind().await, bind().await, bind().await, bind().await);
        let users_url = url(&users_ports.grpc);
        let friends_url = url(&friends_ports.grpc);
        let urls = [
            url(&auth_ports.grpc),
            users_url.clone(),
            friends_url.clone(),
            url(&chat_ports.grpc),
        ];

        let auth_config = messenger_auth::Config::from_lookup(lookup(HashMap::from([
            ("DATABASE_URL", auth_db.url().to_owned()),
            ("REDIS_URL", redis.clone()),
            ("KAFKA_BROKERS", kafka.clone()),
            ("AUTH_REDIS_PREFIX", format!("{prefix}:auth")),
        ])))
        .expect("auth config");
        let users_config = messenger_users::Config::from_lookup(lookup(HashMap::from([
            ("DATABASE_URL", users_db.url().to_owned()),
            ("REDIS_URL", redis.clone()),
            ("KAFKA_BROKERS", kafka.clone()),
            ("USERS_REDIS_PREFIX", format!("{prefix}:users")),
            ("USERS_CONSUMER_GROUP", format!("{prefix}-users")),
        ])))
        .expect("users config");
        let friends_config = messenger_friends::Config::from_lookup(lookup(HashMap::from([
            ("DATABASE_URL", friends_db.url().to_owned()),
            ("REDIS_URL", redis.clone()),
            ("KAFKA_BROKERS", kafka.clone()),
            ("USERS_URL", users_url),
            ("FRIENDS_REDIS_PREFIX", format!("{prefix}:friends")),
        ])))
        .expect("friends config");
        let mut chat_vars = HashMap::from([
            ("REDIS_URL", redis.clone()),
            ("KAFKA_BROKERS", kafka.clone()),
            ("FRIENDS_URL", friends_url),
            ("CHAT_REDIS_PREFIX", format!("{prefix}:chat")),
            ("CHAT_STORE", "memory".to_owned()),
        ]);
        if let Ok(mongo) = std::env::var("TEST_MONGODB_URI") {
            chat_vars.insert("CHAT_STORE", "mongodb".to_owned());
            chat_vars.insert("MONGODB_URI", mongo);
            chat_vars.insert("CHAT_MONGODB_DATABASE", prefix.replace([':', '-'], "_"));
        }
        let chat_config =
            messenger_chat::Config::from_lookup(lookup(chat_vars)).expect("chat config");

        spawn_service(
            "auth",
            messenger_auth::run(auth_config, auth_ports, shutdown.clone()),
        );
        spawn_service(
            "users",
            messenger_users::run(users_config, users_ports, shutdown.clone()),
        );
        spawn_service(
            "friends",
            messenger_friends::run(friends_config, friends_ports, shutdown.clone()),
        );
        spawn_service(
            "chat",
            messenger_chat::run(chat_config, chat_ports, shutdown.clone()),
        );

        Self {
            auth: AuthServiceClient::new(channel(&urls[0]).await),
            users: UsersServiceClient::new(channel(&urls[1]).await),
            friends: FriendsServiceClient::new(channel(&urls[2]).await),
            chat: ChatServiceClient::new(channel(&urls[3]).await),
            shutdown,
            _databases: vec![auth_db, users_db, friends_db],
        }
    }

    /// Registers through auth, logs in, and waits until the users service has created the
    /// profile from the `UserRegistered` event it consumed from Kafka.
    async fn register(&mut self, nickname: &str) -> (String, String) {
        let email = format!("{nickname}@example.org");
        let password = "correct horse battery staple".to_owned();
        let user_id = self
            .auth
            .register(RegisterRequest {
                email: email.clone(),
                password: password.clone(),
                nickname: nickname.to_owned(),
            })
            .await
            .expect("register")
            .into_inner()
            .user_id;
        let token = self
            .auth
            .login(LoginRequest { email, password })
            .await
            .expect("login")
            .into_inner()
            .access_token;

        let users = self.users.clone();
        let id = user_id.clone();
        let appeared = testing::wait_until(EVENT_WAIT, move || {
            let mut users = users.clone();
            let id = id.clone();
            async move {
                users
                    .get_user_profile(GetUserProfileRequest { user_id: id })
                    .await
                    .is_ok()
            }
        })
        .await;
        assert!(
            appeared,
            "no profile for {nickname} within {EVENT_WAIT:?}: UserRegistered did not travel auth → Kafka → users"
        );
        (user_id, token)
    }
}

impl Drop for Platform {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_people_register_befriend_and_chat() {
    let mut platform = Platform::start().await;
    let tag = testing::unique_prefix().replace(':', "").to_lowercase();
    let tag: String = tag
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(10)
        .collect();
    let (alice_nick, bob_nick) = (format!("alice{tag}"), format!("bob{tag}"));

    let (alice, alice_token) = platform.register(&alice_nick).await;
    let (bob, _bob_token) = platform.register(&bob_nick).await;

    // The token the gateway would receive resolves to Alice.
    let validated = platform
        .auth
        .validate_token(ValidateTokenRequest {
            access_token: alice_token,
        })
        .await
        .expect("validate token")
        .into_inner();
    assert_eq!(validated.user_id, alice);

    // The profile created from the event is found by nickname, case-insensitively.
    let bob_profile = platform
        .users
        .get_user_profile_by_nickname(GetUserProfileByNicknameRequest {
            nickname: bob_nick.to_uppercase(),
        })
        .await
        .expect("bob's profile by nickname")
        .into_inner();
    assert_eq!(bob_profile.user_id, bob);

    // Strangers cannot open a chat.
    let refused = platform
        .chat
        .create_chat(CreateChatRequest {
            creator_id: alice.clone(),
            participant_ids: vec![bob.clone()],
        })
        .await
        .expect_err("a chat with a non-friend must be refused");
    assert_eq!(refused.code(), Code::PermissionDenied);

    // Alice asks Bob by nickname (resolved through users); Bob accepts.
    let sent = platform
        .friends
        .send_friend_request(SendFriendRequestRequest {
            user_id: alice.clone(),
            nickname: bob_nick.clone(),
        })
        .await
        .expect("friend request")
        .into_inner();
    assert_eq!(sent.status, FriendshipStatus::Requested as i32);
    platform
        .friends
        .accept_friend_request(AcceptFriendRequestRequest {
            user_id: bob.clone(),
            nickname: alice_nick.clone(),
        })
        .await
        .expect("accept");
    for (user, friend) in [(&alice, &bob), (&bob, &alice)] {
        let friends = platform
            .friends
            .get_friends_list(GetFriendsListRequest {
                user_id: user.clone(),
            })
            .await
            .expect("friends list")
            .into_inner()
            .friends;
        assert_eq!(
            friends.iter().map(|f| &f.user_id).collect::<Vec<_>>(),
            vec![friend],
            "friendship must be symmetric"
        );
    }

    // Now Alice can open the chat, and both write.
    let chat = platform
        .chat
        .create_chat(CreateChatRequest {
            creator_id: alice.clone(),
            participant_ids: vec![bob.clone()],
        })
        .await
        .expect("create chat with a friend")
        .into_inner();
    for (author, content) in [
        (&alice, "hi Bob"),
        (&bob, "hello Alice"),
        (&alice, "lunch?"),
    ] {
        platform
            .chat
            .send_message(SendMessageRequest {
                chat_id: chat.chat_id.clone(),
                author_id: author.clone(),
                content: content.to_owned(),
                client_message_id: String::new(),
            })
            .await
            .expect("send message");
    }

    // Bob reads the history newest first and sees the chat at the top of his list.
    let history = platform
        .chat
        .get_chat_history(GetChatHistoryRequest {
            chat_id: chat.chat_id.clone(),
            reader_id: bob.clone(),
            before: String::new(),
            limit: 10,
        })
        .await
        .expect("history")
        .into_inner()
        .messages;
    let read: Vec<(&str, &str)> = history
        .iter()
        .map(|m| (m.author_id.as_str(), m.content.as_str()))
        .collect();
    assert_eq!(
        read,
        vec![
            (alice.as_str(), "lunch?"),
            (bob.as_str(), "hello Alice"),
            (alice.as_str(), "hi Bob"),
        ]
    );
    let bobs_chats = platform
        .chat
        .get_user_chats(GetUserChatsRequest {
            user_id: bob.clone(),
        })
        .await
        .expect("bob's chats")
        .into_inner()
        .chats;
    assert_eq!(bobs_chats.len(), 1);
    assert_eq!(bobs_chats[0].chat_id, chat.chat_id);
    assert_eq!(
        bobs_chats[0]
            .last_message
            .as_ref()
            .map(|m| m.content.as_str()),
        Some("lunch?")
    );
}
