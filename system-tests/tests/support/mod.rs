//! What the system tests share: gRPC clients of the four services and the walkthrough
//! scenario, run against in-process servers (`walkthrough.rs`) and against the real
//! binaries as separate processes (`processes.rs`).

use std::time::Duration;

use messenger_common::testing::{self, SignedAs, as_user};
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
use tonic::Code;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// A channel whose calls are signed as the gateway signs its own (`as_user` overrides
/// that for calls acting for a user).
type Signed = InterceptedService<Channel, SignedAs>;

/// Profiles are created asynchronously from `UserRegistered`; this bounds the wait.
const EVENT_WAIT: Duration = Duration::from_secs(30);

/// The password every walkthrough user registers with.
pub const PASSWORD: &str = "correct horse battery staple";

/// gRPC URLs of the four services.
pub struct Urls {
    pub auth: String,
    pub users: String,
    pub friends: String,
    pub chat: String,
}

/// Clients of the four services, as the gateway will hold them: signed with the test
/// key (`testing::test_key`, which the services are given as `INTERNAL_AUTH_KEY`).
pub struct Clients {
    pub auth: AuthServiceClient<Signed>,
    pub users: UsersServiceClient<Signed>,
    pub friends: FriendsServiceClient<Signed>,
    pub chat: ChatServiceClient<Signed>,
    /// Chat's port with no assertion at all, as an intruder in the cluster would call it.
    pub unsigned_chat: ChatServiceClient<Channel>,
}

async fn channel(url: &str) -> Channel {
    Channel::from_shared(url.to_owned())
        .expect("valid url")
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .unwrap_or_else(|error| panic!("cannot connect to {url}: {error}"))
}

impl Clients {
    pub async fn connect(urls: &Urls) -> Self {
        let gateway = || SignedAs::service("gateway");
        let chat = channel(&urls.chat).await;
        Self {
            auth: AuthServiceClient::with_interceptor(channel(&urls.auth).await, gateway()),
            users: UsersServiceClient::with_interceptor(channel(&urls.users).await, gateway()),
            friends: FriendsServiceClient::with_interceptor(
                channel(&urls.friends).await,
                gateway(),
            ),
            chat: ChatServiceClient::with_interceptor(chat.clone(), gateway()),
            unsigned_chat: ChatServiceClient::new(chat),
        }
    }

    /// Registers through auth, logs in, and waits until the users service has created the
    /// profile from the `UserRegistered` event it consumed from Kafka.
    async fn register(&mut self, nickname: &str) -> (String, String) {
        let email = format!("{nickname}@example.org");
        let password = PASSWORD.to_owned();
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

/// Two people register, become friends, open a chat and read each other's messages.
/// Returns the access tokens they were given (secrets no log may show).
pub async fn two_people_register_befriend_and_chat(clients: &mut Clients) -> Vec<String> {
    let tag = testing::unique_prefix().replace(':', "").to_lowercase();
    let tag: String = tag
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(10)
        .collect();
    let (alice_nick, bob_nick) = (format!("alice{tag}"), format!("bob{tag}"));

    let (alice, alice_token) = clients.register(&alice_nick).await;
    let (bob, bob_token) = clients.register(&bob_nick).await;
    let tokens = vec![alice_token.clone(), bob_token];

    // The token the gateway would receive resolves to Alice.
    let validated = clients
        .auth
        .validate_token(ValidateTokenRequest {
            access_token: alice_token,
        })
        .await
        .expect("validate token")
        .into_inner();
    assert_eq!(validated.user_id, alice);

    // The profile created from the event is found by nickname, case-insensitively.
    let bob_profile = clients
        .users
        .get_user_profile_by_nickname(GetUserProfileByNicknameRequest {
            nickname: bob_nick.to_uppercase(),
        })
        .await
        .expect("bob's profile by nickname")
        .into_inner();
    assert_eq!(bob_profile.user_id, bob);

    // Strangers cannot open a chat.
    let refused = clients
        .chat
        .create_chat(as_user(
            &alice,
            CreateChatRequest {
                creator_id: alice.clone(),
                participant_ids: vec![bob.clone()],
            },
        ))
        .await
        .expect_err("a chat with a non-friend must be refused");
    assert_eq!(refused.code(), Code::PermissionDenied);
    // An id nobody has is named as such (chat asks users).
    let nobody = uuid::Uuid::new_v4().to_string();
    let refused = clients
        .chat
        .create_chat(as_user(
            &alice,
            CreateChatRequest {
                creator_id: alice.clone(),
                participant_ids: vec![nobody.clone()],
            },
        ))
        .await
        .expect_err("a chat with nobody must be refused");
    assert_eq!(refused.code(), Code::NotFound, "{refused:?}");
    assert!(refused.message().contains(&nobody), "{refused:?}");

    // Alice asks Bob by nickname (resolved through users); Bob accepts.
    let sent = clients
        .friends
        .send_friend_request(as_user(
            &alice,
            SendFriendRequestRequest {
                user_id: alice.clone(),
                nickname: bob_nick.clone(),
            },
        ))
        .await
        .expect("friend request")
        .into_inner();
    assert_eq!(sent.status, FriendshipStatus::Requested as i32);
    clients
        .friends
        .accept_friend_request(as_user(
            &bob,
            AcceptFriendRequestRequest {
                user_id: bob.clone(),
                nickname: alice_nick.clone(),
            },
        ))
        .await
        .expect("accept");
    for (user, friend) in [(&alice, &bob), (&bob, &alice)] {
        let friends = clients
            .friends
            .get_friends_list(as_user(
                user,
                GetFriendsListRequest {
                    user_id: user.clone(),
                    ..Default::default()
                },
            ))
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
    let chat = clients
        .chat
        .create_chat(as_user(
            &alice,
            CreateChatRequest {
                creator_id: alice.clone(),
                participant_ids: vec![bob.clone()],
            },
        ))
        .await
        .expect("create chat with a friend")
        .into_inner();
    for (author, content) in [
        (&alice, "hi Bob"),
        (&bob, "hello Alice"),
        (&alice, "lunch?"),
    ] {
        clients
            .chat
            .send_message(as_user(
                author,
                SendMessageRequest {
                    chat_id: chat.chat_id.clone(),
                    author_id: author.clone(),
                    content: content.to_owned(),
                    client_message_id: String::new(),
                },
            ))
            .await
            .expect("send message");
    }

    // Bob reads the history newest first and sees the chat at the top of his list.
    let history = clients
        .chat
        .get_chat_history(as_user(
            &bob,
            GetChatHistoryRequest {
                chat_id: chat.chat_id.clone(),
                reader_id: bob.clone(),
                before: String::new(),
                limit: 10,
            },
        ))
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
    let bobs_chats = clients
        .chat
        .get_user_chats(as_user(
            &bob,
            GetUserChatsRequest {
                user_id: bob.clone(),
                ..Default::default()
            },
        ))
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

    // Someone inside the network naming Alice as the reader gets nothing: unsigned, or
    // signed for themselves (Bob's own login), the body's user id is not believed.
    let read_as_alice = || GetChatHistoryRequest {
        chat_id: chat.chat_id.clone(),
        reader_id: alice.clone(),
        before: String::new(),
        limit: 10,
    };
    let unsigned = clients
        .unsigned_chat
        .get_chat_history(read_as_alice())
        .await
        .expect_err("an unsigned call is refused");
    assert_eq!(unsigned.code(), Code::Unauthenticated, "{unsigned:?}");
    let impostor = clients
        .chat
        .get_chat_history(as_user(&bob, read_as_alice()))
        .await
        .expect_err("Bob cannot read as Alice");
    assert_eq!(impostor.code(), Code::Unauthenticated, "{impostor:?}");
    tokens
}
