//! `make bench` (or `cargo bench -p messenger-chat --bench rpc` with the test components
//! up): the chat service (`run`) on port 0, called through the generated gRPC client,
//! once on its in-memory store and once on the MongoDB-wire server at `TEST_MONGODB_URI`
//! (DocumentDB from `scripts/test-deps.sh`, or a user's MongoDB). The Redis history cache
//! is off, so history pages are read from the store; events go to the in-process bus
//! (the outbox relay runs, as in production). Prints one line per figure; the numbers are
//! in docs/benchmarks.md.

use std::sync::Arc;
use std::time::{Duration, Instant};

use messenger_chat::config::StoreConfig;
use messenger_chat::domain::UserId;
use messenger_chat::friendship::InMemoryFriendships;
use messenger_chat::store::MongoStoreConfig;
use messenger_chat::{Config, Listeners, run};
use messenger_common::Shutdown;
use messenger_common::events::InMemoryEventBus;
use messenger_common::testing::LatencySummary;
use messenger_common::testing::as_user;
use messenger_proto::v1::chat_service_client::ChatServiceClient;
use messenger_proto::v1::{
    CreateChatRequest, GetChatHistoryRequest, GetUserChatsRequest, SendMessageRequest,
};
use tokio::net::TcpListener;
use tonic::transport::Channel;

struct Sizes {
    sends: usize,
    pages: usize,
    concurrency: usize,
    history_length: usize,
}

struct Bench {
    client: ChatServiceClient<Channel>,
    friendships: Arc<InMemoryFriendships>,
}

impl Bench {
    async fn chat(&self) -> (String, String) {
        let (a, b) = (UserId::new_random(), UserId::new_random());
        self.friendships.befriend(a, b);
        let chat = self
            .client
            .clone()
            .create_chat(as_user(
                a.to_string(),
                CreateChatRequest {
                    creator_id: a.to_string(),
                    participant_ids: vec![b.to_string()],
                },
            ))
            .await
            .expect("CreateChat")
            .into_inner();
        (chat.chat_id, a.to_string())
    }

    async fn send(&self, chat: &str, author: &str, n: usize) {
        self.client
            .clone()
            .send_message(as_user(
                author,
                SendMessageRequest {
                    chat_id: chat.to_owned(),
                    author_id: author.to_owned(),
                    content: format!("benchmark message {n}"),
                    client_message_id: format!("bench-{n}"),
                },
            ))
            .await
            .expect("SendMessage");
    }

    async fn page(&self, chat: &str, reader: &str, before: &str) -> String {
        let page = self
            .client
            .clone()
            .get_chat_history(as_user(
                reader,
                GetChatHistoryRequest {
                    chat_id: chat.to_owned(),
                    reader_id: reader.to_owned(),
                    before: before.to_owned(),
                    limit: 50,
                },
            ))
            .await
            .expect("GetChatHistory")
            .into_inner();
        assert_eq!(page.messages.len(), 50, "a full page");
        page.next_before
    }
}

async fn measure(name: &str, store: StoreConfig, sizes: &Sizes) {
    let friendships = Arc::new(InMemoryFriendships::new());
    let mut config = Config::in_memory(
        InMemoryEventBus::new(),
        Arc::clone(&friendships),
        messenger_common::testing::test_key(),
    );
    config.store = store;
    let grpc = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let admin = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = grpc.local_addr().expect("address");
    let shutdown = Shutdown::new();
    let server = tokio::spawn(run(config, Listeners { grpc, admin }, shutdown.clone()));
    let client = ChatServiceClient::new(
        tonic::transport::Endpoint::from_shared(format!("http://{address}"))
            .expect("endpoint")
            .connect_lazy(),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let someone = UserId::new_random().to_string();
    while client
        .clone()
        .get_user_chats(as_user(
            &someone,
            GetUserChatsRequest {
                user_id: someone.clone(),
                ..Default::default()
            },
        ))
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "chat did not serve within 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let bench = Arc::new(Bench {
        client,
        friendships,
    });

    // SendMessage, one caller, into one chat that grows to `history_length` messages.
    let (chat, author) = bench.chat().await;
    for n in 0..sizes.sends / 10 {
        bench.send(&chat, &author, n).await;
    }
    let warmed = sizes.sends / 10;
    let mut samples = Vec::with_capacity(sizes.sends);
    for n in warmed..warmed + sizes.sends {
        let started = Instant::now();
        bench.send(&chat, &author, n).await;
        samples.push(started.elapsed());
    }
    let send = LatencySummary::of(samples).expect("samples");
    for n in warmed + sizes.sends..sizes.history_length {
        bench.send(&chat, &author, n).await;
    }

    // SendMessage, `concurrency` callers, each into its own chat.
    let per_task = sizes.sends / sizes.concurrency;
    let mut chats = Vec::new();
    for _ in 0..sizes.concurrency {
        chats.push(bench.chat().await);
    }
    let started = Instant::now();
    let tasks: Vec<_> = chats
        .into_iter()
        .map(|(chat, author)| {
            let bench = Arc::clone(&bench);
            tokio::spawn(async move {
                for n in 0..per_task {
                    bench.send(&chat, &author, n).await;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("send task");
    }
    let concurrent_rate = (per_task * sizes.concurrency) as f64 / started.elapsed().as_secs_f64();

    // GetChatHistory: the newest page of 50, and an older page of 50 by cursor.
    let mut newest = Vec::with_capacity(sizes.pages);
    let mut older = Vec::with_capacity(sizes.pages);
    let mut cursor = String::new();
    for _ in 0..sizes.pages {
        let started = Instant::now();
        let next = bench.page(&chat, &author, "").await;
        newest.push(started.elapsed());
        if cursor.is_empty() {
            cursor = next;
        }
        let started = Instant::now();
        bench.page(&chat, &author, &cursor).await;
        older.push(started.elapsed());
    }
    let newest = LatencySummary::of(newest).expect("samples");
    let older = LatencySummary::of(older).expect("samples");

    println!("{name}: SendMessage, one caller: {send}");
    println!(
        "{name}: SendMessage, {} callers: {concurrent_rate:.0} messages/s",
        sizes.concurrency
    );
    println!(
        "{name}: GetChatHistory, newest 50 of {}: {newest}",
        sizes.history_length
    );
    println!("{name}: GetChatHistory, an older 50 by cursor: {older}");

    shutdown.trigger();
    let _ = server.await;
}

fn main() {
    // `cargo test --benches` runs this without `--bench`: keep that run short.
    let quick = !std::env::args().any(|a| a == "--bench");
    let sizes = if quick {
        Sizes {
            sends: 20,
            pages: 5,
            concurrency: 2,
            history_length: 120,
        }
    } else {
        Sizes {
            sends: 2000,
            pages: 300,
            concurrency: 16,
            history_length: 2500,
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        println!(
            "machine: {} logical CPUs",
            std::thread::available_parallelism().map_or(0, |n| n.get())
        );
        measure("memory", StoreConfig::Memory, &sizes).await;
        match std::env::var("TEST_MONGODB_URI").or_else(|_| std::env::var("MONGODB_URI")) {
            Ok(uri) => {
                let database = format!("chat_bench_{}", uuid::Uuid::new_v4().simple());
                measure(
                    "mongodb",
                    StoreConfig::MongoDb(MongoStoreConfig {
                        database: Some(database.clone()),
                        ..MongoStoreConfig::new(&uri)
                    }),
                    &sizes,
                )
                .await;
                let client = mongodb::Client::with_uri_str(&uri)
                    .await
                    .expect("MongoDB client");
                client.database(&database).drop().await.ok();
            }
            Err(_) => println!(
                "mongodb: SKIPPED: TEST_MONGODB_URI is not set (make bench starts DocumentDB)"
            ),
        }
    });
}
