//! `messenger dev --seed-demo`: two users who are friends, with a chat and a few messages,
//! created through the gateway's REST API as a client would. Running it again against
//! kept stores signs the same users in instead of failing.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

/// A demo user's credentials.
struct DemoUser {
    nickname: &'static str,
    email: &'static str,
    password: &'static str,
}

const ALICE: DemoUser = DemoUser {
    nickname: "alice",
    email: "alice@example.com",
    password: "alice-demo-password",
};
const BOB: DemoUser = DemoUser {
    nickname: "bob",
    email: "bob@example.com",
    password: "bob-demo-password",
};

/// Creates the demo data on the gateway at `api`; returns what to print.
pub async fn seed(http: &reqwest::Client, api: &str) -> Result<String, String> {
    let alice = sign_up(http, api, &ALICE).await?;
    let bob = sign_up(http, api, &BOB).await?;

    // The profile behind a nickname appears once users has consumed UserRegistered.
    let requests = format!("{api}/v1/friends/requests");
    let request = retry_until_found(|| {
        call(
            http,
            reqwest::Method::POST,
            &requests,
            Some(&alice.token),
            Some(json!({ "nickname": BOB.nickname })),
        )
    })
    .await?;
    if request.0.is_success() {
        let accept = format!("{api}/v1/friends/requests/{}/accept", ALICE.nickname);
        expect_ok(
            "accept the friend request",
            call(http, reqwest::Method::POST, &accept, Some(&bob.token), None).await?,
        )?;
    } else if request.0 != StatusCode::CONFLICT {
        // 409: already friends (a second seed on kept stores).
        return Err(format!("send the friend request: {}", describe(&request)));
    }

    let chat = expect_ok(
        "create the chat",
        call(
            http,
            reqwest::Method::POST,
            &format!("{api}/v1/chats"),
            Some(&alice.token),
            Some(json!({ "participant_ids": [bob.user_id] })),
        )
        .await?,
    )?;
    let chat_id = chat["chat_id"]
        .as_str()
        .ok_or("the chat has no chat_id")?
        .to_owned();
    let messages = format!("{api}/v1/chats/{chat_id}/messages");
    for (who, text) in [
        (&alice, "Hi Bob! This chat was made by --seed-demo."),
        (&bob, "Hi Alice. New messages show up here live."),
        (
            &alice,
            "Sign in as Bob in a second window and reply to see it.",
        ),
    ] {
        expect_ok(
            "send a message",
            call(
                http,
                reqwest::Method::POST,
                &messages,
                Some(&who.token),
                Some(json!({ "content": text })),
            )
            .await?,
        )?;
    }
    Ok(format!(
        "Demo users (friends, with a chat):\n  {} / {}  (nickname {})\n  {} / {}  (nickname {})\n",
        ALICE.email, ALICE.password, ALICE.nickname, BOB.email, BOB.password, BOB.nickname
    ))
}

struct Session {
    user_id: String,
    token: String,
}

/// Registers `user` (an existing account with these credentials is fine) and signs in.
async fn sign_up(http: &reqwest::Client, api: &str, user: &DemoUser) -> Result<Session, String> {
    let registered = call(
        http,
        reqwest::Method::POST,
        &format!("{api}/v1/auth/register"),
        None,
        Some(json!({ "email": user.email, "password": user.password, "nickname": user.nickname })),
    )
    .await?;
    if !registered.0.is_success() && registered.0 != StatusCode::CONFLICT {
        return Err(format!(
            "register {}: {}",
            user.email,
            describe(&registered)
        ));
    }
    let login = expect_ok(
        &format!("sign in as {}", user.email),
        call(
            http,
            reqwest::Method::POST,
            &format!("{api}/v1/auth/login"),
            None,
            Some(json!({ "email": user.email, "password": user.password })),
        )
        .await?,
    )?;
    let field = |name: &str| {
        login[name]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| format!("the login answer has no {name}"))
    };
    Ok(Session {
        user_id: field("user_id")?,
        token: field("access_token")?,
    })
}

type Answer = (StatusCode, Value);

async fn call(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> Result<Answer, String> {
    let mut request = http.request(method, url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.map_err(|e| format!("{url}: {e}"))?;
    let status = response.status();
    let body = response.json().await.unwrap_or(Value::Null);
    Ok((status, body))
}

fn expect_ok(what: &str, answer: Answer) -> Result<Value, String> {
    if answer.0.is_success() {
        Ok(answer.1)
    } else {
        Err(format!("{what}: {}", describe(&answer)))
    }
}

fn describe((status, body): &Answer) -> String {
    match body["detail"].as_str() {
        Some(detail) => format!("{status}: {detail}"),
        None => status.to_string(),
    }
}

/// Repeats `call` while it answers 404 (for up to 10 s).
async fn retry_until_found<F, Fut>(mut call: F) -> Result<Answer, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Answer, String>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let answer = call().await?;
        if answer.0 != StatusCode::NOT_FOUND || tokio::time::Instant::now() >= deadline {
            return Ok(answer);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
