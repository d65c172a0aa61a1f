//! The chat service through its gRPC API: `run` on port 0 with the in-memory store, the
//! real Redis cache (`TEST_REDIS_URL`, unique key prefix per test), in-process
//! friendships, and events on the in-process bus or the real broker
//! (`TEST_KAFKA_BROKERS`; the outage test starts its own tansu).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use messenger_chat::config::{CacheConfig, EventsConfig, FriendsConfig, StoreConfig, UsersConfig};
use messenger_chat::domain::UserId;
use messenger_chat::friendship::InMemoryFriendships;
use messenger_chat::store::MongoStoreConfig;
use messenger_chat::users::InMemoryUsers;
use messenger_chat::{ChatError, Config, Listeners, run};
use messenger_common::Shutdown;
use messenger_common::events::{BusMessage, Event, InMemoryEventBus, Payload};
use messenger_common::identity::{self, Caller, IDENTITY_METADATA, InternalKey};
use messenger_common::testing;
use messenger_proto::topics::CHAT_EVENTS;
use messenger_proto::v1::chat_service_client::ChatServiceClient;
use messenger_proto::v1::{
    Chat, ChatKind, CreateChatRequest, GetChatHistoryRequest, GetChatHistoryResponse,
    GetChatRequest, GetUserChatsRequest, GetUserChatsResponse, Message, SendMessageRequest,
};
use redis::AsyncCommands;
use tokio::net::TcpListener;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::task::JoinHandle;
use tonic::Code;
use tonic::transport::Channel;

// ---- harness ---------------------------------------------------------------------------

struct ChatServer {
    client: ChatServiceClient<Channel>,
    friendships: Arc<InMemoryFriendships>,
    cache_prefix: String,
    admin_address: std::net::SocketAddr,
    shutdown: Shutdown,
    server: Option<JoinHandle<Result<(), ChatError>>>,
}

impl Drop for ChatServer {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

/// Starts the service with events on `events` and friendships in process.
async fn start(events: EventsConfig) -> ChatServer {
    let friendships = Arc::new(InMemoryFriendships::new());
    start_with(
        events,
        FriendsConfig::InMemory(Arc::clone(&friendships)),
        friendships,
    )
    .await
}

async fn start_with(
    events: EventsConfig,
    friends: FriendsConfig,
    friendships: Arc<InMemoryFriendships>,
) -> ChatServer {
    start_on(StoreConfig::Memory, events, friends, friendships).await
}

async fn start_on(
    store: StoreConfig,
    events: EventsConfig,
    friends: FriendsConfig,
    friendships: Arc<InMemoryFriendships>,
) -> ChatServer {
    let everyone = UsersConfig::InMemory(Arc::new(InMemoryUsers::everyone()));
    start_with_redis(
        store,
        events,
        friends,
        friendships,
        everyone,
        testing::redis_url(),
    )
    .await
}

async fn start_with_redis(
    store: StoreConfig,
    events: EventsConfig,
    friends: FriendsConfig,
    friendships: Arc<InMemoryFriendships>,
    users: UsersConfig,
    redis_url: String,
) -> ChatServer {
    let cache_prefix = testing::unique_prefix();
    let mut config = Config::in_memory(
        InMemoryEventBus::new(),
        Arc::clone(&friendships),
        testing::test_key(),
    );
    config.store = store;
    config.events = events;
    config.friends = friends;
    config.users = users;
    config.cache = Some(CacheConfig {
        redis_url: redis_url.into(),
        key_prefix: cache_prefix.clone(),
        ttl: Duration::from_secs(60),
    });
    config.outbox_poll_interval = Duration::from_millis(100);
    let grpc = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind gRPC port");
    let admin = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind admin port");
    let address = grpc.local_addr().expect("gRPC address");
    let admin_address = admin.local_addr().expect("admin address");
    let shutdown = Shutdown::new();
    let server = tokio::spawn(run(config, Listeners { grpc, admin }, shutdown.clone()));
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .expect("endpoint")
        .timeout(Duration::from_secs(10))
        .connect_lazy();
    let mut chat = ChatServer {
        client: ChatServiceClient::new(channel),
        friendships,
        cache_prefix,
        admin_address,
        shutdown,
        server: Some(server),
    };
    chat.wait_until_serving().await;
    chat
}

/// `message` signed for `user`, as the gateway sends it; for an id that is not a UUID
/// (bad-input tests), signed for someone else.
fn signed_for<T>(user: &str, message: T) -> tonic::Request<T> {
    let signer = uuid::Uuid::parse_str(user).unwrap_or_else(|_| uuid::Uuid::new_v4());
    testing::as_user(signer.to_string(), message)
}

impl ChatServer {
    async fn wait_until_serving(&mut self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let me = user();
            let probe = GetUserChatsRequest {
                user_id: me.clone(),
                ..Default::default()
            };
            if self
                .client
                .get_user_chats(testing::as_user(&me, probe))
                .await
                .is_ok()
            {
                return;
            }
            if self.server.as_ref().is_some_and(JoinHandle::is_finished) {
                let outcome = self.server.take().unwrap().await;
                panic!(
                    "the chat service stopped at start-up (is Redis up at TEST_REDIS_URL?): {outcome:?}"
                );
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the chat service did not serve within 15s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn befriend(&self, a: &str, b: &str) {
        self.friendships.befriend(parse(a), parse(b));
    }

    async fn create_chat(&self, creator: &str, others: &[&str]) -> Result<Chat, tonic::Status> {
        let request = CreateChatRequest {
            creator_id: creator.into(),
            participant_ids: others.iter().map(|s| s.to_string()).collect(),
        };
        self.client
            .clone()
            .create_chat(signed_for(creator, request))
            .await
            .map(tonic::Response::into_inner)
    }

    async fn send(
        &self,
        chat: &str,
        author: &str,
        content: &str,
        client_id: &str,
    ) -> Result<Message, tonic::Status> {
        let request = SendMessageRequest {
            chat_id: chat.into(),
            author_id: author.into(),
            content: content.into(),
            client_message_id: client_id.into(),
        };
        self.client
            .clone()
            .send_message(signed_for(author, request))
            .await
            .map(tonic::Response::into_inner)
    }

    async fn history(
        &self,
        chat: &str,
        reader: &str,
        before: &str,
        limit: u32,
    ) -> Result<GetChatHistoryResponse, tonic::Status> {
        let request = GetChatHistoryRequest {
            chat_id: chat.into(),
            reader_id: reader.into(),
            before: before.into(),
            limit,
        };
        self.client
            .clone()
            .get_chat_history(signed_for(reader, request))
            .await
            .map(tonic::Response::into_inner)
    }

    async fn user_chats_page(
        &self,
        user: &str,
        limit: u32,
        cursor: &str,
    ) -> Result<GetUserChatsResponse, tonic::Status> {
        let request = GetUserChatsRequest {
            user_id: user.into(),
            limit,
            cursor: cursor.into(),
        };
        self.client
            .clone()
            .get_user_chats(signed_for(user, request))
            .await
            .map(tonic::Response::into_inner)
    }

    async fn user_chats(&self, user: &str) -> Vec<Chat> {
        let request = GetUserChatsRequest {
            user_id: user.into(),
            ..Default::default()
        };
        self.client
            .clone()
            .get_user_chats(signed_for(user, request))
            .await
            .expect("GetUserChats")
            .into_inner()
            .chats
    }

    /// A direct chat between two fresh friends.
    async fn direct_chat(&self) -> (String, String, String) {
        let (a, b) = (user(), user());
        self.befriend(&a, &b);
        let chat = self
            .create_chat(&a, &[&b])
            .await
            .expect("CreateChat between friends");
        (chat.chat_id, a, b)
    }

    async fn all_messages(&self, chat: &str, reader: &str) -> Vec<Message> {
        self.history(chat, reader, "", 100)
            .await
            .expect("GetChatHistory")
            .messages
    }
}

fn user() -> String {
    UserId::new_random().to_string()
}

fn parse(id: &str) -> UserId {
    UserId::parse("test", id).expect("test ids are UUIDs")
}

fn assert_code<T: std::fmt::Debug>(result: Result<T, tonic::Status>, code: Code) -> tonic::Status {
    match result {
        Err(status) if status.code() == code => status,
        other => panic!("expected {code:?}, got {other:?}"),
    }
}

fn ids(messages: &[Message]) -> Vec<String> {
    messages.iter().map(|m| m.message_id.clone()).collect()
}

// ---- creating chats --------------------------------------------------------------------

#[tokio::test]
async fn a_non_friend_cannot_open_a_chat() {
    let chat = start(EventsConfig::InMemory(InMemoryEventBus::new())).await;
    let (a, friend, stranger) = (user(), user(), user());
    chat.befriend(&a, &friend);

    let status = assert_code(
        chat.create_chat(&a, &[&stranger]).await,
        Code::PermissionDenied,
    );
    assert!(status.message().contains(&stranger), "{}", status.message());
    // One stranger among friends refuses the whole group, naming only the stranger.
    let status = assert_code(
        chat.create_chat(&a, &[&friend, &stranger]).await,
        Code::PermissionDenied,
    );
    assert!(
        status.message().contains(&stranger) && !status.message().contains(&friend),
        "{}",
        status.message()
    );

    assert!(
        chat.user_chats(&a).await.is_empty(),
        "a refused CreateChat must create nothing"
    );
    assert!(chat.user_chats(&stranger).await.is_empty());
    // Friendship ended: no new chat either.
    chat.friendships.unfriend(parse(&a), parse(&friend));
    assert_code(
        chat.create_chat(&a, &[&friend]).await,
        Code::PermissionDenied,
    );
}

#[tokio::test]
async fn a_direct_chat_is_returned_not_duplicated() {
    let chat = start(EventsConfig::InMemory(InMemoryEventBus::new())).await;
    let (a, b) = (user(), user());
    chat.befriend(&a, &b);
    let first = chat.create_chat(&a, &[&b]).await.unwrap();
    assert_eq!(first.kind(), ChatKind::Direct);
    assert_eq!(first.participant_ids, vec![a.clone(), b.clone()]);
    assert_eq!(first.creator_id, a);

    let again = chat.create_chat(&a, &[&b]).await.unwrap();
    let reverse = chat.create_chat(&b, &[&a]).await.unwrap();
    assert_eq!(again.chat_id, first.chat_id);
    assert_eq!(reverse.chat_id, first.chat_id);
    assert_eq!(chat.user_chats(&a).await.len(), 1);
    assert_eq!(chat.user_chats(&b).await.len(), 1);
}

#[tokio::test]
async fn a_group_chat_holds_up_to_100_friends() {
    let chat = start(EventsConfig::InMemory(InMemoryEventBus::new())).await;
    let creator = user();
    let friends: Vec<String> = (0..100).map(|_| user()).collect();
    for friend in &friends {
        chat.befriend(&creator, friend);
    }
    let others: Vec<&str> = friends.iter().map(String::as_str).collect();

    let group = chat.create_chat(&creator, &others[..2]).await.unwrap();
    assert_eq!(group.kind(), ChatKind::Group);
    assert_eq!(group.participant_ids.len(), 3);
    for member in [&creator, &friends[0], &friends[1]] {
        let chats = chat.user_chats(member).await;
        assert_eq!(
            ids_of(&chats),
            vec![group.chat_id.clone()],
            "{member} should see the group"
        );
    }
    // A second group with the same people is a new chat (only direct chats are unique).
    let second = chat.create_chat(&creator, &others[..2]).await.unwrap();
    assert_ne!(second.chat_id, group.chat_id);

    let largest = chat.create_chat(&creator, &others[..99]).await.unwrap();
    assert_eq!(largest.participant_ids.len(), 100);
    let status = assert_code(
        chat.create_chat(&creator, &others).await,
        Code::InvalidArgument,
    );
    assert!(status.message().contains("100"), "{}", status.message());
    assert_eq!(chat.user_chats(&creator).await.len(), 3);
}

fn ids_of(chats: &[Chat]) -> Vec<String> {
    chats.iter().map(|c| c.chat_id.clone()).collect()
}

#[tokio::test]
async fn malformed_create_chat_requests_are_refused_and_change_nothing() {
    let chat = start(EventsConfig::InMemory(InMemoryEventBus::new())).await;
    let (a, b) = (user(), user());
    chat.befriend(&a, &b);
    let cases: Vec<(&str, Vec<&str>)> = vec![
        ("not-a-uuid", vec![&b]),
        ("", vec![&b]),
        (&a, vec![]),
        (&a, vec!["bob"]),
        (&a, vec![&b, &b]),
        (&a, vec![&a]),
        (&a, vec![&b, &a]),
    ];
    for (creator, others) in cases {
        // A creator id that is not a user's cannot be the signed caller.
        let expected = if uuid::Uuid::parse_str(creator).is_ok() {
            Code::InvalidArgument
        } else {
            Code::Unauthenticated
        };
        assert_code(chat.create_chat(creator, &others).await, expected);
    }
    assert!(chat.user_chats(&a).await.is_empty());
    assert_code(
        chat.client
            .clone()
            .get_user_chats(testing::as_user(
                &a,
                GetUserChatsRequest {
                    user_id: "x".into(),
                    ..Default::default()
                },
            ))
            .await,
        Code::Unauthenticated,
    );
}

#[tokio::test]
async fn an_unreachable_friends_service_fails_create_chat_as_unavailable() {
    let friendships = Arc::new(InMemoryFriendships::new());
    let closed_port = testing::free_port();
    let friends = FriendsConfig::Grpc {
        url: format!("http://127.0.0.1:{closed_port}"),
        timeout: Duration::from_millis(500),
    };
    let chat = start_with(
        EventsConfig::InMemory(InMemoryEventBus::new()),
        friends,
        friendships,
    )
    .await;
    let (a, b) = (user(), user());
    let started = std::time::Instant::now();
    assert_code(chat.create_chat(&a, &[&b]).await, Code::Unavailable);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the friends call must be bounded by its deadline"
    );
    assert!(chat.user_chats(&a).await.is_empty());
}

// ---- messages --------------------------------------------------------------------------

#[tokio::test]
async fn a_non_participant_can_neither_send_nor_read() {
    let chat = start(EventsConfig::InMemory(InMemoryEventBus::new())).await;
    let (chat_id, a, _b) = chat.direct_chat().await;
    chat.send(&chat_id, &a, "private", "").await.unwrap();
    let outsider = user();

    assert_code(
        chat.send(&chat_id, &outsider, "let me in", "").await,
        Code::PermissionDenied,
    );
    assert_code(
        chat.history(&chat_id, &outsider, "", 10).await,
        Code::PermissionDenied,
    );
    let unknown = uuid_v7();
    assert_code(chat.send(&unknown, &a, "hello?", "").await, Code::NotFound);
    assert_code(chat.history(&unknown, &a, "", 10).await, Code::NotFound);

    let messages = chat.all_messages(&chat_id, &a).await;
    assert_eq!(messages.len(), 1, "the refused send must not be stored");
    assert_eq!(messages[0].content, "private");
    assert!(chat.user_chats(&outsider).await.is_empty());
}

fn uuid_v7() -> String {
    messenger_chat::domain::ChatId::generate().to_string()
}

#[tokio::test]
async fn message_content_must_be_1_to_4096_characters_after_trimming() {
    let chat = start(EventsConfig::InMemory(InMemoryEventBus::new())).await;
    let (chat_id, a, b) = chat.direct_chat().await;
    for bad in [
        "".to_owned(),
        "   \n\t".to_owned(),
        "x".repeat(4097),
        format!(" {} ", "ж".repeat(4097)),
    ] {
        assert_code(
            chat.send(&chat_id, &a, &bad, "").await,
            Code::InvalidArgument,
        );
    }
    assert!(
        chat.all_messages(&chat_id, &a).await.is_empty(),
        "refused sends store nothing"
    );

    let longest = chat
        .send(&chat_id, &a, &format!("  {}\n", "ж".repeat(4096)), "")
        .await
        .unwrap();
    assert_eq!(longest.content.chars().count(), 4096);
    let trimmed = chat.send(&chat_id, &b, "  hi there \n", "").await.unwrap();
    assert_eq!(trimmed.content, "hi there");
    assert_eq!(trimmed.author_id, b);
    assert_eq!(trimmed.chat_id, chat_id);
    assert!(trimmed.sent_at.is_some());
    assert!(
        trimmed.message_id > longest.message_id,
        "later messages have greater ids"
    );

    // Other malformed fields.
    assert_code(chat.send("nope", &a, "x", "").await, Code::InvalidArgument);
    assert_code(
        chat.send(&chat_id, "", "x", "").await,
        Code::Unauthenticated,
    );
    assert_code(
        chat.send(&chat_id, &a, "x", &"k".repeat(129)).await,
        Code::InvalidArgument,
    );
    assert_code(
        chat.history(&chat_id, &a, "", 101).await,
        Code::InvalidArgument,
    );
    assert_code(
        chat.history(&chat_id, &a, "yesterday", 10).await,
        Code::InvalidArgument,
    );
    assert_eq!(chat.all_messages(&chat_id, &a).await.len(), 2);
}

#[tokio::test]
async fn a_retried_send_returns_the_original_message() {
    let chat = start(EventsConfig::InMemory(InMemoryEventBus::new())).await;
    let (chat_id, a, b) = chat.direct_chat().await;
    let original = chat.send(&chat_id, &a, "hello", "retry-1").await.unwrap();
    assert_eq!(original.client_message_id, "retry-1");
    let retried = chat.send(&chat_id, &a, "hello", "retry-1").await.unwrap();
    assert_eq!(retried, original);
    // Concurrent retries of another send also end as one message.
    let retries = (0..6).map(|_| chat.send(&chat_id, &b, "yo", "retry-2"));
    let results = futures::future::join_all(retries).await;
    let distinct: HashSet<String> = results.into_iter().map(|r| r.unwrap().message_id).collect();
    assert_eq!(distinct.len(), 1);

    let contents: Vec<String> = chat
        .all_messages(&chat_id, &a)
        .await
        .into_iter()
        .map(|m| m.content)
        .collect();
    assert_eq!(contents, vec!["yo", "hello"]);
}

#[tokio::test]
async fn user_chats_are_most_recently_active_first_with_their_last_message() {
    let chat = start(EventsConfig::InMemory(InMemoryEventBus::new())).await;
    let (me, b, c) = (user(), user(), user());
    chat.befriend(&me, &b);
    chat.befriend(&me, &c);
    let with_b = chat.create_chat(&me, &[&b]).await.unwrap().chat_id;
    let with_c = chat.create_chat(&me, &[&c]).await.unwrap().chat_id;
    let group = chat.create_chat(&me, &[&b, &c]).await.unwrap().chat_id;
    assert_eq!(
        ids_of(&chat.user_chats(&me).await),
        vec![group.clone(), with_c.clone(), with_b.clone()]
    );
    assert!(
        chat.user_chats(&me)
            .await
            .iter()
            .all(|c| c.last_message.is_none())
    );

    chat.send(&with_b, &b, "first", "").await.unwrap();
    let latest = chat.send(&with_b, &me, "second", "").await.unwrap();
    let chats = chat.user_chats(&me).await;
    assert_eq!(
        ids_of(&chats),
        vec![with_b.clone(), group.clone(), with_c.clone()]
    );
    assert_eq!(chats[0].last_message.as_ref(), Some(&latest));
    assert_eq!(chats[0].last_activity_at, latest.sent_at);

    let in_group = chat.send(&group, &c, "hi all", "").await.unwrap();
    assert_eq!(
        ids_of(&chat.user_chats(&me).await),
        vec![group.clone(), with_b.clone(), with_c.clone()]
    );
    let for_b = chat.user_chats(&b).await;
    assert_eq!(ids_of(&for_b), vec![group, with_b]);
    assert_eq!(for_b[0].last_message.as_ref(), Some(&in_group));
}

#[tokio::test]
async fn user_chats_come_in_pages_that_list_every_chat_once_while_chats_get_messages() {
    let chat = start(EventsConfig::InMemory(InMemoryEventBus::new())).await;
    let me = user();
    let (mut created, mut friends) = (Vec::new(), Vec::new());
    for _ in 0..55 {
        let friend = user();
        chat.befriend(&me, &friend);
        created.push(chat.create_chat(&me, &[&friend]).await.unwrap().chat_id);
        friends.push(friend);
    }
    // The default page is 50, the most recently active first, and says more follow.
    let first = chat.user_chats_page(&me, 0, "").await.unwrap();
    let newest_first: Vec<String> = created.iter().rev().cloned().collect();
    assert_eq!(ids_of(&first.chats), newest_first[..50]);
    assert!(!first.next_cursor.is_empty());
    let rest = chat
        .user_chats_page(&me, 0, &first.next_cursor)
        .await
        .unwrap();
    assert_eq!(ids_of(&rest.chats), newest_first[50..]);
    assert_eq!(rest.next_cursor, "", "the last page says so");

    // Pages of 10 while messages arrive in chats listed and not yet listed: every chat
    // whose activity did not change is listed once, none twice.
    let mut seen = Vec::new();
    let mut cursor = String::new();
    let mut moved = HashSet::new();
    loop {
        let page = chat.user_chats_page(&me, 10, &cursor).await.unwrap();
        assert!(page.chats.len() <= 10);
        seen.extend(ids_of(&page.chats));
        // One chat just listed, and the least active one, not listed yet.
        for n in [55 - seen.len(), 0] {
            chat.send(&created[n], &friends[n], "meanwhile", "")
                .await
                .unwrap();
            moved.insert(created[n].clone());
        }
        if page.next_cursor.is_empty() {
            break;
        }
        cursor = page.next_cursor;
    }
    let unique: HashSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "no chat listed twice: {seen:?}");
    for chat_id in created.iter().filter(|id| !moved.contains(*id)) {
        assert!(seen.contains(chat_id), "{chat_id} was never listed");
    }

    // Bad paging input is refused, naming the field.
    for (limit, cursor, field) in [
        (101, "", "limit"),
        (10, "page-2", "cursor"),
        (10, &*"x".repeat(100_000), "cursor"),
    ] {
        let status = assert_code(
            chat.user_chats_page(&me, limit, cursor).await,
            Code::InvalidArgument,
        );
        assert!(status.message().starts_with(field), "{}", status.message());
        assert!(status.message().len() < 300, "{}", status.message().len());
    }
}

#[tokio::test]
async fn history_pages_return_every_message_once_while_new_ones_arrive() {
    let chat = Arc::new(start(EventsConfig::InMemory(InMemoryEventBus::new())).await);
    let (chat_id, a, b) = chat.direct_chat().await;
    let mut existing = Vec::new();
    for n in 0..120 {
        existing.push(
            chat.send(
                &chat_id,
                if n % 3 == 0 { &b } else { &a },
                &format!("m{n}"),
                "",
            )
            .await
            .unwrap(),
        );
    }

    let sender = {
        let (chat, chat_id, a) = (Arc::clone(&chat), chat_id.clone(), a.clone());
        tokio::spawn(async move {
            for n in 0..60 {
                chat.send(&chat_id, &a, &format!("late {n}"), "")
                    .await
                    .expect("concurrent send");
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };

    let mut seen: Vec<Message> = Vec::new();
    let mut before = String::new();
    let mut pages = 0;
    loop {
        let page = chat
            .history(&chat_id, &b, &before, 7)
            .await
            .expect("GetChatHistory");
        assert!(page.messages.len() <= 7);
        pages += 1;
        seen.extend(page.messages);
        if page.next_before.is_empty() {
            break;
        }
        assert_eq!(
            page.next_before,
            seen.last().unwrap().message_id,
            "the cursor is the page's last id"
        );
        before = page.next_before;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    sender.await.unwrap();

    let seen_ids = ids(&seen);
    assert!(
        seen_ids.windows(2).all(|pair| pair[0] > pair[1]),
        "newest first, strictly, across pages"
    );
    let distinct: HashSet<&String> = seen_ids.iter().collect();
    assert_eq!(
        distinct.len(),
        seen_ids.len(),
        "no message may appear twice"
    );
    for message in &existing {
        assert!(
            distinct.contains(&message.message_id),
            "{} ({}) was skipped",
            message.content,
            message.message_id
        );
    }
    assert!(pages >= 18, "120+ messages in pages of 7");
    assert_eq!(chat.all_messages(&chat_id, &a).await.len(), 100);
    assert_eq!(
        chat.history(&chat_id, &a, "", 0)
            .await
            .unwrap()
            .messages
            .len(),
        50,
        "limit 0 means the default of 50"
    );
}

#[tokio::test]
async fn recent_messages_are_cached_in_redis_and_never_stale() {
    let chat = start(EventsConfig::InMemory(InMemoryEventBus::new())).await;
    let (chat_id, a, b) = chat.direct_chat().await;
    let first = chat.send(&chat_id, &a, "one", "").await.unwrap();
    assert_eq!(
        ids(&chat.all_messages(&chat_id, &b).await),
        vec![first.message_id.clone()]
    );

    let mut redis = redis::Client::open(testing::redis_url())
        .expect("TEST_REDIS_URL")
        .get_multiplexed_async_connection()
        .await
        .expect("Redis at TEST_REDIS_URL");
    let keys: Vec<String> = redis.keys(format!("{}*", chat.cache_prefix)).await.unwrap();
    assert!(
        keys.iter().any(|key| key.contains(&chat_id)),
        "the latest page should be cached: {keys:?}"
    );

    // A send makes the cached page stale; the next read shows the new message.
    let second = chat.send(&chat_id, &b, "two", "").await.unwrap();
    let page = chat.history(&chat_id, &a, "", 1).await.unwrap();
    assert_eq!(ids(&page.messages), vec![second.message_id.clone()]);
    assert_eq!(page.next_before, second.message_id);
    let page = chat.history(&chat_id, &a, "", 5).await.unwrap();
    assert_eq!(
        ids(&page.messages),
        vec![second.message_id, first.message_id]
    );
    assert_eq!(page.next_before, "", "no older page");

    // A corrupt cache entry is ignored, not served.
    for key in keys.iter().filter(|key| key.contains("history:")) {
        let _: () = redis.set(key, "{not json").await.unwrap();
    }
    assert_eq!(chat.all_messages(&chat_id, &a).await.len(), 2);
    let _: () = redis.del(keys).await.unwrap();
}

// ---- on MongoDB ------------------------------------------------------------------------

#[tokio::test]
async fn mongo_backed_service_keeps_chats_messages_and_events() {
    let uri = std::env::var("TEST_MONGODB_URI").or_else(|_| std::env::var("MONGODB_URI")).unwrap_or_else(|_| {
        panic!("TEST_MONGODB_URI (or MONGODB_URI) must point at a MongoDB 6+ server for the mongo_* tests")
    });
    let database = format!("chat_service_test_{}", user().replace('-', ""));
    let store = StoreConfig::MongoDb(MongoStoreConfig {
        database: Some(database.clone()),
        ..MongoStoreConfig::new(&uri)
    });
    let bus = InMemoryEventBus::new();
    let mut events = bus.subscribe(CHAT_EVENTS);
    let friendships = Arc::new(InMemoryFriendships::new());
    let chat = start_on(
        store,
        EventsConfig::InMemory(bus),
        FriendsConfig::InMemory(Arc::clone(&friendships)),
        friendships,
    )
    .await;

    let (chat_id, a, b) = chat.direct_chat().await;
    assert_eq!(
        chat.create_chat(&b, &[&a]).await.unwrap().chat_id,
        chat_id,
        "direct chat not duplicated"
    );
    let first = chat.send(&chat_id, &a, " hello ", "k1").await.unwrap();
    assert_eq!(
        chat.send(&chat_id, &a, "hello", "k1").await.unwrap(),
        first,
        "retry returns the original"
    );
    let second = chat.send(&chat_id, &b, "hi", "").await.unwrap();
    assert_code(
        chat.send(&chat_id, &user(), "intruder", "").await,
        Code::PermissionDenied,
    );

    let page = chat.history(&chat_id, &b, "", 1).await.unwrap();
    assert_eq!(ids(&page.messages), vec![second.message_id.clone()]);
    let older = chat
        .history(&chat_id, &b, &page.next_before, 10)
        .await
        .unwrap();
    assert_eq!(ids(&older.messages), vec![first.message_id.clone()]);
    assert_eq!(older.next_before, "");
    let chats = chat.user_chats(&b).await;
    assert_eq!(chats.len(), 1);
    assert_eq!(chats[0].last_message.as_ref(), Some(&second));

    let mut announced = Vec::new();
    for _ in 0..3 {
        announced.push(next_bus_message(&mut events).await.event);
    }
    assert!(is_chat_created(&announced[0], &chat_id));
    assert!(is_message_sent(&announced[1], &first.message_id));
    assert!(is_message_sent(&announced[2], &second.message_id));

    drop(chat);
    let client = mongodb::Client::with_uri_str(&uri)
        .await
        .expect("MongoDB client");
    client.database(&database).drop().await.ok();
}

// ---- operations ------------------------------------------------------------------------

/// A plain HTTP/1.1 GET against the admin server: (status line, body).
async fn http_get(address: std::net::SocketAddr, path: &str) -> (String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect to the admin server");
    let request = format!("GET {path} HTTP/1.1\r\nHost: chat\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    (
        head.lines().next().unwrap_or_default().to_owned(),
        body.to_owned(),
    )
}

#[tokio::test]
async fn a_chat_with_someone_nobody_is_refused_as_not_found_and_with_a_stranger_as_denied() {
    let friendships = Arc::new(InMemoryFriendships::new());
    let users = Arc::new(InMemoryUsers::registry());
    let chat = start_with_redis(
        StoreConfig::Memory,
        EventsConfig::InMemory(InMemoryEventBus::new()),
        FriendsConfig::InMemory(Arc::clone(&friendships)),
        friendships,
        UsersConfig::InMemory(Arc::clone(&users)),
        testing::redis_url(),
    )
    .await;
    let (creator, stranger, nobody) = (user(), user(), user());
    for id in [&creator, &stranger] {
        users.register(parse(id));
    }

    let refused = chat
        .create_chat(&creator, &[&stranger, &nobody])
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::NotFound, "{refused:?}");
    assert!(refused.message().contains(&nobody), "{refused:?}");
    assert!(
        !refused.message().contains(&stranger),
        "only the unknown id is named: {refused:?}"
    );

    let refused = chat.create_chat(&creator, &[&stranger]).await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert!(
        chat.user_chats(&creator).await.is_empty(),
        "nothing was created"
    );
}

#[tokio::test]
async fn without_redis_the_service_starts_serves_from_the_store_and_stays_ready() {
    let dead_redis = format!("redis://127.0.0.1:{}", testing::free_port());
    let friendships = Arc::new(InMemoryFriendships::new());
    let chat = start_with_redis(
        StoreConfig::Memory,
        EventsConfig::InMemory(InMemoryEventBus::new()),
        FriendsConfig::InMemory(Arc::clone(&friendships)),
        friendships,
        UsersConfig::InMemory(Arc::new(InMemoryUsers::everyone())),
        dead_redis,
    )
    .await;
    let (chat_id, a, b) = chat.direct_chat().await;
    let sent = chat
        .send(&chat_id, &a, "no cache needed", "")
        .await
        .unwrap();
    for _ in 0..2 {
        let history = chat.history(&chat_id, &b, "", 10).await.unwrap();
        assert_eq!(history.messages, vec![sent.clone()]);
    }
    let (status, body) = http_get(chat.admin_address, "/readyz").await;
    assert!(
        status.contains("200"),
        "a cache outage must not take chat out of its Service: {status}: {body}"
    );
}

#[tokio::test]
async fn admin_endpoints_report_health_readiness_and_metrics_then_shut_down_gracefully() {
    let mut chat = start(EventsConfig::InMemory(InMemoryEventBus::new())).await;
    let (chat_id, a, _b) = chat.direct_chat().await;
    chat.send(&chat_id, &a, "counted", "").await.unwrap();

    let (status, _) = http_get(chat.admin_address, "/healthz").await;
    assert!(status.contains("200"), "{status}");
    let (status, body) = http_get(chat.admin_address, "/readyz").await;
    assert!(status.contains("200"), "{status}: {body}");
    let (status, body) = http_get(chat.admin_address, "/metrics").await;
    assert!(status.contains("200"), "{status}");
    assert!(
        body.contains("SendMessage"),
        "RPCs should be counted: {body}"
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (_, body) = http_get(chat.admin_address, "/metrics").await;
        if body
            .lines()
            .any(|line| line.starts_with("events_published_total") && line.contains(CHAT_EVENTS))
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "relayed events should be counted: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    chat.shutdown.trigger();
    let server = chat.server.take().expect("server handle");
    let stopped = tokio::time::timeout(Duration::from_secs(10), server).await;
    assert!(
        matches!(stopped, Ok(Ok(Ok(())))),
        "run should return Ok after shutdown: {stopped:?}"
    );
    let refused = chat
        .client
        .clone()
        .get_user_chats(GetUserChatsRequest {
            user_id: user(),
            ..Default::default()
        })
        .await;
    assert!(refused.is_err(), "the gRPC server should be down");
}

// ---- GetChat and internal trust --------------------------------------------------------

impl ChatServer {
    async fn get_chat(&self, chat_id: &str, user_id: &str) -> Result<Chat, tonic::Status> {
        let request = GetChatRequest {
            chat_id: chat_id.into(),
            user_id: user_id.into(),
        };
        self.client
            .clone()
            .get_chat(signed_for(user_id, request))
            .await
            .map(tonic::Response::into_inner)
    }
}

#[tokio::test]
async fn get_chat_shows_a_participant_the_chat_with_its_last_message_and_hides_it_from_others() {
    let chat = start(EventsConfig::InMemory(InMemoryEventBus::new())).await;
    let (chat_id, a, b) = chat.direct_chat().await;
    let fresh = chat.get_chat(&chat_id, &a).await.unwrap();
    assert_eq!(fresh.chat_id, chat_id);
    assert_eq!(fresh.last_message, None);
    chat.send(&chat_id, &a, "first", "").await.unwrap();
    let last = chat.send(&chat_id, &b, "second", "").await.unwrap();

    let seen = chat.get_chat(&chat_id, &b).await.unwrap();
    assert_eq!(seen.last_message, Some(last));
    let listed = chat.user_chats(&b).await;
    assert_eq!(vec![seen.clone()], listed, "the same view as GetUserChats");

    // A stranger cannot tell this chat from one that does not exist.
    let outsider = assert_code(chat.get_chat(&chat_id, &user()).await, Code::NotFound);
    let missing = assert_code(
        chat.get_chat(&UserId::new_random().to_string(), &a).await,
        Code::NotFound,
    );
    assert_eq!(outsider.message(), missing.message());
    assert_code(chat.get_chat("nope", &a).await, Code::InvalidArgument);
}

/// Internal trust: a caller who reaches the chat port cannot read or write as someone
/// else by naming them in the body, nor without a valid assertion.
#[tokio::test]
async fn a_call_acts_only_for_the_user_it_is_signed_for() {
    let chat = start(EventsConfig::InMemory(InMemoryEventBus::new())).await;
    let (chat_id, a, b) = chat.direct_chat().await;
    chat.send(&chat_id, &a, "private", "").await.unwrap();
    let mallory = user();
    let read_as_a = || GetChatHistoryRequest {
        chat_id: chat_id.clone(),
        reader_id: a.clone(),
        before: String::new(),
        limit: 50,
    };
    let write_as_b = || SendMessageRequest {
        chat_id: chat_id.clone(),
        author_id: b.clone(),
        content: "forged".into(),
        client_message_id: String::new(),
    };
    let mut client = chat.client.clone();
    let mut expired = tonic::Request::new(read_as_a());
    expired.metadata_mut().insert(
        IDENTITY_METADATA,
        testing::expired_assertion(
            &testing::test_key(),
            &Caller::User(uuid::Uuid::parse_str(&a).unwrap()),
        )
        .parse()
        .unwrap(),
    );
    let mut forged = tonic::Request::new(read_as_a());
    identity::attach(
        &mut forged,
        &InternalKey::generate(),
        &Caller::User(uuid::Uuid::parse_str(&a).unwrap()),
    );
    let reads = [
        (
            "another user",
            client
                .get_chat_history(testing::as_user(&mallory, read_as_a()))
                .await,
        ),
        (
            "a service",
            client
                .get_chat_history(testing::as_service("gateway", read_as_a()))
                .await,
        ),
        ("unsigned", client.get_chat_history(read_as_a()).await),
        ("expired", client.get_chat_history(expired).await),
        ("forged", client.get_chat_history(forged).await),
    ];
    for (what, result) in reads {
        let status = result.expect_err(what);
        assert_eq!(status.code(), Code::Unauthenticated, "{what}: {status:?}");
    }
    let writes = [
        (
            "another user",
            client
                .send_message(testing::as_user(&a, write_as_b()))
                .await,
        ),
        ("unsigned", client.send_message(write_as_b()).await),
    ];
    for (what, result) in writes {
        let status = result.expect_err(what);
        assert_eq!(status.code(), Code::Unauthenticated, "{what}: {status:?}");
    }
    let listing = client
        .get_user_chats(testing::as_user(
            &mallory,
            GetUserChatsRequest {
                user_id: a.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(listing.code(), Code::Unauthenticated);
    let creating = client
        .create_chat(testing::as_user(
            &mallory,
            CreateChatRequest {
                creator_id: a.clone(),
                participant_ids: vec![b.clone()],
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(creating.code(), Code::Unauthenticated);

    // Nothing was written; the participants themselves still get through.
    let history = chat.all_messages(&chat_id, &b).await;
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].content, "private");
    assert_eq!(chat.user_chats(&a).await.len(), 1);
}

// ---- events ----------------------------------------------------------------------------

fn is_message_sent(event: &Event, message_id: &str) -> bool {
    matches!(&event.payload, Some(Payload::MessageSent(sent)) if sent.message_id == message_id)
}

fn is_chat_created(event: &Event, chat_id: &str) -> bool {
    matches!(&event.payload, Some(Payload::ChatCreated(created)) if created.chat_id == chat_id)
}

async fn next_bus_message(receiver: &mut UnboundedReceiver<BusMessage>) -> BusMessage {
    tokio::time::timeout(Duration::from_secs(5), receiver.recv())
        .await
        .expect("an event within 5s")
        .expect("the bus is open")
}

#[tokio::test]
async fn chat_events_are_published_in_order_keyed_by_chat() {
    let bus = InMemoryEventBus::new();
    let mut events = bus.subscribe(CHAT_EVENTS);
    let chat = start(EventsConfig::InMemory(bus)).await;
    let (chat_id, a, b) = chat.direct_chat().await;
    let sent = chat.send(&chat_id, &a, "hello", "k").await.unwrap();
    chat.send(&chat_id, &a, "hello", "k").await.unwrap();
    chat.create_chat(&b, &[&a]).await.unwrap();

    let created = next_bus_message(&mut events).await;
    assert_eq!(created.key, chat_id);
    match created.event.payload {
        Some(Payload::ChatCreated(payload)) => {
            assert_eq!(payload.chat_id, chat_id);
            assert_eq!(payload.creator_id, a);
            assert_eq!(payload.participant_ids, vec![a.clone(), b.clone()]);
        }
        other => panic!("expected ChatCreated, got {other:?}"),
    }
    let message = next_bus_message(&mut events).await;
    assert_eq!(message.key, chat_id);
    match message.event.payload {
        Some(Payload::MessageSent(payload)) => {
            assert_eq!(payload.message_id, sent.message_id);
            assert_eq!(payload.author_id, a);
            assert_eq!(payload.sent_at, sent.sent_at);
            // What the gateway needs to deliver it without asking chat.
            let mut participants = payload.participant_ids.clone();
            participants.sort();
            let mut expected = vec![a.clone(), b.clone()];
            expected.sort();
            assert_eq!(participants, expected);
            assert_eq!(payload.content, "hello");
            assert_eq!(payload.client_message_id, "k");
        }
        other => panic!("expected MessageSent, got {other:?}"),
    }
    // The retried send and the returned direct chat announce nothing new.
    let extra = tokio::time::timeout(Duration::from_millis(500), events.recv()).await;
    assert!(extra.is_err(), "unexpected event: {extra:?}");
}

#[tokio::test]
async fn events_reach_real_kafka() {
    let brokers = testing::kafka_brokers();
    messenger_common::kafka::ensure_topics(&brokers, &[CHAT_EVENTS])
        .await
        .unwrap_or_else(|error| {
            panic!("Kafka at TEST_KAFKA_BROKERS={brokers} is unreachable: {error}")
        });
    let chat = start(EventsConfig::kafka(brokers.clone())).await;
    let (chat_id, a, _b) = chat.direct_chat().await;
    let sent = chat.send(&chat_id, &a, "to kafka", "").await.unwrap();

    let created = testing::wait_for_event(
        &brokers,
        CHAT_EVENTS,
        |e| is_chat_created(e, &chat_id),
        Duration::from_secs(30),
    )
    .await
    .expect("ChatCreated should reach Kafka");
    assert_eq!(created.key, chat_id);
    let message_id = sent.message_id.clone();
    let received = testing::wait_for_event(
        &brokers,
        CHAT_EVENTS,
        |e| is_message_sent(e, &message_id),
        Duration::from_secs(30),
    )
    .await
    .expect("MessageSent should reach Kafka");
    assert_eq!(received.key, chat_id);
}

#[tokio::test]
async fn the_outbox_delivers_events_written_while_the_broker_was_down() {
    let mut broker = testing::TansuBroker::stopped(testing::free_port());
    let brokers = broker.brokers();
    let chat = start(EventsConfig::kafka(brokers.clone())).await;

    // The broker is down: writes still succeed, their events wait in the outbox.
    let (chat_id, a, b) = chat.direct_chat().await;
    let sent = chat
        .send(&chat_id, &a, "written during the outage", "")
        .await
        .unwrap();
    let later = chat
        .send(&chat_id, &b, "also during the outage", "")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;

    broker.restart();
    messenger_common::kafka::ensure_topics(&brokers, &[CHAT_EVENTS])
        .await
        .expect("create the topic on the new broker");
    let events = testing::read_events(&brokers, CHAT_EVENTS, 3, Duration::from_secs(90)).await;
    let received: Vec<&Event> = events.iter().map(|e| &e.event).collect();
    assert!(
        received.iter().any(|e| is_chat_created(e, &chat_id)),
        "ChatCreated lost: {received:?}"
    );
    let first = received
        .iter()
        .position(|e| is_message_sent(e, &sent.message_id))
        .expect("first MessageSent lost");
    let second = received
        .iter()
        .position(|e| is_message_sent(e, &later.message_id))
        .expect("second MessageSent lost");
    assert!(first < second, "a chat's events keep their order");
    assert!(events.iter().all(|e| e.key == chat_id));
}

#[tokio::test]
async fn the_outbox_recovers_when_the_broker_restarts_mid_life() {
    let mut broker = testing::TansuBroker::start(testing::free_port());
    let brokers = broker.brokers();
    messenger_common::kafka::ensure_topics(&brokers, &[CHAT_EVENTS])
        .await
        .expect("create the topic on the private broker");
    let chat = start(EventsConfig::kafka(brokers.clone())).await;
    let (chat_id, a, b) = chat.direct_chat().await;
    let before = chat
        .send(&chat_id, &a, "before the outage", "")
        .await
        .unwrap();
    let before_id = before.message_id.clone();
    testing::wait_for_event(
        &brokers,
        CHAT_EVENTS,
        |e| is_message_sent(e, &before_id),
        Duration::from_secs(30),
    )
    .await
    .expect("MessageSent before the outage");

    broker.stop();
    let during = chat
        .send(&chat_id, &b, "during the outage", "")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    // The restarted broker keeps nothing (in-memory storage): the topic is new too.
    broker.restart();
    messenger_common::kafka::ensure_topics(&brokers, &[CHAT_EVENTS])
        .await
        .expect("create the topic on the restarted broker");
    let during_id = during.message_id.clone();
    let received = testing::wait_for_event(
        &brokers,
        CHAT_EVENTS,
        |e| is_message_sent(e, &during_id),
        Duration::from_secs(90),
    )
    .await
    .expect("the event written during the outage must arrive after the restart");
    assert_eq!(received.key, chat_id);
}
