//! Service tests: the real `run` (PostgreSQL, Redis, Kafka) on port 0, called through
//! the generated gRPC client.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use messenger_auth::config::StoreConfig;
use messenger_auth::store::{LoginLimits, RegisterLimits};
use messenger_auth::{Config, Listeners, run};
use messenger_common::Shutdown;
use messenger_common::events::EventsConfig;
use messenger_common::testing::{
    self, SignedAs, TestDatabase, kafka_brokers, redis_url, unique_prefix,
};
use messenger_proto::topics::AUTH_EVENTS;
use messenger_proto::v1::auth_service_client::AuthServiceClient;
use messenger_proto::v1::event::Payload;
use messenger_proto::v1::{
    ListOAuthProvidersRequest, LoginRequest, LoginResponse, LogoutRequest, OAuthSignInRequest,
    RegisterRequest, StartOAuthRequest, UnlinkOAuthRequest, ValidateTokenRequest,
};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

const PASSWORD: &str = "correct horse battery";

/// Login limits whose delays are far longer than any test, so "refused" does not depend
/// on how long hashing took between two attempts.
const HOUR_LONG_DELAYS: LoginLimits = LoginLimits {
    max_failures_per_account_client: 5,
    max_failures_per_client: 20,
    window: Duration::from_secs(2 * 3600),
    max_failures_per_account: 100,
    account_window: Duration::from_secs(2 * 3600),
    first_delay: Duration::from_secs(3600),
    max_delay: Duration::from_secs(3600),
};

/// A client calling as the gateway does: every call signed for `Caller::Service("gateway")`.
type AuthClient = AuthServiceClient<InterceptedService<Channel, SignedAs>>;

/// A running auth service on a fresh database and Redis prefix.
struct TestAuth {
    client: AuthClient,
    db: TestDatabase,
    admin_addr: SocketAddr,
    redis_prefix: String,
    shutdown: Shutdown,
    server: Option<JoinHandle<Result<(), messenger_auth::Error>>>,
}

impl TestAuth {
    async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    async fn start_with(customise: impl FnOnce(&mut Config)) -> Self {
        let db = TestDatabase::create().await;
        let redis_prefix = unique_prefix();
        let mut config = Config::new(
            StoreConfig::Real {
                database_url: db.url().into(),
                redis_url: redis_url().into(),
                redis_prefix: redis_prefix.clone(),
            },
            EventsConfig::kafka(kafka_brokers()),
            testing::test_key(),
        );
        customise(&mut config);
        let grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let grpc_addr = grpc.local_addr().unwrap();
        let admin_addr = admin.local_addr().unwrap();
        let shutdown = Shutdown::new();
        let server = tokio::spawn(run(config, Listeners { grpc, admin }, shutdown.clone()));
        let client = connect(grpc_addr, &server).await;
        Self {
            client,
            db,
            admin_addr,
            redis_prefix,
            shutdown,
            server: Some(server),
        }
    }

    fn client(&self) -> AuthClient {
        self.client.clone()
    }

    async fn register(
        &self,
        email: &str,
        password: &str,
        nickname: &str,
    ) -> Result<String, Status> {
        self.client()
            .register(RegisterRequest {
                email: email.into(),
                password: password.into(),
                nickname: nickname.into(),
            })
            .await
            .map(|r| r.into_inner().user_id)
    }

    async fn register_from(&self, client_ip: &str, email: &str) -> Result<String, Status> {
        let nickname = email.split('@').next().unwrap_or_default().to_owned();
        let mut request = Request::new(RegisterRequest {
            email: email.into(),
            password: PASSWORD.into(),
            nickname,
        });
        request
            .metadata_mut()
            .insert("x-client-ip", client_ip.parse().unwrap());
        self.client()
            .register(request)
            .await
            .map(|r| r.into_inner().user_id)
    }

    async fn login_from(
        &self,
        client_ip: &str,
        email: &str,
        password: &str,
    ) -> Result<LoginResponse, Status> {
        let mut request = Request::new(LoginRequest {
            email: email.into(),
            password: password.into(),
        });
        request
            .metadata_mut()
            .insert("x-client-ip", client_ip.parse().unwrap());
        self.client().login(request).await.map(|r| r.into_inner())
    }

    async fn login(&self, email: &str, password: &str) -> Result<LoginResponse, Status> {
        self.client()
            .login(LoginRequest {
                email: email.into(),
                password: password.into(),
            })
            .await
            .map(|r| r.into_inner())
    }

    async fn validate(&self, token: &str) -> Result<String, Status> {
        self.client()
            .validate_token(ValidateTokenRequest {
                access_token: token.into(),
            })
            .await
            .map(|r| r.into_inner().user_id)
    }

    async fn logout(&self, token: &str) -> Result<(), Status> {
        self.client()
            .logout(LogoutRequest {
                access_token: token.into(),
            })
            .await
            .map(|_| ())
    }

    async fn account_count(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM accounts")
            .fetch_one(self.db.pool())
            .await
            .unwrap()
    }

    async fn outbox_count(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM messenger_outbox")
            .fetch_one(self.db.pool())
            .await
            .unwrap()
    }

    async fn stop(mut self) {
        self.shutdown.trigger();
        let server = self.server.take().unwrap();
        tokio::time::timeout(Duration::from_secs(20), server)
            .await
            .expect("the service shuts down within 20 s")
            .unwrap()
            .expect("the service ends cleanly");
        // Sessions live 24 h by default; don't leave them in the shared Redis.
        let mut redis = messenger_common::redis::connect(redis_url()).await.unwrap();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}*", self.redis_prefix))
            .query_async(&mut redis)
            .await
            .unwrap();
        if !keys.is_empty() {
            let _: () = redis::cmd("DEL")
                .arg(keys)
                .query_async(&mut redis)
                .await
                .unwrap();
        }
    }
}

impl Drop for TestAuth {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

/// Waits until the service answers an RPC: the socket is bound before `run` starts, so
/// a connection alone does not mean migrations and topic creation are done.
async fn connect(
    addr: SocketAddr,
    server: &JoinHandle<Result<(), messenger_auth::Error>>,
) -> AuthClient {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(
            !server.is_finished(),
            "the auth service exited during start-up"
        );
        if let Ok(channel) = Channel::from_shared(format!("http://{addr}"))
            .expect("a URL")
            .connect()
            .await
        {
            let mut client =
                AuthServiceClient::with_interceptor(channel, SignedAs::service("gateway"));
            let probe = tokio::time::timeout(
                Duration::from_secs(1),
                client.validate_token(ValidateTokenRequest::default()),
            )
            .await;
            if let Ok(Err(status)) = probe
                && status.code() == Code::Unauthenticated
            {
                return client;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the auth service did not start in 60 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn register_publishes_user_registered_to_kafka() {
    let auth = TestAuth::start().await;
    let user_id = auth
        .register("Kafka.Reader@Example.com", PASSWORD, "Kafka_Reader")
        .await
        .expect("registration succeeds");
    assert!(
        uuid::Uuid::parse_str(&user_id).is_ok(),
        "{user_id} is a UUID"
    );

    let wanted = user_id.clone();
    let received = messenger_common::testing::wait_for_event(
        &kafka_brokers(),
        AUTH_EVENTS,
        move |event| {
            matches!(&event.payload, Some(Payload::UserRegistered(r)) if r.user_id == wanted)
        },
        Duration::from_secs(30),
    )
    .await
    .expect("UserRegistered for the new user reaches Kafka");
    assert_eq!(received.key, user_id, "keyed by the user id");
    let event = received.event;
    let Some(Payload::UserRegistered(registered)) = event.payload else {
        unreachable!("the predicate matched a UserRegistered");
    };
    assert_eq!(registered.nickname, "kafka_reader");
    assert!(uuid::Uuid::parse_str(&event.event_id).is_ok());
    assert!(event.occurred_at.is_some());
    auth.stop().await;
}

#[tokio::test]
async fn duplicate_email_in_any_case_is_already_exists() {
    let auth = TestAuth::start().await;
    auth.register("  Dup@Example.com ", PASSWORD, "First")
        .await
        .unwrap();
    let (email, nickname, hash): (String, String, String) =
        sqlx::query_as("SELECT email, nickname, password_hash FROM accounts")
            .fetch_one(auth.db.pool())
            .await
            .unwrap();
    assert_eq!(
        (email.as_str(), nickname.as_str()),
        ("dup@example.com", "first")
    );
    assert!(
        hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
        "stored as argon2id with the OWASP parameters: {hash}"
    );
    for email in ["dup@example.com", "DUP@Example.COM", "  dup@example.com "] {
        let status = auth
            .register(email, "another good passphrase", "second")
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::AlreadyExists, "{email}: {status:?}");
    }
    assert_eq!(auth.account_count().await, 1);
    assert_eq!(auth.outbox_count().await, 1);
    auth.stop().await;
}

#[tokio::test]
async fn concurrent_duplicate_registrations_end_as_already_exists() {
    let auth = TestAuth::start().await;
    let attempts: Vec<_> = (0..4)
        .map(|n| {
            let mut client = auth.client();
            tokio::spawn(async move {
                client
                    .register(RegisterRequest {
                        email: "race@example.com".into(),
                        password: PASSWORD.into(),
                        nickname: format!("racer{n}"),
                    })
                    .await
            })
        })
        .collect();
    let mut created = 0;
    for attempt in attempts {
        match attempt.await.unwrap() {
            Ok(_) => created += 1,
            Err(status) => assert_eq!(status.code(), Code::AlreadyExists, "{status:?}"),
        }
    }
    assert_eq!(created, 1);
    assert_eq!(auth.account_count().await, 1);
    assert_eq!(auth.outbox_count().await, 1);
    auth.stop().await;
}

#[tokio::test]
async fn invalid_registrations_are_refused_and_store_nothing() {
    let auth = TestAuth::start().await;
    auth.register("existing@example.com", PASSWORD, "existing")
        .await
        .unwrap();
    let long_password = "x".repeat(129);
    let cases: [(&str, &str, &str, &str); 10] = [
        ("not-an-email", PASSWORD, "nick", "email"),
        ("two@@example.com", PASSWORD, "nick", "email"),
        ("", PASSWORD, "nick", "email"),
        ("a@b.c@example.com", PASSWORD, "nick", "email"),
        ("short@example.com", "seven77", "nick", "password"),
        ("long@example.com", &long_password, "nick", "password"),
        ("common@example.com", "Password1", "nick", "password"),
        ("nick1@example.com", PASSWORD, "ab", "nickname"),
        ("nick2@example.com", PASSWORD, "bad nick!", "nickname"),
        ("nick3@example.com", PASSWORD, &"n".repeat(33), "nickname"),
    ];
    for (email, password, nickname, field) in cases {
        let status = auth.register(email, password, nickname).await.unwrap_err();
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "{email}/{nickname}: {status:?}"
        );
        assert!(
            status.message().starts_with(field),
            "the message names the {field}: {}",
            status.message()
        );
        assert!(
            !status.message().contains(password),
            "the password is never echoed"
        );
    }
    assert_eq!(auth.account_count().await, 1, "no account was stored");
    assert_eq!(auth.outbox_count().await, 1, "no event was queued");
    auth.stop().await;
}

#[tokio::test]
async fn login_issues_a_bearer_token_that_validates_to_the_user() {
    let auth = TestAuth::start().await;
    let user_id = auth
        .register("login@example.com", PASSWORD, "login_user")
        .await
        .unwrap();
    let before = chrono::Utc::now().timestamp();
    // The email is normalised at login too.
    let login = auth.login(" LOGIN@example.com", PASSWORD).await.unwrap();
    assert_eq!(login.user_id, user_id);
    assert_eq!(login.token_type, "Bearer");
    assert_eq!(login.access_token.len(), 43);
    let expires = login.expires_at.expect("expiry is set").seconds;
    assert!(
        (before + 86_400 - 5..=before + 86_400 + 5).contains(&expires),
        "default TTL is 24 h"
    );

    let validated = auth
        .client()
        .validate_token(ValidateTokenRequest {
            access_token: login.access_token.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(validated.user_id, user_id);
    assert_eq!(validated.expires_at.map(|t| t.seconds), Some(expires));

    // Every login is its own session.
    let second = auth.login("login@example.com", PASSWORD).await.unwrap();
    assert_ne!(second.access_token, login.access_token);
    assert_eq!(auth.validate(&second.access_token).await.unwrap(), user_id);
    auth.stop().await;
}

#[tokio::test]
async fn wrong_password_and_unknown_email_give_the_same_error_and_similar_timing() {
    let auth = TestAuth::start().await;
    auth.register("known@example.com", PASSWORD, "known")
        .await
        .unwrap();

    let mut wrong_password_times = Vec::new();
    let mut unknown_email_times = Vec::new();
    let mut wrong_password = None;
    let mut unknown_email = None;
    for n in 0..3 {
        // A different client address each round keeps the per-client limit out of it.
        let started = Instant::now();
        let status = auth
            .login_from(
                &format!("198.51.100.{n}"),
                "known@example.com",
                "wrong password!",
            )
            .await
            .unwrap_err();
        wrong_password_times.push(started.elapsed());
        wrong_password = Some(status);

        let started = Instant::now();
        let status = auth
            .login_from(
                &format!("198.51.100.{n}"),
                "unknown@example.com",
                "wrong password!",
            )
            .await
            .unwrap_err();
        unknown_email_times.push(started.elapsed());
        unknown_email = Some(status);
    }
    let (wrong_password, unknown_email) = (wrong_password.unwrap(), unknown_email.unwrap());
    assert_eq!(wrong_password.code(), Code::Unauthenticated);
    assert_eq!(unknown_email.code(), Code::Unauthenticated);
    assert_eq!(wrong_password.message(), "invalid email or password");
    assert_eq!(unknown_email.message(), wrong_password.message());

    // Both paths run argon2; without the dummy hash the unknown email would answer
    // in well under a tenth of the time.
    wrong_password_times.sort();
    unknown_email_times.sort();
    let (wrong, unknown) = (wrong_password_times[1], unknown_email_times[1]);
    assert!(
        unknown.as_secs_f64() >= 0.3 * wrong.as_secs_f64(),
        "unknown email {unknown:?} vs wrong password {wrong:?}"
    );
    auth.stop().await;
}

#[tokio::test]
async fn failed_logins_slow_down_the_guessing_address_not_the_owner() {
    let auth = TestAuth::start_with(|config| {
        config.login_limits = LoginLimits {
            max_failures_per_account_client: 3,
            max_failures_per_client: 100,
            max_failures_per_account: 100,
            ..HOUR_LONG_DELAYS
        };
    })
    .await;
    auth.register("target@example.com", PASSWORD, "target")
        .await
        .unwrap();

    for n in 0..3 {
        let status = auth
            .login_from("203.0.113.5", "target@example.com", "guess number x")
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "attempt {n}");
    }
    // The guessing address now has to wait, even with the right password...
    let status = auth
        .login_from("203.0.113.5", "target@example.com", PASSWORD)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("retry in"),
        "the message says when to retry: {}",
        status.message()
    );
    let retry_after: u64 = status
        .metadata()
        .get("retry-after")
        .expect("retry-after metadata")
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (1..=3600).contains(&retry_after),
        "retry-after {retry_after}"
    );
    // ...while the owner, elsewhere, logs in.
    auth.login_from("198.51.100.20", "target@example.com", PASSWORD)
        .await
        .unwrap();
    auth.stop().await;
}

#[tokio::test]
async fn guesses_from_many_addresses_slow_unknown_addresses_only() {
    let auth = TestAuth::start_with(|config| {
        config.login_limits = LoginLimits {
            max_failures_per_account_client: 100,
            max_failures_per_client: 100,
            max_failures_per_account: 3,
            ..HOUR_LONG_DELAYS
        };
    })
    .await;
    auth.register("popular@example.com", PASSWORD, "popular")
        .await
        .unwrap();
    // The owner has logged in from home before.
    auth.login_from("2001:db8:face:1::10", "popular@example.com", PASSWORD)
        .await
        .unwrap();
    for n in 0..3 {
        let status = auth
            .login_from(&format!("203.0.113.{n}"), "popular@example.com", "guess x")
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "attempt {n}");
    }
    let status = auth
        .login_from("203.0.113.99", "popular@example.com", PASSWORD)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    // Home (another address of the same /64) is still let in.
    auth.login_from("2001:db8:face:1::77", "popular@example.com", PASSWORD)
        .await
        .unwrap();
    auth.stop().await;
}

#[tokio::test]
async fn registrations_are_limited_per_client_address_with_a_retry_after() {
    let auth = TestAuth::start_with(|config| {
        config.register_limits = RegisterLimits {
            max_per_client: 2,
            window: Duration::from_secs(3600),
        };
    })
    .await;
    auth.register_from("203.0.113.5", "reg_one@example.com")
        .await
        .unwrap();
    auth.register_from("203.0.113.5", "reg_two@example.com")
        .await
        .unwrap();
    let status = auth
        .register_from("203.0.113.5", "reg_three@example.com")
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().starts_with("too many registrations"),
        "{}",
        status.message()
    );
    let retry_after: u64 = status
        .metadata()
        .get("retry-after")
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((3500..=3600).contains(&retry_after), "{retry_after}");
    assert_eq!(
        auth.account_count().await,
        2,
        "the refused one stored nothing"
    );
    // Another address registers fine, and logins from the limited one still work.
    auth.register_from("203.0.113.6", "reg_three@example.com")
        .await
        .unwrap();
    auth.login_from("203.0.113.5", "reg_one@example.com", PASSWORD)
        .await
        .unwrap();
    auth.stop().await;
}

#[tokio::test]
async fn failed_logins_are_limited_per_client_address() {
    let auth = TestAuth::start_with(|config| {
        config.login_limits = LoginLimits {
            max_failures_per_account_client: 100,
            max_failures_per_client: 3,
            max_failures_per_account: 100,
            ..HOUR_LONG_DELAYS
        };
    })
    .await;
    auth.register("victim@example.com", PASSWORD, "victim")
        .await
        .unwrap();

    for n in 0..3 {
        let status = auth
            .login_from(
                "192.0.2.10",
                &format!("spray{n}@example.com"),
                "guess number x",
            )
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "attempt {n}");
    }
    let status = auth
        .login_from("192.0.2.10", "victim@example.com", PASSWORD)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("retry in"),
        "{}",
        status.message()
    );

    // Another address logs in to the same account fine.
    let login = auth
        .login_from("192.0.2.11", "victim@example.com", PASSWORD)
        .await
        .unwrap();
    assert!(!login.access_token.is_empty());

    // Without x-client-ip the peer address (127.0.0.1 here) is the client.
    for n in 0..3 {
        let status = auth
            .login(&format!("direct{n}@example.com"), "guess number x")
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "direct attempt {n}");
    }
    let status = auth
        .login("victim@example.com", PASSWORD)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    auth.stop().await;
}

#[tokio::test]
async fn logout_revokes_the_token_at_once() {
    let auth = TestAuth::start().await;
    let user_id = auth
        .register("leaver@example.com", PASSWORD, "leaver")
        .await
        .unwrap();
    let first = auth.login("leaver@example.com", PASSWORD).await.unwrap();
    let second = auth.login("leaver@example.com", PASSWORD).await.unwrap();
    assert_eq!(auth.validate(&first.access_token).await.unwrap(), user_id);

    auth.logout(&first.access_token).await.unwrap();
    let status = auth.validate(&first.access_token).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    // Only that session ends.
    assert_eq!(auth.validate(&second.access_token).await.unwrap(), user_id);
    // Logging out again, or with a token never issued, is fine.
    auth.logout(&first.access_token).await.unwrap();
    auth.logout("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")
        .await
        .unwrap();
    assert_eq!(
        auth.logout("").await.unwrap_err().code(),
        Code::InvalidArgument
    );
    auth.stop().await;
}

#[tokio::test]
async fn unknown_and_malformed_tokens_are_unauthenticated() {
    let auth = TestAuth::start().await;
    for token in ["", "garbage", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"] {
        let status = auth.validate(token).await.unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{token:?}");
    }
    auth.stop().await;
}

#[tokio::test]
async fn expired_tokens_stop_validating() {
    let auth = TestAuth::start_with(|config| config.token_ttl = Duration::from_secs(1)).await;
    let user_id = auth
        .register("brief@example.com", PASSWORD, "brief")
        .await
        .unwrap();
    let login = auth.login("brief@example.com", PASSWORD).await.unwrap();
    assert_eq!(auth.validate(&login.access_token).await.unwrap(), user_id);
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let status = auth.validate(&login.access_token).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    auth.stop().await;
}

#[tokio::test]
async fn oauth_calls_for_an_unconfigured_provider_or_from_the_wrong_caller_are_refused() {
    let auth = TestAuth::start().await;
    let providers = auth
        .client()
        .list_o_auth_providers(ListOAuthProvidersRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(providers.providers.is_empty());
    let status = auth
        .client()
        .start_o_auth(StartOAuthRequest {
            provider: "google".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert!(status.message().contains("google"), "{status:?}");
    let status = auth
        .client()
        .o_auth_sign_in(OAuthSignInRequest {
            provider: "google".into(),
            flow_id: "x".repeat(43),
            code: "code".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    // Unlinking acts for a signed-in user, never for the gateway itself.
    let status = auth
        .client()
        .unlink_o_auth(UnlinkOAuthRequest {
            provider: "google".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    auth.stop().await;
}

#[tokio::test]
async fn admin_endpoint_reports_ready_and_counts_rpcs() {
    let auth = TestAuth::start().await;
    let _ = auth.validate("garbage").await;
    let ready = http_get(auth.admin_addr, "/readyz").await;
    assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");
    let metrics = http_get(auth.admin_addr, "/metrics").await;
    assert!(metrics.contains("ValidateToken"), "{metrics}");
    auth.stop().await;
}

/// A minimal HTTP/1.1 GET, enough for the admin endpoints.
async fn http_get(addr: SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
}

#[tokio::test]
async fn in_memory_stores_serve_the_same_api_and_publish_to_the_bus() {
    use messenger_common::events::InMemoryEventBus;

    let bus = InMemoryEventBus::new();
    let mut events = bus.subscribe(AUTH_EVENTS);
    let config = Config::new(
        StoreConfig::InMemory,
        EventsConfig::InMemory(bus.clone()),
        testing::test_key(),
    );
    let grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = grpc.local_addr().unwrap();
    let shutdown = Shutdown::new();
    let server = tokio::spawn(run(config, Listeners { grpc, admin }, shutdown.clone()));
    let mut client = connect(addr, &server).await;

    let user_id = client
        .register(RegisterRequest {
            email: "Memory@Example.com".into(),
            password: PASSWORD.into(),
            nickname: "Memory".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .user_id;
    let message = tokio::time::timeout(Duration::from_secs(5), events.recv())
        .await
        .expect("UserRegistered reaches the in-process bus")
        .unwrap();
    assert_eq!(message.key, user_id);
    assert!(
        matches!(&message.event.payload, Some(Payload::UserRegistered(r)) if r.user_id == user_id && r.nickname == "memory")
    );

    let duplicate = client
        .register(RegisterRequest {
            email: "memory@example.com".into(),
            password: PASSWORD.into(),
            nickname: "other".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(duplicate.code(), Code::AlreadyExists);

    let token = client
        .login(LoginRequest {
            email: "memory@example.com".into(),
            password: PASSWORD.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .access_token;
    let validated = client
        .validate_token(ValidateTokenRequest {
            access_token: token.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(validated.user_id, user_id);
    client
        .logout(LogoutRequest {
            access_token: token.clone(),
        })
        .await
        .unwrap();
    let status = client
        .validate_token(ValidateTokenRequest {
            access_token: token,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);

    shutdown.trigger();
    server.await.unwrap().unwrap();
}

#[tokio::test]
async fn parallel_guesses_cannot_exceed_the_account_limit() {
    let auth = TestAuth::start_with(|config| {
        config.login_limits = LoginLimits {
            max_failures_per_account_client: 100,
            max_failures_per_client: 100,
            max_failures_per_account: 3,
            ..HOUR_LONG_DELAYS
        };
    })
    .await;
    auth.register("parallel@example.com", PASSWORD, "parallel")
        .await
        .unwrap();
    let guesses: Vec<_> = (0..8)
        .map(|n| {
            let mut client = auth.client();
            tokio::spawn(async move {
                let mut request = Request::new(LoginRequest {
                    email: "parallel@example.com".into(),
                    password: format!("guess number {n}"),
                });
                request
                    .metadata_mut()
                    .insert("x-client-ip", format!("198.18.0.{n}").parse().unwrap());
                client.login(request).await
            })
        })
        .collect();
    let mut checked = 0;
    let mut refused = 0;
    for guess in guesses {
        match guess.await.unwrap() {
            Ok(_) => panic!("a wrong password logged in"),
            Err(status) if status.code() == Code::Unauthenticated => checked += 1,
            Err(status) if status.code() == Code::ResourceExhausted => refused += 1,
            Err(status) => panic!("unexpected {status:?}"),
        }
    }
    assert_eq!(
        (checked, refused),
        (3, 5),
        "only 3 guesses reach the password check"
    );
    auth.stop().await;
}

#[tokio::test]
async fn registration_works_while_kafka_is_down_and_its_event_follows() {
    use messenger_common::testing::{TansuBroker, free_port};

    let mut broker = TansuBroker::start(free_port());
    let brokers = broker.brokers();
    let auth = TestAuth::start_with(|config| {
        config.events = EventsConfig::kafka(brokers.clone());
    })
    .await;
    broker.stop();

    let user_id = auth
        .register("offline@example.com", PASSWORD, "offline")
        .await
        .expect("registration does not wait for Kafka");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let pending = messenger_common::outbox::pending_count(auth.db.pool())
        .await
        .unwrap();
    assert_eq!(pending, 1, "the event waits in the outbox");

    broker.restart();
    let back_at = Instant::now();
    let wanted = user_id.clone();
    let received = messenger_common::testing::wait_for_event(
        &brokers,
        AUTH_EVENTS,
        move |event| {
            matches!(&event.payload, Some(Payload::UserRegistered(r)) if r.user_id == wanted)
        },
        Duration::from_secs(90),
    )
    .await;
    let Some(received) = received else {
        let outbox: Vec<(i32, Option<String>, Option<chrono::DateTime<chrono::Utc>>)> =
            sqlx::query_as("SELECT attempts, last_error, sent_at FROM messenger_outbox")
                .fetch_all(auth.db.pool())
                .await
                .unwrap();
        panic!(
            "the event written while Kafka was down was not published within 90 s of the \
             broker's return; outbox (attempts, last error, sent at): {outbox:?}"
        );
    };
    eprintln!(
        "delivered {:?} after the broker came back",
        back_at.elapsed()
    );
    assert_eq!(received.key, user_id);
    auth.stop().await;
}

/// Internal trust: auth answers only callers with a valid assertion, and believes the
/// end user's address in `x-client-ip` only from the gateway, so nobody else can dodge
/// the per-address login limit by naming a fresh address per attempt.
#[tokio::test]
async fn auth_needs_an_assertion_and_believes_client_addresses_only_from_the_gateway() {
    use messenger_common::events::InMemoryEventBus;
    use messenger_common::identity::{Caller, IDENTITY_METADATA};

    let mut config = Config::new(
        StoreConfig::InMemory,
        EventsConfig::InMemory(InMemoryEventBus::new()),
        testing::test_key(),
    );
    config.login_limits = LoginLimits {
        max_failures_per_account_client: 100,
        max_failures_per_client: 3,
        max_failures_per_account: 100,
        ..HOUR_LONG_DELAYS
    };
    let grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = grpc.local_addr().unwrap();
    let shutdown = Shutdown::new();
    let server = tokio::spawn(run(config, Listeners { grpc, admin }, shutdown.clone()));
    let mut gateway = connect(addr, &server).await;
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut unsigned = AuthServiceClient::new(channel.clone());
    let register = || RegisterRequest {
        email: "trust@example.com".into(),
        password: PASSWORD.into(),
        nickname: "trust".into(),
    };

    // Without a valid assertion nothing is done.
    let mut expired = Request::new(register());
    expired.metadata_mut().insert(
        IDENTITY_METADATA,
        testing::expired_assertion(&testing::test_key(), &Caller::Service("gateway".into()))
            .parse()
            .unwrap(),
    );
    for (what, result) in [
        ("unsigned", unsigned.register(register()).await),
        ("expired", unsigned.register(expired).await),
    ] {
        let status = result.expect_err(what);
        assert_eq!(status.code(), Code::Unauthenticated, "{what}: {status:?}");
    }
    let status = unsigned
        .validate_token(ValidateTokenRequest {
            access_token: "anything".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    gateway
        .register(register())
        .await
        .expect("the refused calls registered nothing");

    // A caller other than the gateway names a fresh address per guess: ignored, the
    // connection's own address is counted and reaches the limit.
    let mut chat = AuthServiceClient::with_interceptor(channel, SignedAs::service("chat"));
    let from = |ip: &str, password: &str| {
        let mut request = Request::new(LoginRequest {
            email: "trust@example.com".into(),
            password: password.into(),
        });
        request
            .metadata_mut()
            .insert("x-client-ip", ip.parse().unwrap());
        request
    };
    for n in 0..3 {
        let status = chat
            .login(from(&format!("198.51.100.{n}"), "wrong guess"))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "guess {n}");
    }
    let limited = chat
        .login(from("198.51.100.99", PASSWORD))
        .await
        .unwrap_err();
    assert_eq!(limited.code(), Code::ResourceExhausted, "{limited:?}");
    // The gateway's word for the end user's address is believed.
    let login = gateway
        .login(from("198.51.100.100", PASSWORD))
        .await
        .expect("another end user behind the gateway");
    assert!(!login.into_inner().access_token.is_empty());

    shutdown.trigger();
    server.await.unwrap().unwrap();
}
