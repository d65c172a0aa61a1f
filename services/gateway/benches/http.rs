//! `make bench` (or `cargo bench -p messenger-gateway --bench http` with the test
//! components up): the gateway in front of the real auth, users, friends and chat services
//! (in this process, on PostgreSQL, Redis and Kafka), loaded over loopback HTTP at a fixed
//! concurrency. Figures: a route that answers from the gateway's own middleware stack (the
//! floor), history read, send message and login — each with throughput and p50/p99 — then
//! 10,000 idle event streams (memory per connection, held by a child process so neither
//! side runs out of file descriptors) and the delivery delay of messages fanned out to
//! 1,000 open streams. Numbers and how they were made: docs/benchmarks.md.

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use messenger_common::Shutdown;
use messenger_common::grpc::Listeners;
use messenger_common::testing::{self, LatencySummary, TestDatabase};
use messenger_gateway::config::PeersConfig;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const PASSWORD: &str = "correct horse battery staple";
const CONCURRENCY: usize = 16;

fn lookup(mut vars: HashMap<&'static str, String>) -> impl Fn(&str) -> Option<String> {
    vars.insert("INTERNAL_AUTH_KEY", testing::test_key_secret().to_owned());
    move |name| vars.get(name).cloned()
}

async fn bind() -> Listeners {
    Listeners {
        grpc: TcpListener::bind("127.0.0.1:0").await.expect("bind"),
        admin: TcpListener::bind("127.0.0.1:0").await.expect("bind"),
    }
}

fn url(listeners: &Listeners) -> String {
    format!("http://{}", listeners.grpc.local_addr().expect("address"))
}

/// The four services and the gateway in this process; returns the gateway's address.
/// Starts the four services and the gateway; returns the gateway's API and admin addresses.
async fn start(shutdown: &Shutdown, databases: &[TestDatabase; 3]) -> (SocketAddr, SocketAddr) {
    let (redis, kafka, prefix) = (
        testing::redis_url(),
        testing::kafka_brokers(),
        testing::unique_prefix(),
    );
    let (auth, users, friends, chat) = (bind().await, bind().await, bind().await, bind().await);
    let peers = PeersConfig {
        auth_url: url(&auth),
        users_url: url(&users),
        friends_url: url(&friends),
        chat_url: url(&chat),
    };
    let auth_config = messenger_auth::Config::from_lookup(lookup(HashMap::from([
        ("DATABASE_URL", databases[0].url().to_owned()),
        ("REDIS_URL", redis.clone()),
        ("KAFKA_BROKERS", kafka.clone()),
        ("AUTH_REDIS_PREFIX", format!("{prefix}:auth")),
        // Every registration here comes from loopback: the per-client limit would end the
        // phase after 20; it measures the hashing, not the limit.
        ("AUTH_REGISTER_MAX_PER_CLIENT", "1000000".to_owned()),
    ])))
    .expect("auth config");
    let users_config = messenger_users::Config::from_lookup(lookup(HashMap::from([
        ("DATABASE_URL", databases[1].url().to_owned()),
        ("REDIS_URL", redis.clone()),
        ("KAFKA_BROKERS", kafka.clone()),
        ("USERS_REDIS_PREFIX", format!("{prefix}:users")),
        ("USERS_CONSUMER_GROUP", format!("{prefix}-users")),
    ])))
    .expect("users config");
    let friends_config = messenger_friends::Config::from_lookup(lookup(HashMap::from([
        ("DATABASE_URL", databases[2].url().to_owned()),
        ("REDIS_URL", redis.clone()),
        ("KAFKA_BROKERS", kafka.clone()),
        ("USERS_URL", peers.users_url.clone()),
        ("FRIENDS_REDIS_PREFIX", format!("{prefix}:friends")),
    ])))
    .expect("friends config");
    let chat_config = messenger_chat::Config::from_lookup(lookup(HashMap::from([
        ("REDIS_URL", redis.clone()),
        ("KAFKA_BROKERS", kafka.clone()),
        ("FRIENDS_URL", peers.friends_url.clone()),
        ("USERS_URL", peers.users_url.clone()),
        ("CHAT_REDIS_PREFIX", format!("{prefix}:chat")),
        ("CHAT_STORE", "memory".to_owned()),
    ])))
    .expect("chat config");
    tokio::spawn(messenger_auth::run(auth_config, auth, shutdown.clone()));
    tokio::spawn(messenger_users::run(users_config, users, shutdown.clone()));
    tokio::spawn(messenger_friends::run(
        friends_config,
        friends,
        shutdown.clone(),
    ));
    tokio::spawn(messenger_chat::run(chat_config, chat, shutdown.clone()));

    let mut config = messenger_gateway::Config::from_lookup(lookup(HashMap::from([
        ("AUTH_URL", peers.auth_url.clone()),
        ("USERS_URL", peers.users_url.clone()),
        ("FRIENDS_URL", peers.friends_url.clone()),
        ("CHAT_URL", peers.chat_url.clone()),
        ("KAFKA_BROKERS", kafka),
        // The token cache, as deployed (every replica shares the app's Redis).
        ("REDIS_URL", redis.clone()),
        ("GATEWAY_REDIS_PREFIX", format!("{prefix}:gateway")),
        ("GATEWAY_LOGIN_PER_MINUTE", "1000000".to_owned()),
        ("GATEWAY_REGISTER_PER_MINUTE", "1000000".to_owned()),
    ])))
    .expect("gateway config");
    config.stream.max_streams_per_user = 20_000;
    let listeners = messenger_gateway::Listeners {
        http: TcpListener::bind("127.0.0.1:0").await.expect("bind"),
        admin: TcpListener::bind("127.0.0.1:0").await.expect("bind"),
    };
    let address = listeners.http.local_addr().expect("address");
    let admin = listeners.admin.local_addr().expect("address");
    tokio::spawn(messenger_gateway::run(config, listeners, shutdown.clone()));
    (address, admin)
}

struct Client {
    http: reqwest::Client,
    base: String,
}

impl Client {
    /// Sends one request and waits for the answer's head.
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> reqwest::Response {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        request.send().await.expect("the gateway answers")
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let response = self.send(method, path, token, body).await;
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// The status of a call whose body is read but not parsed: under load the client does
    /// for every measure what it does for the floor, so the ratios compare gateway work.
    async fn status(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> u16 {
        let response = self.send(method, path, Some(token), body).await;
        let status = response.status().as_u16();
        let _ = response.bytes().await;
        status
    }

    /// Registers and signs in `nickname`, waiting for the profile; returns (id, token).
    async fn person(&self, nickname: &str) -> (String, String) {
        let email = format!("{nickname}@example.org");
        let deadline = Instant::now() + Duration::from_secs(60);
        let registered = loop {
            let (status, body) = self
                .call(
                    reqwest::Method::POST,
                    "/v1/auth/register",
                    None,
                    Some(json!({"email": email, "password": PASSWORD, "nickname": nickname})),
                )
                .await;
            if status == 201 {
                break body;
            }
            assert!(Instant::now() < deadline, "register: {status} {body}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let (_, login) = self
            .call(
                reqwest::Method::POST,
                "/v1/auth/login",
                None,
                Some(json!({"email": email, "password": PASSWORD})),
            )
            .await;
        let token = login["access_token"].as_str().expect("token").to_owned();
        while self
            .call(reqwest::Method::GET, "/v1/users/me", Some(&token), None)
            .await
            .0
            != 200
        {
            assert!(Instant::now() < deadline, "no profile");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        (registered["user_id"].as_str().unwrap().to_owned(), token)
    }
}

/// `total` requests made by `CONCURRENCY` workers; prints throughput and latencies.
async fn load<F, Fut>(name: &str, total: usize, request: F) -> f64
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = u16> + Send,
{
    let request = Arc::new(request);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let (request, next) = (Arc::clone(&request), Arc::clone(&next));
            tokio::spawn(async move {
                let mut samples = Vec::new();
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= total {
                        break samples;
                    }
                    let began = Instant::now();
                    let status = request(i).await;
                    assert!(status < 300, "{status}");
                    samples.push(began.elapsed());
                }
            })
        })
        .collect();
    let mut samples = Vec::new();
    for worker in workers {
        samples.extend(worker.await.expect("worker"));
    }
    let elapsed = started.elapsed().as_secs_f64();
    let throughput = total as f64 / elapsed;
    let summary = LatencySummary::of(samples).expect("samples");
    println!(
        "{name:<28} {throughput:>8.0} req/s  p50 {:>8.2?}  p99 {:>8.2?}  ({total} requests, concurrency {CONCURRENCY})",
        summary.p50, summary.p99
    );
    throughput
}

fn resident_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Opens one event stream and reads its response head.
async fn open_stream(address: SocketAddr, token: &str) -> TcpStream {
    let mut stream = TcpStream::connect(address).await.expect("connect");
    let request = format!(
        "GET /v1/events HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {token}\r\nAccept: text/event-stream\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).await.expect("response head");
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    stream
}

/// Child mode: hold `count` idle streams until stdin closes.
fn hold_streams(address: SocketAddr, token: String, count: usize) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let mut streams = Vec::with_capacity(count);
        for _ in 0..count {
            streams.push(open_stream(address, &token).await);
        }
        println!("ready");
        std::io::stdout().flush().expect("flush");
        let _ = tokio::task::spawn_blocking(|| {
            let mut line = String::new();
            let _ = std::io::stdin().lock().read_line(&mut line);
        })
        .await;
        drop(streams);
    });
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(position) = args.iter().position(|a| a == "--hold-streams") {
        let address = args[position + 1].parse().expect("address");
        let count = args[position + 3].parse().expect("count");
        hold_streams(address, args[position + 2].clone(), count);
        return;
    }
    // `cargo test --benches` runs this without `--bench`: keep that run short.
    let quick = !args.iter().any(|a| a == "--bench");
    let (requests, logins, idle, fanout, messages) = if quick {
        (40, 4, 20, 10, 2)
    } else {
        (20_000, 200, 10_000, 1_000, 20)
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let databases = [TestDatabase::create().await, TestDatabase::create().await, TestDatabase::create().await];
        let shutdown = Shutdown::new();
        let (address, admin) = start(&shutdown, &databases).await;
        let client = Arc::new(Client {
            http: { messenger_common::tls::install_crypto_provider(); reqwest::Client::builder() }.pool_max_idle_per_host(CONCURRENCY * 2).build().expect("client"),
            base: format!("http://{address}"),
        });
        let tag = &uuid::Uuid::new_v4().simple().to_string()[..8];
        let (alice_id, alice) = client.person(&format!("alice{tag}")).await;
        let (bob_id, bob) = client.person(&format!("bob{tag}")).await;
        let _ = alice_id;
        let nickname = format!("bob{tag}");
        client.call(reqwest::Method::POST, "/v1/friends/requests", Some(&alice), Some(json!({"nickname": nickname}))).await;
        client.call(reqwest::Method::POST, &format!("/v1/friends/requests/alice{tag}/accept"), Some(&bob), None).await;
        let (status, chat) = client.call(reqwest::Method::POST, "/v1/chats", Some(&alice), Some(json!({"participant_ids": [bob_id]}))).await;
        assert_eq!(status, 201, "{chat}");
        let messages_path = format!("/v1/chats/{}/messages", chat["chat_id"].as_str().unwrap());
        for i in 0..50 {
            client.call(reqwest::Method::POST, &messages_path, Some(&alice), Some(json!({"content": format!("warm-up {i}")}))).await;
        }
        println!("gateway at {address}; {CONCURRENCY} concurrent clients on loopback");

        // Idle streams, held by a child process, before the load phases fill the allocator.
        let before = resident_kib();
        let mut child = Command::new(std::env::current_exe().expect("own path"))
            .args(["--hold-streams", &address.to_string(), &bob, &idle.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("child");
        let mut ready = String::new();
        tokio::task::block_in_place(|| {
            std::io::BufReader::new(child.stdout.as_mut().expect("stdout")).read_line(&mut ready)
        })
        .expect("child output");
        assert_eq!(ready.trim(), "ready");
        tokio::time::sleep(Duration::from_secs(1)).await;
        let after = resident_kib();
        println!(
            "{idle} idle event streams: gateway process grew {} KiB, {:.1} KiB per connection",
            after.saturating_sub(before),
            after.saturating_sub(before) as f64 / idle as f64
        );
        drop(child.stdin.take());
        let _ = child.wait();

        let floor = {
            let client = Arc::clone(&client);
            load("floor (404 problem)", requests, move |_| {
                let client = Arc::clone(&client);
                async move {
                    let response = client.http.get(format!("{}/v1/floor", client.base)).send().await.expect("answer");
                    let _ = response.bytes().await;
                    200
                }
            })
            .await
        };
        let history = {
            let (client, bob, path) = (Arc::clone(&client), bob.clone(), messages_path.clone());
            load("history read (20 messages)", requests, move |_| {
                let (client, bob, path) = (Arc::clone(&client), bob.clone(), path.clone());
                async move { client.status(reqwest::Method::GET, &format!("{path}?limit=20"), &bob, None).await }
            })
            .await
        };
        let send = {
            let (client, alice, path) = (Arc::clone(&client), alice.clone(), messages_path.clone());
            load("send message", requests / 4, move |i| {
                let (client, alice, path) = (Arc::clone(&client), alice.clone(), path.clone());
                async move { client.status(reqwest::Method::POST, &path, &alice, Some(json!({"content": format!("load {i}")}))).await }
            })
            .await
        };
        {
            // One account per login: auth counts an attempt against its account until it
            // succeeds, so concurrent logins of one account would trip its failure limit.
            let accounts: Vec<(String, String)> = (0..logins)
                .map(|i| (format!("login{i}{tag}@example.org"), format!("login{i}{tag}")))
                .collect();
            let registering = Arc::new(accounts.clone());
            let client_for_register = Arc::clone(&client);
            load("register (argon2id)", logins, move |i| {
                let (client, accounts) = (Arc::clone(&client_for_register), Arc::clone(&registering));
                async move {
                    let (email, nickname) = &accounts[i];
                    let body = json!({"email": email, "password": PASSWORD, "nickname": nickname});
                    client.call(reqwest::Method::POST, "/v1/auth/register", None, Some(body)).await.0
                }
            })
            .await;
            let accounts = Arc::new(accounts);
            let client = Arc::clone(&client);
            load("login (argon2id)", logins, move |i| {
                let (client, accounts) = (Arc::clone(&client), Arc::clone(&accounts));
                async move { client.call(reqwest::Method::POST, "/v1/auth/login", None, Some(json!({"email": accounts[i].0, "password": PASSWORD}))).await.0 }
            })
            .await;
        }
        println!("ratios to the floor: history read {:.0}%, send {:.0}%", 100.0 * history / floor, 100.0 * send / floor);
        // Whether the load was answered from the token cache, as a deployed gateway's is.
        let metrics = client.http.get(format!("http://{admin}/metrics")).send().await.expect("metrics").text().await.expect("metrics");
        let counter = |name: &str| -> String {
            metrics.lines().find(|l| l.starts_with(name)).and_then(|l| l.split_whitespace().nth(1)).unwrap_or("0").to_owned()
        };
        println!(
            "token cache: {} hits, {} misses",
            counter("gateway_token_cache_hits_total"),
            counter("gateway_token_cache_misses_total")
        );

        // Delivery delay of messages fanned out to `fanout` open streams.
        let mut receivers = Vec::new();
        let (sender, mut arrivals) = tokio::sync::mpsc::unbounded_channel::<(usize, Instant)>();
        for _ in 0..fanout {
            let stream = open_stream(address, &bob).await;
            let sender = sender.clone();
            receivers.push(tokio::spawn(async move {
                let mut lines = tokio_util_lines(stream);
                while let Some(line) = lines.next().await {
                    if let Some(n) = line.strip_prefix("data:").and_then(|d| d.split("fanout ").nth(1)).and_then(|t| t.split('"').next()).and_then(|n| n.parse().ok()) {
                        let _ = sender.send((n, Instant::now()));
                    }
                }
            }));
        }
        drop(sender);
        let mut samples = Vec::new();
        for n in 0..messages {
            let sent_at = Instant::now();
            let (status, _) = client.call(reqwest::Method::POST, &messages_path, Some(&alice), Some(json!({"content": format!("fanout {n}")}))).await;
            assert_eq!(status, 201);
            let mut received = 0;
            while received < fanout {
                let (m, at) = tokio::time::timeout(Duration::from_secs(30), arrivals.recv()).await.expect("delivery").expect("open");
                if m == n {
                    samples.push(at - sent_at);
                    received += 1;
                }
            }
        }
        let summary = LatencySummary::of(samples).expect("samples");
        println!(
            "message to {fanout} open streams: delivery p50 {:.2?}, p99 {:.2?} (send → last byte on each stream, {messages} messages)",
            summary.p50, summary.p99
        );
        for receiver in receivers {
            receiver.abort();
        }
        shutdown.trigger();
    });
}

/// Lines of an SSE response body (after its head).
fn tokio_util_lines(stream: TcpStream) -> impl futures::Stream<Item = String> + Unpin {
    use tokio::io::AsyncBufReadExt;
    let lines = tokio::io::BufReader::new(stream).lines();
    Box::pin(futures::stream::unfold(lines, |mut lines| async move {
        match lines.next_line().await {
            Ok(Some(line)) => Some((line, lines)),
            _ => None,
        }
    }))
}
