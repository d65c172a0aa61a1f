//! The chat service through its gRPC API with its store on a real MongoDB-wire server
//! (`TEST_MONGODB_URI`; DocumentDB from `scripts/test-deps.sh`, or a user's MongoDB): what
//! the store decides under concurrency, paging, caching and relaying, seen as a client
//! sees it, and an outage of the server in the middle of a run of sends — chat must report
//! not ready, answer `UNAVAILABLE` rather than hang, and recover with nothing lost or
//! duplicated once the server is back.
//!
//! The server that dies in the outage test is private to it, so the other tests keep
//! theirs:
//! - on DocumentDB: a second gateway process (`TEST_DOCUMENTDB_GATEWAY` with a copy of
//!   `TEST_DOCUMENTDB_GATEWAY_CONFIG` on a free port) over the same PostgreSQL cluster,
//!   SIGKILLed and started again;
//! - on a user's own MongoDB (`MONGODB_URI`): a TCP relay in front of it, which is
//!   dropped with every connection it carries and later opened again on the same port.
//!
//! Each test uses a fresh database and drops it at the end.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use messenger_chat::config::{CacheConfig, StoreConfig};
use messenger_chat::domain::UserId;
use messenger_chat::friendship::InMemoryFriendships;
use messenger_chat::store::MongoStoreConfig;
use messenger_chat::{ChatError, Config, Listeners, run};
use messenger_common::Shutdown;
use messenger_common::events::{BusMessage, InMemoryEventBus, Payload};
use messenger_common::testing::{self, as_user};
use messenger_proto::topics::CHAT_EVENTS;
use messenger_proto::v1::chat_service_client::ChatServiceClient;
use messenger_proto::v1::{
    CreateChatRequest, GetChatHistoryRequest, GetChatHistoryResponse, GetUserChatsRequest, Message,
    SendMessageRequest,
};
use redis::AsyncCommands;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::task::JoinHandle;
use tonic::Code;
use tonic::transport::Channel;

// ---- harness ---------------------------------------------------------------------------

/// Longer than any answer may take: the store gives up on an absent server in ~5 s.
const NO_HANG: Duration = Duration::from_secs(15);

/// The chat service (`run`) on port 0 with its store in a fresh database at `uri`, the
/// real Redis cache, friendships in process and events on an in-process bus.
struct MongoChat {
    client: ChatServiceClient<Channel>,
    friendships: Arc<InMemoryFriendships>,
    admin_address: SocketAddr,
    cache_prefix: String,
    shutdown: Shutdown,
    service: Option<JoinHandle<Result<(), ChatError>>>,
    uri: String,
    database: String,
}

impl MongoChat {
    async fn start(
        uri: &str,
        configure: impl FnOnce(&mut Config),
    ) -> (Self, UnboundedReceiver<BusMessage>) {
        let database = format!("chat_service_test_{}", user().replace('-', ""));
        let bus = InMemoryEventBus::new();
        let events = bus.subscribe(CHAT_EVENTS);
        let friendships = Arc::new(InMemoryFriendships::new());
        let cache_prefix = testing::unique_prefix();
        let mut config = Config::in_memory(bus, Arc::clone(&friendships), testing::test_key());
        config.store = StoreConfig::MongoDb(MongoStoreConfig {
            database: Some(database.clone()),
            ..MongoStoreConfig::new(uri)
        });
        config.cache = Some(CacheConfig {
            redis_url: testing::redis_url().into(),
            key_prefix: cache_prefix.clone(),
            ttl: Duration::from_secs(60),
        });
        config.outbox_poll_interval = Duration::from_millis(100);
        configure(&mut config);
        let grpc = TcpListener::bind("127.0.0.1:0").await.expect("bind gRPC");
        let admin = TcpListener::bind("127.0.0.1:0").await.expect("bind admin");
        let (grpc_address, admin_address) =
            (grpc.local_addr().unwrap(), admin.local_addr().unwrap());
        let shutdown = Shutdown::new();
        let service = tokio::spawn(run(config, Listeners { grpc, admin }, shutdown.clone()));
        let client = ChatServiceClient::new(
            tonic::transport::Endpoint::from_shared(format!("http://{grpc_address}"))
                .expect("endpoint")
                .timeout(NO_HANG)
                .connect_lazy(),
        );
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while client
            .clone()
            .get_user_chats({
                let someone = user();
                as_user(
                    &someone,
                    GetUserChatsRequest {
                        user_id: someone.clone(),
                        ..Default::default()
                    },
                )
            })
            .await
            .is_err()
        {
            assert!(
                !service.is_finished(),
                "chat stopped at start-up (MongoDB at TEST_MONGODB_URI, Redis at TEST_REDIS_URL?): {:?}",
                service.await
            );
            assert!(
                tokio::time::Instant::now() < deadline,
                "chat did not serve within 30s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let chat = Self {
            client,
            friendships,
            admin_address,
            cache_prefix,
            shutdown,
            service: Some(service),
            uri: uri.to_owned(),
            database,
        };
        (chat, events)
    }

    /// Stops the service (it must stop cleanly) and drops its database.
    async fn stop(mut self) {
        self.shutdown.trigger();
        let service = self.service.take().expect("running");
        tokio::time::timeout(Duration::from_secs(15), service)
            .await
            .expect("chat shuts down within 15s")
            .expect("chat task")
            .expect("chat run");
        if let Ok(client) = mongodb::Client::with_uri_str(&self.uri).await {
            client.database(&self.database).drop().await.ok();
        }
    }

    /// A direct chat between two fresh friends: (chat, a, b).
    async fn direct_chat(&self) -> (String, String, String) {
        let (a, b) = (user(), user());
        self.friendships.befriend(parse(&a), parse(&b));
        let chat = self
            .client
            .clone()
            .create_chat(as_user(
                &a,
                CreateChatRequest {
                    creator_id: a.clone(),
                    participant_ids: vec![b.clone()],
                },
            ))
            .await
            .expect("CreateChat between friends")
            .into_inner();
        (chat.chat_id, a, b)
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
            .send_message(as_user(author, request))
            .await
            .map(tonic::Response::into_inner)
    }

    async fn history(
        &self,
        chat: &str,
        reader: &str,
        before: &str,
        limit: u32,
    ) -> GetChatHistoryResponse {
        let request = GetChatHistoryRequest {
            chat_id: chat.into(),
            reader_id: reader.into(),
            before: before.into(),
            limit,
        };
        self.client
            .clone()
            .get_chat_history(as_user(reader, request))
            .await
            .expect("GetChatHistory")
            .into_inner()
    }
}

impl Drop for MongoChat {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

fn test_mongodb_uri() -> String {
    std::env::var("TEST_MONGODB_URI")
        .or_else(|_| std::env::var("MONGODB_URI"))
        .unwrap_or_else(|_| {
            panic!("TEST_MONGODB_URI (or MONGODB_URI) must point at a MongoDB 6+ server for the mongo_* tests")
        })
}

fn user() -> String {
    UserId::new_random().to_string()
}

fn parse(id: &str) -> UserId {
    UserId::parse("test", id).expect("test ids are UUIDs")
}

fn ids(messages: &[Message]) -> Vec<String> {
    messages.iter().map(|m| m.message_id.clone()).collect()
}

/// The `MessageSent` events on the bus until `quiet` passes without one:
/// message id -> the event ids that announced it.
async fn announcements(
    events: &mut UnboundedReceiver<BusMessage>,
    chat: &str,
    quiet: Duration,
) -> HashMap<String, HashSet<String>> {
    let mut announced: HashMap<String, HashSet<String>> = HashMap::new();
    while let Ok(Some(message)) = tokio::time::timeout(quiet, events.recv()).await {
        assert_eq!(message.key, chat, "a chat's events are keyed by the chat");
        if let Some(Payload::MessageSent(sent)) = message.event.payload {
            announced
                .entry(sent.message_id)
                .or_default()
                .insert(message.event.event_id);
        }
    }
    announced
}

// ---- what the store decides, through the API -------------------------------------------

#[tokio::test]
async fn mongo_service_history_pages_return_every_message_once_while_new_ones_arrive() {
    let (chat, _events) = MongoChat::start(&test_mongodb_uri(), |_| {}).await;
    let chat = Arc::new(chat);
    let (chat_id, a, b) = chat.direct_chat().await;
    let mut existing = Vec::new();
    for n in 0..60 {
        let author = if n % 3 == 0 { &b } else { &a };
        existing.push(
            chat.send(&chat_id, author, &format!("m{n}"), "")
                .await
                .unwrap(),
        );
    }
    let sender = {
        let (chat, chat_id, a) = (Arc::clone(&chat), chat_id.clone(), a.clone());
        tokio::spawn(async move {
            for n in 0..30 {
                chat.send(&chat_id, &a, &format!("late {n}"), "")
                    .await
                    .expect("concurrent send");
            }
        })
    };

    let mut seen: Vec<Message> = Vec::new();
    let mut before = String::new();
    loop {
        let page = chat.history(&chat_id, &b, &before, 7).await;
        assert!(page.messages.len() <= 7);
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
            "{} was skipped",
            message.content
        );
    }
    assert_eq!(chat.history(&chat_id, &a, "", 100).await.messages.len(), 90);
    Arc::into_inner(chat)
        .expect("the sender is done")
        .stop()
        .await;
}

#[tokio::test]
async fn mongo_service_concurrent_retries_of_one_send_store_and_announce_one_message() {
    let (chat, mut events) = MongoChat::start(&test_mongodb_uri(), |_| {}).await;
    let chat = Arc::new(chat);
    let (chat_id, a, b) = chat.direct_chat().await;
    let attempts = (0..8).map(|n| {
        let (chat, chat_id, a) = (Arc::clone(&chat), chat_id.clone(), a.clone());
        tokio::spawn(async move {
            chat.send(&chat_id, &a, &format!("attempt {n}"), "same-key")
                .await
        })
    });
    let results: Vec<Message> = futures::future::join_all(attempts)
        .await
        .into_iter()
        .map(|joined| joined.unwrap().expect("every retry succeeds"))
        .collect();
    let returned: HashSet<&String> = results.iter().map(|m| &m.message_id).collect();
    assert_eq!(
        returned.len(),
        1,
        "every retry returns the one stored message"
    );
    let history = chat.history(&chat_id, &b, "", 10).await.messages;
    assert_eq!(ids(&history), vec![results[0].message_id.clone()]);

    let announced = announcements(&mut events, &chat_id, Duration::from_secs(2)).await;
    assert_eq!(announced.len(), 1, "one MessageSent: {announced:?}");
    assert_eq!(announced[&results[0].message_id].len(), 1);
    Arc::into_inner(chat)
        .expect("attempts are done")
        .stop()
        .await;
}

#[tokio::test]
async fn mongo_service_cached_history_is_never_stale() {
    let (chat, _events) = MongoChat::start(&test_mongodb_uri(), |_| {}).await;
    let (chat_id, a, b) = chat.direct_chat().await;
    let first = chat.send(&chat_id, &a, "one", "").await.unwrap();
    assert_eq!(
        ids(&chat.history(&chat_id, &b, "", 50).await.messages),
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

    let second = chat.send(&chat_id, &b, "two", "").await.unwrap();
    let page = chat.history(&chat_id, &a, "", 50).await;
    assert_eq!(
        ids(&page.messages),
        vec![second.message_id, first.message_id]
    );
    let _: () = redis.del(keys).await.unwrap();
    chat.stop().await;
}

// ---- the server dies -------------------------------------------------------------------

const SENDS: usize = 24;
/// Sends that land before the server is killed.
const SENDS_BEFORE_KILL: usize = 8;
/// `uri` with its (single) host:port replaced by `address`.
fn with_address(uri: &str, address: SocketAddr) -> String {
    let (scheme, rest) = uri.split_once("://").expect("a mongodb:// URI");
    let host_start = rest.find('@').map_or(0, |at| at + 1);
    let host_end = rest[host_start..]
        .find(['/', '?'])
        .map_or(rest.len(), |end| host_start + end);
    format!(
        "{scheme}://{}{address}{}",
        &rest[..host_start],
        &rest[host_end..]
    )
}

async fn wait_for_port(address: SocketAddr, what: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(address).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} did not listen on {address} within 30s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A MongoDB-wire server this test may kill and bring back on the same address.
enum KillableServer {
    Gateway {
        binary: String,
        config: tempfile_path::TempPath,
        address: SocketAddr,
        process: Option<Child>,
    },
    Relay {
        upstream: String,
        address: SocketAddr,
        task: Option<JoinHandle<()>>,
    },
}

impl KillableServer {
    async fn start(base_uri: &str) -> (Self, String) {
        let address: SocketAddr = ([127, 0, 0, 1], testing::free_port()).into();
        let mut server = match (
            std::env::var("TEST_DOCUMENTDB_GATEWAY"),
            std::env::var("TEST_DOCUMENTDB_GATEWAY_CONFIG"),
        ) {
            (Ok(binary), Ok(config)) => {
                let mut settings: serde_json::Value = serde_json::from_str(
                    &std::fs::read_to_string(&config).expect("read the gateway configuration"),
                )
                .expect("gateway configuration is JSON");
                settings["GatewayListenPort"] = address.port().into();
                let config = tempfile_path::TempPath::write(
                    &format!("chat-outage-gateway-{}.json", address.port()),
                    &settings.to_string(),
                );
                Self::Gateway {
                    binary,
                    config,
                    address,
                    process: None,
                }
            }
            _ => Self::Relay {
                upstream: upstream_address(base_uri),
                address,
                task: None,
            },
        };
        server.revive().await;
        (server, with_address(base_uri, address))
    }

    fn address(&self) -> SocketAddr {
        match self {
            Self::Gateway { address, .. } | Self::Relay { address, .. } => *address,
        }
    }

    async fn revive(&mut self) {
        match self {
            Self::Gateway {
                binary,
                config,
                process,
                ..
            } => {
                let child = Command::new(binary.as_str())
                    .arg(config.path())
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("start a DocumentDB gateway");
                *process = Some(child);
            }
            Self::Relay {
                upstream,
                address,
                task,
            } => {
                let listener = TcpListener::bind(*address).await.expect("bind the relay");
                *task = Some(tokio::spawn(relay(listener, upstream.clone())));
            }
        }
        wait_for_port(self.address(), "the MongoDB-wire server").await;
    }

    /// SIGKILL (the gateway) or drop every connection and stop listening (the relay).
    fn kill(&mut self) {
        match self {
            Self::Gateway { process, .. } => {
                if let Some(mut child) = process.take() {
                    child.kill().ok();
                    child.wait().ok();
                }
            }
            Self::Relay { task, .. } => {
                if let Some(task) = task.take() {
                    task.abort();
                }
            }
        }
    }
}

impl Drop for KillableServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn upstream_address(uri: &str) -> String {
    let rest = uri.split_once("://").expect("a mongodb:// URI").1;
    let rest = rest.rsplit_once('@').map_or(rest, |(_, hosts)| hosts);
    let host = rest.split(['/', '?']).next().unwrap_or(rest);
    assert!(
        !host.contains(','),
        "the outage test needs a single-host MONGODB_URI, not {host}"
    );
    if host.contains(':') {
        host.to_owned()
    } else {
        format!("{host}:27017")
    }
}

/// Relays every connection to `upstream`; aborting the task closes them all.
async fn relay(listener: TcpListener, upstream: String) {
    let mut connections = tokio::task::JoinSet::new();
    while let Ok((mut inbound, _)) = listener.accept().await {
        let upstream = upstream.clone();
        connections.spawn(async move {
            if let Ok(mut outbound) = TcpStream::connect(&upstream).await {
                tokio::io::copy_bidirectional(&mut inbound, &mut outbound)
                    .await
                    .ok();
            }
        });
    }
}

/// A named file in the temp dir, removed on drop (the gateway reads its config from a path).
mod tempfile_path {
    pub struct TempPath(std::path::PathBuf);

    impl TempPath {
        pub fn write(name: &str, contents: &str) -> Self {
            let path = std::env::temp_dir().join(name);
            std::fs::write(&path, contents).expect("write a temp file");
            Self(path)
        }

        pub fn path(&self) -> &std::path::Path {
            &self.0
        }
    }

    impl Drop for TempPath {
        fn drop(&mut self) {
            std::fs::remove_file(&self.0).ok();
        }
    }
}

/// GET on the admin server: the status line.
async fn http_status(address: SocketAddr, path: &str) -> String {
    let mut stream = TcpStream::connect(address).await.expect("admin server");
    let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response.lines().next().unwrap_or_default().to_owned()
}

async fn wait_for_readiness(admin: SocketAddr, ready: bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let status = http_status(admin, "/readyz").await;
        if status.contains(" 200 ") == ready {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "/readyz should say {} within 30s; last: {status}",
            if ready { "ready" } else { "not ready" },
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn mongo_server_killed_mid_sends_answers_unavailable_then_recovers_losing_nothing() {
    let (mut server, uri) = KillableServer::start(&test_mongodb_uri()).await;
    let (chat, mut events) = MongoChat::start(&uri, |config| {
        if let StoreConfig::MongoDb(store) = &mut config.store {
            // Events of sends that failed half-way are given up on quickly here.
            store.orphan_grace = Duration::from_secs(3);
        }
    })
    .await;
    let chat = Arc::new(chat);
    let (chat_id, a, b) = chat.direct_chat().await;
    // Start from a quiet bus: only MessageSent events matter below.
    while events.try_recv().is_ok() {}

    // A client that sends SENDS messages one after another, retrying each (same client
    // message id) until it is stored, as a well-behaved app does.
    let landed = Arc::new(AtomicUsize::new(0));
    let unavailable = Arc::new(AtomicUsize::new(0));
    let sender = tokio::spawn({
        let (chat, chat_id, a) = (Arc::clone(&chat), chat_id.clone(), a.clone());
        let (landed, unavailable) = (Arc::clone(&landed), Arc::clone(&unavailable));
        async move {
            let mut stored = Vec::new();
            for n in 0..SENDS {
                loop {
                    let started = tokio::time::Instant::now();
                    match chat
                        .send(&chat_id, &a, &format!("message {n}"), &format!("send-{n}"))
                        .await
                    {
                        Ok(message) => {
                            stored.push(message);
                            landed.fetch_add(1, Ordering::SeqCst);
                            break;
                        }
                        Err(status) => {
                            assert_eq!(
                                status.code(),
                                Code::Unavailable,
                                "a send while the store is down must fail as UNAVAILABLE (after {:?}): {status:?}",
                                started.elapsed()
                            );
                            unavailable.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                    }
                }
            }
            stored
        }
    });

    while landed.load(Ordering::SeqCst) < SENDS_BEFORE_KILL {
        assert!(
            !sender.is_finished(),
            "the sender stopped early: {sender:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.kill();
    wait_for_readiness(chat.admin_address, false).await;
    // Stay down until the sender has been refused a few times.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while unavailable.load(Ordering::SeqCst) < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no send was refused while the server was down"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let landed_while_down = landed.load(Ordering::SeqCst);
    eprintln!(
        "server down: {landed_while_down} of {SENDS} sends stored, {} refused as UNAVAILABLE",
        unavailable.load(Ordering::SeqCst)
    );
    assert!(
        landed_while_down < SENDS,
        "the outage should interrupt the run of sends"
    );
    server.revive().await;
    wait_for_readiness(chat.admin_address, true).await;

    let stored = tokio::time::timeout(Duration::from_secs(120), sender)
        .await
        .expect("the sends finish once the server is back")
        .expect("sender");

    // Nothing lost, nothing doubled: each send is stored once, in order, and is what the
    // send returned.
    let history = chat.history(&chat_id, &b, "", 100).await.messages;
    let contents: Vec<String> = history.iter().rev().map(|m| m.content.clone()).collect();
    let expected: Vec<String> = (0..SENDS).map(|n| format!("message {n}")).collect();
    assert_eq!(contents, expected);
    let stored_ids = ids(&stored);
    let history_ids: Vec<String> = history.iter().rev().map(|m| m.message_id.clone()).collect();
    assert_eq!(
        history_ids, stored_ids,
        "every send returned the stored message"
    );

    // Every stored message is announced under one event id; no event announces a message
    // that was never stored (a send that failed half-way leaves an event that is dropped
    // after the orphan grace).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut announced: HashMap<String, HashSet<String>> = HashMap::new();
    while stored_ids.iter().any(|id| !announced.contains_key(id)) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "every stored message should be announced within 60s; {} of {SENDS} were",
            announced.len()
        );
        for (message, event_ids) in
            announcements(&mut events, &chat_id, Duration::from_millis(500)).await
        {
            announced.entry(message).or_default().extend(event_ids);
        }
    }
    let announced_ids: HashSet<&String> = announced.keys().collect();
    assert_eq!(announced_ids, stored_ids.iter().collect::<HashSet<_>>());
    for (message, event_ids) in &announced {
        assert_eq!(
            event_ids.len(),
            1,
            "message {message} announced twice: {event_ids:?}"
        );
    }
    Arc::into_inner(chat)
        .expect("the sender is done")
        .stop()
        .await;
}
