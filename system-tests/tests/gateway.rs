//! The whole messenger through its front door: the real gateway, auth, users, friends and
//! chat binaries as separate processes on PostgreSQL, Redis and the Kafka-protocol
//! broker, driven only over REST (and the event stream) by two people; then a table of
//! bad requests, each a 4xx problem that changes nothing; a direct call to an internal
//! service naming someone else, refused; logout, after which the token and its stream
//! are dead.

#[path = "support/http.rs"]
mod http;

#[path = "support/process.rs"]
mod process;

use std::time::Duration;

use futures::StreamExt;
use messenger_common::identity::{Caller, InternalKey, attach};
use messenger_common::testing;
use messenger_proto::v1::auth_service_client::AuthServiceClient;
use messenger_proto::v1::chat_service_client::ChatServiceClient;
use messenger_proto::v1::{CheckSessionsRequest, GetChatHistoryRequest};
use process::{Backend, Service};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::sync::mpsc;

const PASSWORD: &str = "correct horse battery staple";
/// Bounds every wait for something asynchronous (a profile created from an event, an
/// event on a stream); the test does not measure speed.
const WAIT: Duration = Duration::from_secs(30);

/// A REST client of the gateway, optionally signed in.
#[derive(Clone)]
struct Api {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Api {
    fn new(base: String) -> Self {
        Self {
            http: http::client().build().unwrap(),
            base,
            token: None,
        }
    }

    fn signed_in(&self, token: &str) -> Self {
        Self {
            token: Some(token.to_owned()),
            ..self.clone()
        }
    }

    fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let request = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut request = self.request(method, path);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("the gateway answers");
        read(response).await
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, None).await
    }

    /// `path` must answer `status`; returns the body.
    async fn expect(&self, method: Method, path: &str, body: Option<Value>, status: u16) -> Value {
        let (got, answer) = self.call(method.clone(), path, body).await;
        assert_eq!(got.as_u16(), status, "{method} {path}: {answer}");
        answer
    }
}

async fn read(response: reqwest::Response) -> (StatusCode, Value) {
    let status = response.status();
    let bytes = response.bytes().await.expect("a body");
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// One server-sent event.
#[derive(Debug, Clone)]
struct StreamEvent {
    id: Option<String>,
    kind: String,
    data: Value,
}

/// An open `GET /v1/events`: events as they arrive, and `None` once the server ends it.
struct EventStream {
    events: mpsc::UnboundedReceiver<StreamEvent>,
}

impl EventStream {
    async fn open(request: reqwest::RequestBuilder) -> Self {
        let response = request.send().await.expect("the stream opens");
        assert_eq!(response.status(), 200, "GET /v1/events");
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        let (sender, events) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut body = response.bytes_stream();
            let mut buffer = String::new();
            while let Some(Ok(chunk)) = body.next().await {
                buffer.push_str(&String::from_utf8_lossy(&chunk));
                while let Some(end) = buffer.find("\n\n") {
                    let block: String = buffer.drain(..end + 2).collect();
                    if let Some(event) = parse_event(&block) {
                        let _ = sender.send(event);
                    }
                }
            }
        });
        Self { events }
    }

    /// The next event that is not a heartbeat.
    async fn next(&mut self) -> Option<StreamEvent> {
        tokio::time::timeout(WAIT, self.events.recv())
            .await
            .expect("an event (or the end of the stream) within the wait")
    }

    async fn expect(&mut self, kind: &str) -> StreamEvent {
        let event = self
            .next()
            .await
            .unwrap_or_else(|| panic!("the stream ended before a {kind} event"));
        assert_eq!(event.kind, kind, "{event:?}");
        event
    }
}

fn parse_event(block: &str) -> Option<StreamEvent> {
    let (mut id, mut kind, mut data) = (None, None, String::new());
    for line in block.lines() {
        if let Some(value) = line.strip_prefix("id:") {
            id = Some(value.trim().to_owned());
        } else if let Some(value) = line.strip_prefix("event:") {
            kind = Some(value.trim().to_owned());
        } else if let Some(value) = line.strip_prefix("data:") {
            data.push_str(value.trim_start());
        }
    }
    Some(StreamEvent {
        id,
        kind: kind?,
        data: serde_json::from_str(&data).unwrap_or(Value::Null),
    })
}

struct Person {
    id: String,
    nickname: String,
    token: String,
    api: Api,
}

/// Registers, signs in, and waits for the profile the users service creates from the
/// `UserRegistered` event.
async fn sign_up(api: &Api, nickname: &str) -> Person {
    let email = format!("{nickname}@example.org");
    let registered = api
        .expect(
            Method::POST,
            "/v1/auth/register",
            Some(json!({"email": email, "password": PASSWORD, "nickname": nickname})),
            201,
        )
        .await;
    let login = api
        .expect(
            Method::POST,
            "/v1/auth/login",
            Some(json!({"email": email, "password": PASSWORD})),
            200,
        )
        .await;
    assert_eq!(login["token_type"], "Bearer");
    assert_eq!(login["user_id"], registered["user_id"]);
    let token = login["access_token"].as_str().expect("a token").to_owned();
    let signed_in = api.signed_in(&token);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, profile) = signed_in.get("/v1/users/me").await;
        if status == 200 {
            assert_eq!(profile["nickname"], nickname);
            break;
        }
        assert_eq!(status, 404, "{profile}");
        assert!(
            tokio::time::Instant::now() < deadline,
            "no profile for {nickname}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Person {
        id: registered["user_id"].as_str().unwrap().to_owned(),
        nickname: nickname.to_owned(),
        token,
        api: signed_in,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_people_use_the_whole_messenger_over_rest_and_the_event_stream() {
    let key = testing::test_key_secret().to_owned();
    let mut backend = Backend::start(vec![("CHAT_STORE", "memory".to_owned())]).await;
    // Two replicas, as a Deployment runs them, caching validated tokens and sharing their
    // revocations through Redis: a logout served by one kills the token on the other
    // before it returns, and ends the other's streams of that token too.
    let cache_prefix = format!("{}:gateway", testing::unique_prefix());
    let start_gateway = || {
        Service::start(
            "gateway",
            &[
                backend.peer_env(),
                vec![
                    ("REDIS_URL", testing::redis_url()),
                    ("GATEWAY_REDIS_PREFIX", cache_prefix.clone()),
                    ("KAFKA_BROKERS", testing::kafka_brokers()),
                    ("GATEWAY_EVENTS_HEARTBEAT", "1s".to_owned()),
                    ("GATEWAY_EVENTS_SESSION_RECHECK", "1s".to_owned()),
                ],
            ]
            .concat(),
        )
    };
    let (mut gateway, mut replica) = (start_gateway(), start_gateway());
    gateway.wait_ready();
    replica.wait_ready();
    let api = Api::new(gateway.http_url());

    // --- two people sign up; profiles appear; search finds them ---
    let tag = &uuid::Uuid::new_v4().simple().to_string()[..6];
    let alice = sign_up(&api, &format!("alice{tag}")).await;
    let bob = sign_up(&api, &format!("bob{tag}")).await;
    let found = alice
        .api
        .expect(
            Method::GET,
            &format!("/v1/users?search={}&limit=10", bob.nickname),
            None,
            200,
        )
        .await;
    assert_eq!(found["users"][0]["user_id"], bob.id, "{found}");
    let by_nickname = alice
        .api
        .expect(
            Method::GET,
            &format!("/v1/users/by-nickname/{}", bob.nickname),
            None,
            200,
        )
        .await;
    assert_eq!(by_nickname["user_id"], bob.id);
    let changed = bob
        .api
        .expect(
            Method::PATCH,
            "/v1/users/me",
            Some(json!({"bio": "hi, I am Bob"})),
            200,
        )
        .await;
    assert_eq!(changed["bio"], "hi, I am Bob");
    let seen = alice
        .api
        .expect(Method::GET, &format!("/v1/users/{}", bob.id), None, 200)
        .await;
    assert_eq!(seen["bio"], "hi, I am Bob");

    // --- both listen: Bob with his token, Alice through a single-use ticket ---
    let mut bob_events = EventStream::open(bob.api.request(Method::GET, "/v1/events")).await;
    let ticket = alice
        .api
        .expect(Method::POST, "/v1/events/ticket", None, 201)
        .await["ticket"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut alice_events =
        EventStream::open(api.request(Method::GET, &format!("/v1/events?ticket={ticket}"))).await;
    let (status, reused) = api.get(&format!("/v1/events?ticket={ticket}")).await;
    assert_eq!(status, 401, "a ticket opens one stream only: {reused}");

    // --- friend request, seen live by Bob; accepted, seen live by Alice ---
    alice
        .api
        .expect(
            Method::POST,
            "/v1/friends/requests",
            Some(json!({"nickname": bob.nickname})),
            201,
        )
        .await;
    let request = bob_events.expect("friend_request").await;
    assert_eq!(request.data["from_user_id"], alice.id);
    assert_eq!(request.data["from_nickname"], alice.nickname);
    let inbox = bob
        .api
        .expect(
            Method::GET,
            "/v1/friends/requests?direction=incoming",
            None,
            200,
        )
        .await;
    assert_eq!(
        inbox["requests"][0]["from_nickname"], alice.nickname,
        "{inbox}"
    );
    bob.api
        .expect(
            Method::POST,
            &format!("/v1/friends/requests/{}/accept", alice.nickname),
            None,
            204,
        )
        .await;
    let accepted = alice_events.expect("friend_request_accepted").await;
    assert_eq!(accepted.data["user_id"], bob.id);
    let friends_of_alice = alice
        .api
        .expect(Method::GET, "/v1/friends", None, 200)
        .await;
    assert_eq!(friends_of_alice["friends"][0]["nickname"], bob.nickname);

    // --- a chat; messages, each delivered live to Bob with its content ---
    let chat_view = alice
        .api
        .expect(
            Method::POST,
            "/v1/chats",
            Some(json!({"participant_ids": [bob.id]})),
            201,
        )
        .await;
    let chat_id = chat_view["chat_id"].as_str().unwrap().to_owned();
    let created = bob_events.expect("chat_created").await;
    assert_eq!(created.data["chat_id"], chat_id.as_str());
    let messages = format!("/v1/chats/{chat_id}/messages");
    let mut sent_ids = Vec::new();
    for (n, text) in ["hello Bob", "how are you?", "see you tomorrow"]
        .iter()
        .enumerate()
    {
        let body = json!({"content": text, "client_message_id": format!("m{n}")});
        let sent = alice
            .api
            .expect(Method::POST, &messages, Some(body), 201)
            .await;
        let live = bob_events.expect("message").await;
        assert_eq!(live.data["message"]["content"], *text);
        assert_eq!(live.data["message"]["message_id"], sent["message_id"]);
        sent_ids.push(sent["message_id"].as_str().unwrap().to_owned());
    }
    // A retry with the same client_message_id is the same message, not a second one.
    let retried = alice
        .api
        .expect(
            Method::POST,
            &messages,
            Some(json!({"content": "hello Bob", "client_message_id": "m0"})),
            201,
        )
        .await;
    assert_eq!(retried["message_id"], sent_ids[0].as_str());
    let reply = bob
        .api
        .expect(
            Method::POST,
            &messages,
            Some(json!({"content": "fine, thanks"})),
            201,
        )
        .await;
    // Alice's stream carries her own messages too (her other devices stay in sync),
    // then Bob's reply.
    for own in &sent_ids {
        let echoed = alice_events.expect("message").await;
        assert_eq!(echoed.data["message"]["message_id"], own.as_str());
    }
    let live_reply = alice_events.expect("message").await;
    assert_eq!(
        live_reply.data["message"]["message_id"],
        reply["message_id"]
    );

    // History in pages, newest first.
    let page = bob
        .api
        .expect(Method::GET, &format!("{messages}?limit=2"), None, 200)
        .await;
    let page_texts: Vec<&str> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["content"].as_str().unwrap())
        .collect();
    assert_eq!(page_texts, ["fine, thanks", "see you tomorrow"]);
    let before = page["next_before"].as_str().expect("an older page");
    let older = bob
        .api
        .expect(
            Method::GET,
            &format!("{messages}?limit=2&before={before}"),
            None,
            200,
        )
        .await;
    let older_texts: Vec<&str> = older["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["content"].as_str().unwrap())
        .collect();
    assert_eq!(older_texts, ["how are you?", "hello Bob"]);
    let chats = bob.api.expect(Method::GET, "/v1/chats", None, 200).await;
    assert_eq!(chats["chats"][0]["chat_id"], chat_id.as_str());
    assert_eq!(chats["chats"][0]["last_message"]["content"], "fine, thanks");
    let one = bob
        .api
        .expect(Method::GET, &format!("/v1/chats/{chat_id}"), None, 200)
        .await;
    assert_eq!(one["participant_ids"].as_array().unwrap().len(), 2);

    // Reconnecting with Last-Event-ID replays what was missed.
    let last_seen = live_reply.id.clone().expect("events have ids");
    drop(alice_events);
    let missed = bob
        .api
        .expect(
            Method::POST,
            &messages,
            Some(json!({"content": "are you there?"})),
            201,
        )
        .await;
    let mut again = EventStream::open(
        alice
            .api
            .request(Method::GET, "/v1/events")
            .header("last-event-id", last_seen),
    )
    .await;
    let replayed = again.expect("message").await;
    assert_eq!(replayed.data["message"]["message_id"], missed["message_id"]);
    let mut stale = EventStream::open(
        alice
            .api
            .request(Method::GET, "/v1/events")
            .header("last-event-id", "00000000-0000-7000-8000-000000000000"),
    )
    .await;
    stale.expect("reset").await;
    drop((again, stale));

    // --- bad requests: each a 4xx problem, and nothing changes ---
    let carol = sign_up(&api, &format!("carol{tag}")).await;
    let history_len = || async {
        let page = bob
            .api
            .expect(Method::GET, &format!("{messages}?limit=100"), None, 200)
            .await;
        page["messages"].as_array().unwrap().len()
    };
    let before_bad = history_len().await;
    let huge_body = format!(r#"{{"content":"{}"}}"#, "x".repeat(200 * 1024));
    let long_message = json!({"content": "y".repeat(5000)}).to_string();
    let raw = |person: &Person, method: Method, path: &str, body: &str| {
        person
            .api
            .request(method, path)
            .header("content-type", "application/json")
            .body(body.to_owned())
    };
    let bad_chat = "/v1/chats/not-a-uuid/messages";
    let cases: Vec<(&str, reqwest::RequestBuilder, u16)> = vec![
        (
            "malformed JSON",
            raw(&alice, Method::POST, &messages, "{\"content\": "),
            400,
        ),
        (
            "missing field",
            raw(&alice, Method::POST, &messages, "{}"),
            400,
        ),
        (
            "unknown field",
            raw(
                &alice,
                Method::POST,
                &messages,
                r#"{"content":"x","author_id":"someone"}"#,
            ),
            400,
        ),
        (
            "wrong type",
            raw(&alice, Method::POST, &messages, r#"{"content":42}"#),
            400,
        ),
        (
            "oversized body",
            raw(&alice, Method::POST, &messages, &huge_body),
            413,
        ),
        (
            "oversized message",
            raw(&alice, Method::POST, &messages, &long_message),
            400,
        ),
        (
            "empty message",
            raw(&alice, Method::POST, &messages, r#"{"content":"   "}"#),
            400,
        ),
        (
            "bad chat id",
            raw(&alice, Method::POST, bad_chat, r#"{"content":"x"}"#),
            400,
        ),
        (
            "someone else's chat: send",
            raw(&carol, Method::POST, &messages, r#"{"content":"hi"}"#),
            403,
        ),
        (
            "someone else's chat: read",
            carol.api.request(Method::GET, &messages),
            403,
        ),
        (
            "someone else's chat: view",
            carol
                .api
                .request(Method::GET, &format!("/v1/chats/{chat_id}")),
            404,
        ),
        (
            "chat with a stranger",
            raw(
                &carol,
                Method::POST,
                "/v1/chats",
                &json!({"participant_ids": [alice.id]}).to_string(),
            ),
            403,
        ),
        (
            "bad token",
            api.signed_in("not-a-token")
                .request(Method::POST, &messages)
                .json(&json!({"content": "x"})),
            401,
        ),
        ("no token", api.request(Method::GET, &messages), 401),
        (
            "bad limit",
            bob.api
                .request(Method::GET, &format!("{messages}?limit=lots")),
            400,
        ),
        (
            "unknown query parameter",
            bob.api
                .request(Method::GET, &format!("{messages}?reader_id={}", alice.id)),
            400,
        ),
    ];
    for (what, request, status) in cases {
        let response = request.send().await.expect("the gateway answers");
        let content_type = response.headers().get("content-type").cloned();
        let (got, problem) = read(response).await;
        assert_eq!(got.as_u16(), status, "{what}: {problem}");
        assert_eq!(
            content_type.as_ref().and_then(|v| v.to_str().ok()),
            Some("application/problem+json"),
            "{what}"
        );
        assert_eq!(problem["status"], status, "{what}");
        assert!(
            problem["code"].is_string() && problem["request_id"].is_string(),
            "{what}: {problem}"
        );
    }
    assert_eq!(
        history_len().await,
        before_bad,
        "a bad request changed the chat"
    );

    // --- lists come in pages: friends, requests and chats follow `next_cursor` ---
    carol
        .api
        .expect(
            Method::POST,
            "/v1/friends/requests",
            Some(json!({"nickname": alice.nickname})),
            201,
        )
        .await;
    let waiting = alice
        .api
        .expect(
            Method::GET,
            "/v1/friends/requests?direction=incoming&limit=1",
            None,
            200,
        )
        .await;
    assert_eq!(
        waiting["requests"][0]["from_nickname"], carol.nickname,
        "{waiting}"
    );
    assert!(
        waiting.get("next_cursor").is_none_or(Value::is_null),
        "{waiting}"
    );
    alice
        .api
        .expect(
            Method::POST,
            &format!("/v1/friends/requests/{}/accept", carol.nickname),
            None,
            204,
        )
        .await;
    let first = alice
        .api
        .expect(Method::GET, "/v1/friends?limit=1", None, 200)
        .await;
    assert_eq!(first["friends"][0]["nickname"], bob.nickname, "{first}");
    let cursor = first["next_cursor"].as_str().expect("a second page");
    let second = alice
        .api
        .expect(
            Method::GET,
            &format!("/v1/friends?limit=1&cursor={cursor}"),
            None,
            200,
        )
        .await;
    assert_eq!(second["friends"][0]["nickname"], carol.nickname, "{second}");
    assert!(second["next_cursor"].is_null(), "{second}");
    let with_carol = alice
        .api
        .expect(
            Method::POST,
            "/v1/chats",
            Some(json!({"participant_ids": [carol.id]})),
            201,
        )
        .await;
    let newest = alice
        .api
        .expect(Method::GET, "/v1/chats?limit=1", None, 200)
        .await;
    assert_eq!(
        newest["chats"][0]["chat_id"], with_carol["chat_id"],
        "{newest}"
    );
    let cursor = newest["next_cursor"].as_str().expect("an older page");
    let older = alice
        .api
        .expect(
            Method::GET,
            &format!("/v1/chats?limit=1&cursor={cursor}"),
            None,
            200,
        )
        .await;
    assert_eq!(older["chats"][0]["chat_id"], chat_id.as_str(), "{older}");
    assert!(older["next_cursor"].is_null(), "{older}");
    for bad in [
        "/v1/chats?cursor=not-a-cursor",
        "/v1/chats?limit=0",
        "/v1/friends?cursor=not-a-cursor",
        "/v1/friends/requests?limit=101",
    ] {
        let (status, problem) = alice.api.get(bad).await;
        assert_eq!(status, 400, "{bad}: {problem}");
        assert_eq!(problem["code"], "invalid_argument", "{bad}");
    }

    // --- internal services trust nobody but the gateway ---
    let mut chat_client = ChatServiceClient::connect(backend.chat.url())
        .await
        .expect("chat gRPC");
    let read_alices = || GetChatHistoryRequest {
        chat_id: chat_id.clone(),
        reader_id: alice.id.clone(),
        before: String::new(),
        limit: 10,
    };
    let unsigned = chat_client
        .get_chat_history(read_alices())
        .await
        .unwrap_err();
    assert_eq!(
        unsigned.code(),
        tonic::Code::Unauthenticated,
        "{unsigned:?}"
    );
    let mut as_carol = tonic::Request::new(read_alices());
    attach(
        &mut as_carol,
        &InternalKey::new(&key).unwrap(),
        &Caller::User(carol.id.parse().unwrap()),
    );
    let impersonating = chat_client.get_chat_history(as_carol).await.unwrap_err();
    assert_eq!(
        impersonating.code(),
        tonic::Code::Unauthenticated,
        "{impersonating:?}"
    );
    let mut forged = tonic::Request::new(read_alices());
    attach(
        &mut forged,
        &InternalKey::new("a key the attacker made up, 32+ bytes long").unwrap(),
        &Caller::User(alice.id.parse().unwrap()),
    );
    let forged = chat_client.get_chat_history(forged).await.unwrap_err();
    assert_eq!(forged.code(), tonic::Code::Unauthenticated, "{forged:?}");

    // Which tokens are alive is for the gateway only.
    let mut auth_client = AuthServiceClient::connect(backend.auth.url())
        .await
        .expect("auth gRPC");
    let mut as_user = tonic::Request::new(CheckSessionsRequest {
        token_digests: vec!["0".repeat(64)],
    });
    attach(
        &mut as_user,
        &InternalKey::new(&key).unwrap(),
        &Caller::User(carol.id.parse().unwrap()),
    );
    let refused = auth_client.check_sessions(as_user).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");

    // --- logout: the token is dead at once and its streams end, on every replica ---
    let on_replica = Api::new(replica.http_url()).signed_in(&bob.token);
    let mut bob_on_replica = EventStream::open(on_replica.request(Method::GET, "/v1/events")).await;
    // The replica answers bob from its token cache now (the counter proves it was used).
    let hits = |gateway: &Service| -> u64 {
        let metrics = gateway.admin_get("/metrics").unwrap_or_default();
        metrics
            .lines()
            .find_map(|line| line.strip_prefix("gateway_token_cache_hits_total "))
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or_else(|| panic!("no token cache counter in {metrics}"))
    };
    let before = hits(&replica);
    for _ in 0..2 {
        on_replica
            .expect(Method::GET, "/v1/users/me", None, 200)
            .await;
    }
    assert!(
        hits(&replica) > before,
        "the replica served bob from its cache"
    );
    bob.api
        .expect(Method::POST, "/v1/auth/logout", None, 204)
        .await;
    // No wait: the logout returned only after the replica forgot the token.
    let (status, _) = on_replica.get("/v1/users/me").await;
    assert_eq!(status, 401, "the other replica refuses the token at once");
    for stream in [&mut bob_events, &mut bob_on_replica] {
        loop {
            match stream.next().await {
                None => break,
                Some(event) => assert_ne!(event.kind, "reset", "unexpected {event:?}"),
            }
        }
    }
    let (status, problem) = bob.api.get("/v1/users/me").await;
    assert_eq!(status, 401, "{problem}");
    assert_eq!(problem["code"], "unauthenticated");

    // The gateway counted the requests by route and status.
    let metrics = gateway.admin_get("/metrics").unwrap_or_default();
    assert!(
        metrics.contains(r#"route="/v1/chats/{chat_id}/messages",status="201""#),
        "gateway /metrics: {metrics}"
    );

    let [chat, friends, users, auth] = backend.callers_first();
    for service in [&mut gateway, &mut replica, chat, friends, users, auth] {
        let status = service.terminate();
        assert!(
            status.success(),
            "messenger-{} exited with {status}:\n{}",
            service.name,
            service.logs()
        );
        let logs = service.logs();
        for secret in [
            alice.token.as_str(),
            bob.token.as_str(),
            carol.token.as_str(),
            PASSWORD,
            key.as_str(),
        ] {
            assert!(
                !logs.contains(secret),
                "messenger-{} logged a secret:\n{logs}",
                service.name
            );
        }
    }
}
