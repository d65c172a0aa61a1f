//! Sign-in with OAuth 2.0 / OpenID Connect, end to end: the real gateway, auth, users,
//! friends and chat binaries on PostgreSQL, Redis and the Kafka-protocol broker, and a
//! real OpenID Connect provider (oauth2-mock-server from npm, `support/oidc.rs`) on
//! loopback, driven like a browser by an HTTP client that keeps cookies and follows
//! redirects: start → the provider's login page → callback → web client → token
//! exchange; the token works on `/v1/users/me`. Then: the same identity signs in to the
//! same user; a plain OAuth 2.0 provider (userinfo); a provider that rotates its keys;
//! linking to (and unlinking from) a password account whose email the identity shares;
//! and each refusal (tampered state, replayed callback, no flow cookie, wrong audience,
//! a token signed by another key, an expired ID token, the user cancelling, an unknown
//! or unreachable provider) is a 4xx problem that creates no account and logs no secret.
//!
//! Without Node.js/npm the provider cannot be installed; `scripts/test.sh` then reports
//! these tests as skipped (`OIDC_SKIP_REASON`).

#[path = "support/http.rs"]
mod http;

#[path = "support/oidc.rs"]
mod oidc;
#[allow(dead_code)] // the helpers the other system tests use
#[path = "support/process.rs"]
mod process;

use std::sync::Arc;
use std::time::Duration;

use messenger_common::testing;
use oidc::{CLIENT_SECRET, TestProvider};
use process::{Backend, Service};
use reqwest::redirect::Policy;
use reqwest::{StatusCode, Url};
use serde_json::{Value, json};

const PASSWORD: &str = "correct horse battery staple";
/// Bounds every wait for something asynchronous (a profile created from an event).
const WAIT: Duration = Duration::from_secs(30);

/// The messenger with the test provider configured as `corp` (OpenID Connect),
/// `corp-plain` (plain OAuth 2.0) and `down` (an issuer nobody listens on).
struct Stack {
    provider: TestProvider,
    backend: Backend,
    gateway: Service,
    base: String,
}

impl Stack {
    async fn start() -> Self {
        let provider = TestProvider::start();
        let port = testing::free_port();
        let base = format!("http://127.0.0.1:{port}");
        let mut auth_env = provider.auth_env(&base);
        auth_env.retain(|(key, _)| *key != "AUTH_OAUTH_PROVIDERS");
        auth_env.extend([
            ("AUTH_OAUTH_PROVIDERS", "corp,corp-plain,down".to_owned()),
            (
                "AUTH_OAUTH_DOWN_ISSUER",
                format!("http://127.0.0.1:{}", testing::free_port()),
            ),
            ("AUTH_OAUTH_DOWN_CLIENT_ID", "messenger".to_owned()),
            ("AUTH_OAUTH_HTTP_TIMEOUT", "5s".to_owned()),
        ]);
        let backend =
            Backend::start_with(auth_env, vec![("CHAT_STORE", "memory".to_owned())]).await;
        let mut gateway = Service::start(
            "gateway",
            &[
                backend.peer_env(),
                vec![
                    ("KAFKA_BROKERS", testing::kafka_brokers()),
                    ("HTTP_ADDR", format!("127.0.0.1:{port}")),
                ],
            ]
            .concat(),
        );
        gateway.wait_ready();
        Self {
            provider,
            backend,
            gateway,
            base,
        }
    }

    /// Accounts in auth's database.
    async fn accounts(&self) -> i64 {
        let pool = sqlx::PgPool::connect(self.backend.auth_database_url())
            .await
            .expect("auth's database");
        let count: i64 = sqlx::query_scalar("SELECT count(*) FROM accounts")
            .fetch_one(&pool)
            .await
            .expect("count accounts");
        pool.close().await;
        count
    }

    /// Nothing secret in any service's log.
    fn assert_logs_hold_no(&self, secrets: &[&str]) {
        let logs = [
            ("gateway", self.gateway.logs()),
            ("auth", self.backend.auth.logs()),
        ];
        for (service, log) in logs {
            for secret in secrets.iter().chain([&CLIENT_SECRET]) {
                assert!(
                    !log.contains(secret),
                    "{service}'s log shows a secret ({secret}):\n{log}"
                );
            }
        }
    }
}

/// A browser: keeps cookies; `follow` follows redirects, `step` shows each one.
struct Browser {
    follow: reqwest::Client,
    step: reqwest::Client,
    base: String,
}

/// Where a sign-in ended.
#[derive(Debug)]
enum Ended {
    /// The web client, and what `POST /v1/auth/oauth/session` answered.
    SignedIn(Value),
    /// A problem+json from the callback.
    Refused(StatusCode, Value),
}

impl Browser {
    fn new(base: &str) -> Self {
        let jar = Arc::new(reqwest::cookie::Jar::default());
        let client = |policy| {
            http::client()
                .cookie_provider(jar.clone())
                .redirect(policy)
                .build()
                .expect("an HTTP client")
        };
        Self {
            follow: client(Policy::limited(10)),
            step: client(Policy::none()),
            base: base.to_owned(),
        }
    }

    /// `GET …/start`, followed to the provider's login page; returns its URL.
    async fn start(&self, provider: &str) -> Url {
        let response = self
            .follow
            .get(format!("{}/v1/auth/oauth/{provider}/start", self.base))
            .send()
            .await
            .expect("start");
        assert_eq!(response.status(), 200, "{}", response.url());
        let page = response.url().clone();
        let html = response.text().await.unwrap();
        assert!(html.contains("Test provider: sign in"), "{html}");
        page
    }

    /// Submits the provider's login form; returns the callback URL it redirects to.
    async fn log_in(&self, page: &Url, login: &str, extra: &[(&str, &str)]) -> Url {
        let mut url = page.clone();
        url.query_pairs_mut().append_pair("login", login);
        for (key, value) in extra {
            url.query_pairs_mut().append_pair(key, value);
        }
        let response = self.step.get(url).send().await.expect("log in");
        assert_eq!(response.status(), 302);
        let location = response.headers()["location"].to_str().unwrap();
        let callback = Url::parse(location).unwrap();
        assert!(
            callback.as_str().starts_with(&self.base),
            "the provider sends the browser back to the gateway: {callback}"
        );
        callback
    }

    /// Follows the callback to its end.
    async fn callback(&self, callback: Url) -> Ended {
        let response = self.follow.get(callback).send().await.expect("callback");
        let status = response.status();
        let url = response.url().clone();
        let content_type = response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let body = response.text().await.unwrap();
        if !status.is_success() {
            assert_eq!(content_type, "application/problem+json", "{body}");
            return Ended::Refused(status, serde_json::from_str(&body).unwrap());
        }
        // The web client, told by the fragment to fetch its token.
        assert_eq!(url.path(), "/", "{url}");
        assert!(body.contains("<!doctype html>") || body.contains("<!DOCTYPE html>"));
        Ended::SignedIn(self.exchange().await.expect("the token is handed over"))
    }

    /// `POST /v1/auth/oauth/session`.
    async fn exchange(&self) -> Result<Value, (StatusCode, Value)> {
        let response = self
            .follow
            .post(format!("{}/v1/auth/oauth/session", self.base))
            .send()
            .await
            .expect("exchange");
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if status == 200 {
            Ok(body)
        } else {
            Err((status, body))
        }
    }

    /// The whole sign-in as `login`.
    async fn sign_in(&self, provider: &str, login: &str, extra: &[(&str, &str)]) -> Ended {
        let page = self.start(provider).await;
        let callback = self.log_in(&page, login, extra).await;
        self.callback(callback).await
    }
}

fn signed_in(ended: Ended) -> Value {
    match ended {
        Ended::SignedIn(login) => login,
        Ended::Refused(status, problem) => panic!("refused with {status}: {problem}"),
    }
}

fn refused(ended: Ended, status: u16) -> Value {
    match ended {
        Ended::Refused(got, problem) => {
            assert_eq!(got.as_u16(), status, "{problem}");
            assert_eq!(problem["status"], status);
            problem
        }
        Ended::SignedIn(login) => panic!("expected a {status} refusal, got signed in: {login}"),
    }
}

async fn api(base: &str, token: &str, method: reqwest::Method, path: &str) -> (u16, Value) {
    let response = http::client()
        .build()
        .unwrap()
        .request(method, format!("{base}{path}"))
        .bearer_auth(token)
        .send()
        .await
        .expect("the gateway answers");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// The profile behind `token`, once the users service created it from the event.
async fn profile(base: &str, token: &str) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, profile) = api(base, token, reqwest::Method::GET, "/v1/users/me").await;
        if status == 200 {
            return profile;
        }
        assert_eq!(status, 404, "{profile}");
        assert!(
            tokio::time::Instant::now() < deadline,
            "no profile appeared"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn token_of(login: &Value) -> String {
    assert_eq!(login["token_type"], "Bearer");
    login["access_token"].as_str().expect("a token").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_in_through_an_oidc_provider_creates_the_user_once_and_its_token_works() {
    let stack = Stack::start().await;
    let base = &stack.base;

    // The providers the web client shows buttons for.
    let providers: Value = http::client()
        .build()
        .unwrap()
        .get(format!("{base}/v1/auth/oauth/providers"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        providers["providers"][0],
        json!({"name": "corp", "display_name": "Test provider", "kind": "oidc",
               "start_url": "/v1/auth/oauth/corp/start"})
    );
    assert_eq!(providers["providers"][1]["kind"], "oauth2");

    // First sign-in: a new user, named after the provider's preferred_username. Unique
    // names: the users service reads every test's registrations from the shared broker.
    let tag = &uuid::Uuid::new_v4().simple().to_string()[..6];
    let (ada, hopper) = (format!("ada{tag}"), format!("hopper{tag}"));
    let browser = Browser::new(base);
    let first = signed_in(browser.sign_in("corp", &ada, &[]).await);
    let token = token_of(&first);
    let me = profile(base, &token).await;
    assert_eq!(me["nickname"], ada.as_str());
    assert_eq!(me["user_id"], first["user_id"]);
    // The hand-over cookie worked once.
    let (status, problem) = browser.exchange().await.unwrap_err();
    assert_eq!(status, 401, "{problem}");

    // Second sign-in, in another browser: the same user, a new token.
    let second = signed_in(Browser::new(base).sign_in("corp", &ada, &[]).await);
    assert_eq!(second["user_id"], first["user_id"]);
    assert_ne!(second["access_token"], first["access_token"]);
    assert_eq!(stack.accounts().await, 1);

    // The provider rotates its signing key: the next sign-in fetches the new keys.
    stack.provider.rotate_keys().await;
    let rotated = signed_in(Browser::new(base).sign_in("corp", &ada, &[]).await);
    assert_eq!(rotated["user_id"], first["user_id"]);

    // A plain OAuth 2.0 provider (GitHub-style userinfo): another identity, another user.
    let plain = signed_in(Browser::new(base).sign_in("corp-plain", &hopper, &[]).await);
    assert_ne!(plain["user_id"], first["user_id"]);
    assert_eq!(
        profile(base, &token_of(&plain)).await["nickname"],
        hopper.as_str()
    );
    assert_eq!(stack.accounts().await, 2);

    // Logging out the OAuth token works like any other.
    let (status, _) = api(base, &token, reqwest::Method::POST, "/v1/auth/logout").await;
    assert_eq!(status, 204);
    let (status, _) = api(base, &token, reqwest::Method::GET, "/v1/users/me").await;
    assert_eq!(status, 401);

    stack.assert_logs_hold_no(&[&token, &token_of(&second)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_identity_is_linked_to_a_password_account_only_from_inside_it() {
    let stack = Stack::start().await;
    let base = &stack.base;
    let http = http::client().build().unwrap();
    let registered: Value = http
        .post(format!("{base}/v1/auth/register"))
        .json(&json!({"email": "grace@example.com", "password": PASSWORD, "nickname": "grace"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let login: Value = http
        .post(format!("{base}/v1/auth/login"))
        .json(&json!({"email": "grace@example.com", "password": PASSWORD}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let password_token = token_of(&login);

    // The provider vouches for grace@example.com, but that does not merge the accounts.
    let problem = refused(Browser::new(base).sign_in("corp", "grace", &[]).await, 409);
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("sign in to it and link corp"),
        "{problem}"
    );
    assert_eq!(stack.accounts().await, 1);

    // Grace, signed in with her password, links the provider.
    let browser = Browser::new(base);
    let started = browser
        .follow
        .post(format!("{base}/v1/auth/oauth/corp/link"))
        .bearer_auth(&password_token)
        .send()
        .await
        .unwrap();
    assert_eq!(started.status(), 200);
    let started: Value = started.json().await.unwrap();
    let page = browser
        .follow
        .get(started["authorization_url"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .url()
        .clone();
    let callback = browser.log_in(&page, "grace", &[]).await;
    let linked = browser.step.get(callback).send().await.unwrap();
    assert_eq!(linked.status(), 303);
    assert_eq!(linked.headers()["location"], "/#oauth-linked");

    // Now the provider signs her in to her password account.
    let through_provider = signed_in(Browser::new(base).sign_in("corp", "grace", &[]).await);
    assert_eq!(through_provider["user_id"], registered["user_id"]);
    assert_eq!(stack.accounts().await, 1);

    // Lin, whose account the provider created, links a second provider.
    let other = signed_in(Browser::new(base).sign_in("corp", "lin", &[]).await);
    let other_token = token_of(&other);
    let browser = Browser::new(base);
    let started: Value = browser
        .follow
        .post(format!("{base}/v1/auth/oauth/corp-plain/link"))
        .bearer_auth(&other_token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let page = browser
        .follow
        .get(started["authorization_url"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .url()
        .clone();
    let callback = browser.log_in(&page, "lin", &[]).await;
    let linked = browser.step.get(callback).send().await.unwrap();
    assert_eq!(linked.status(), 303, "a second provider links too");

    // Unlinking: the password account may drop the provider; an account whose only
    // way in it is may not.
    let (status, problem) = api(
        base,
        &other_token,
        reqwest::Method::DELETE,
        "/v1/auth/oauth/corp-plain/link",
    )
    .await;
    assert_eq!(status, 204, "{problem}");
    let (status, problem) = api(
        base,
        &other_token,
        reqwest::Method::DELETE,
        "/v1/auth/oauth/corp/link",
    )
    .await;
    assert_eq!(status, 409, "{problem}");
    let (status, _) = api(
        base,
        &password_token,
        reqwest::Method::DELETE,
        "/v1/auth/oauth/corp/link",
    )
    .await;
    assert_eq!(status, 204);
    let (status, problem) = api(
        base,
        &password_token,
        reqwest::Method::DELETE,
        "/v1/auth/oauth/corp/link",
    )
    .await;
    assert_eq!(status, 404, "{problem}");
    // Unlinked, the identity is refused again rather than creating a second account.
    refused(Browser::new(base).sign_in("corp", "grace", &[]).await, 409);
    // Linking needs a signed-in user.
    let anonymous = http
        .post(format!("{base}/v1/auth/oauth/corp/link"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    assert_eq!(stack.accounts().await, 2);
    stack.assert_logs_hold_no(&[&password_token, &other_token]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_broken_or_forged_sign_in_is_a_4xx_problem_that_creates_nothing() {
    let stack = Stack::start().await;
    let base = &stack.base;

    // Bad ID tokens from the provider: each a 401 naming what is wrong.
    for (kind, says) in [
        ("wrong_audience", "audience"),
        ("foreign_key", "ignature"),
        ("expired", "xpired"),
    ] {
        let problem = refused(
            Browser::new(base)
                .sign_in("corp", "mallory", &[("id_token", kind)])
                .await,
            401,
        );
        assert!(
            problem["detail"].as_str().unwrap().contains(says),
            "{kind}: {problem}"
        );
    }
    // The user cancels at the provider.
    let problem = refused(
        Browser::new(base)
            .sign_in("corp", "mallory", &[("cancel", "1")])
            .await,
        401,
    );
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("access_denied"),
        "{problem}"
    );

    // A tampered state.
    let browser = Browser::new(base);
    let page = browser.start("corp").await;
    let mut callback = browser.log_in(&page, "mallory", &[]).await;
    let pairs: Vec<(String, String)> = callback
        .query_pairs()
        .map(|(k, v)| {
            let v = if k == "state" {
                format!("{v}x")
            } else {
                v.into_owned()
            };
            (k.into_owned(), v)
        })
        .collect();
    callback.query_pairs_mut().clear().extend_pairs(pairs);
    let problem = refused(browser.callback(callback).await, 400);
    assert!(
        problem["detail"].as_str().unwrap().contains("state"),
        "{problem}"
    );

    // A replayed callback (same code, same state, same flow cookie): only the first works.
    let browser = Browser::new(base);
    let started = browser
        .step
        .get(format!("{base}/v1/auth/oauth/corp/start"))
        .send()
        .await
        .unwrap();
    assert_eq!(started.status(), 302);
    let set_cookie = started.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(set_cookie.contains("HttpOnly"), "{set_cookie}");
    assert!(set_cookie.contains("SameSite=Lax"), "{set_cookie}");
    let cookie = set_cookie.split(';').next().unwrap().to_owned();
    let page = Url::parse(started.headers()["location"].to_str().unwrap()).unwrap();
    let callback = browser.log_in(&page, "mallory", &[]).await;
    let first = signed_in(browser.callback(callback.clone()).await);
    let replay = http::client()
        .redirect(Policy::none())
        .build()
        .unwrap()
        .get(callback.clone())
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(replay.status(), 400);
    let problem: Value = replay.json().await.unwrap();
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("start it again"),
        "{problem}"
    );
    assert_eq!(
        stack.accounts().await,
        1,
        "only the one valid sign-in created a user"
    );

    // No flow cookie at all (the callback opened in another browser).
    let problem = refused(Browser::new(base).callback(callback).await, 400);
    assert!(
        problem["detail"].as_str().unwrap().contains("cookie"),
        "{problem}"
    );

    // An unknown provider, and one that cannot be reached.
    let response = http::client()
        .build()
        .unwrap()
        .get(format!("{base}/v1/auth/oauth/nope/start"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let response = http::client()
        .build()
        .unwrap()
        .get(format!("{base}/v1/auth/oauth/down/start"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 424);
    let problem: Value = response.json().await.unwrap();
    assert_eq!(problem["code"], "provider_failed");

    // Nothing to hand over without a completed sign-in.
    let (status, _) = Browser::new(base).exchange().await.unwrap_err();
    assert_eq!(status, 401);

    assert_eq!(stack.accounts().await, 1);
    stack.assert_logs_hold_no(&[&token_of(&first), cookie.split('=').nth(1).unwrap()]);
}
