//! One contract suite per storage trait, run against the in-memory implementation and
//! the real one (PostgreSQL / Redis). Plus what differs by design: where the
//! `UserRegistered` event goes (the outbox table vs the in-process bus).

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use messenger_auth::AuthError;
use messenger_auth::domain::{Email, Nickname};
use messenger_auth::store::{
    Account, AccountStore, InMemoryAccountStore, InMemoryLoginAttemptLimiter,
    InMemoryOAuthFlowStore, InMemoryRegistrationLimiter, InMemorySessionStore, LimiterClock,
    LoginAttemptLimiter, LoginLimits, OAuthFlow, OAuthFlowStore, OAuthIdentity,
    PostgresAccountStore, RedisLoginAttemptLimiter, RedisOAuthFlowStore, RedisRegistrationLimiter,
    RedisSessionStore, RegisterLimits, RegistrationLimiter, Session, SessionStore,
};
use messenger_auth::token::AccessToken;
use messenger_common::events::{InMemoryEventBus, new_event};
use messenger_common::testing::{TestDatabase, redis_url, unique_prefix};
use messenger_proto::topics::AUTH_EVENTS;
use messenger_proto::v1::{Event, UserRegistered, event::Payload};
use uuid::Uuid;

fn account(email: &str) -> Account {
    Account {
        user_id: Uuid::now_v7(),
        email: Some(Email::parse(email).expect("test email is valid")),
        nickname: Nickname::parse("contract_user").expect("test nickname is valid"),
        password_hash: Some("$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo".into()),
        created_at: Utc::now(),
    }
}

fn registered(account: &Account) -> Event {
    new_event(Payload::UserRegistered(UserRegistered {
        user_id: account.user_id.to_string(),
        nickname: account.nickname.as_str().to_owned(),
    }))
}

// ---------------------------------------------------------------------------------------
// AccountStore

async fn account_store_contract(store: Arc<dyn AccountStore>) {
    assert_eq!(store.count().await.unwrap(), 0);
    let alice = account("alice@example.com");
    store.create(&alice, &registered(&alice)).await.unwrap();
    assert_eq!(store.count().await.unwrap(), 1);

    let found = store
        .find_by_email(&Email::parse("  ALICE@Example.com").unwrap())
        .await
        .unwrap()
        .expect("alice is found by her normalised email");
    assert_eq!(found.user_id, alice.user_id);
    assert_eq!(found.email, alice.email);
    assert_eq!(found.nickname, alice.nickname);
    assert_eq!(found.password_hash, alice.password_hash);

    let unknown = store
        .find_by_email(&Email::parse("nobody@example.com").unwrap())
        .await
        .unwrap();
    assert!(unknown.is_none());

    // Same email, new user id: refused, and nothing changes.
    let again = account("Alice@EXAMPLE.com");
    let error = store.create(&again, &registered(&again)).await.unwrap_err();
    assert!(matches!(error, AuthError::EmailTaken), "{error:?}");
    assert_eq!(store.count().await.unwrap(), 1);
    let still = store
        .find_by_email(alice.email.as_ref().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(still.user_id, alice.user_id);

    // Concurrent registrations of one new email: exactly one wins, the rest are
    // EmailTaken (never an internal error).
    let racers: Vec<_> = (0..8)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                let bob = account("bob@example.com");
                store.create(&bob, &registered(&bob)).await
            })
        })
        .collect();
    let mut won = 0;
    for racer in racers {
        match racer.await.unwrap() {
            Ok(()) => won += 1,
            Err(AuthError::EmailTaken) => {}
            Err(other) => panic!("a concurrent duplicate must be EmailTaken, got {other:?}"),
        }
    }
    assert_eq!(won, 1);
    assert_eq!(store.count().await.unwrap(), 2);

    identity_contract(store.as_ref(), &alice).await;
}

fn identity(provider: &str, subject: &str) -> OAuthIdentity {
    OAuthIdentity {
        provider: provider.to_owned(),
        subject: subject.to_owned(),
    }
}

/// Accounts made by a provider, links and unlinks; `alice` has a password.
async fn identity_contract(store: &dyn AccountStore, alice: &Account) {
    let before = store.count().await.unwrap();
    // An account a provider created: no email, no password.
    let ada = Account {
        email: None,
        password_hash: None,
        ..account("unused@example.com")
    };
    let corp_ada = identity("corp", "sub-ada");
    store
        .create_with_identity(&ada, &corp_ada, &registered(&ada))
        .await
        .unwrap();
    let found = store.find_by_identity(&corp_ada).await.unwrap().unwrap();
    assert_eq!((found.user_id, found.email), (ada.user_id, None));
    assert_eq!(
        store
            .find_by_id(ada.user_id)
            .await
            .unwrap()
            .unwrap()
            .user_id,
        ada.user_id
    );
    // The subject belongs to its provider only.
    assert!(
        store
            .find_by_identity(&identity("other", "sub-ada"))
            .await
            .unwrap()
            .is_none()
    );

    // The same identity or a taken email cannot make a second account.
    let twin = Account {
        email: None,
        ..account("unused@example.com")
    };
    let error = store
        .create_with_identity(&twin, &corp_ada, &registered(&twin))
        .await
        .unwrap_err();
    assert!(matches!(error, AuthError::IdentityTaken(_)), "{error:?}");
    let clash = account("alice@example.com");
    let error = store
        .create_with_identity(&clash, &identity("corp", "sub-new"), &registered(&clash))
        .await
        .unwrap_err();
    assert!(matches!(error, AuthError::EmailTaken), "{error:?}");
    assert_eq!(store.count().await.unwrap(), before + 1);

    // Linking: to an existing account, one identity per provider, each identity once.
    let corp_alice = identity("corp", "sub-alice");
    store.link(alice.user_id, &corp_alice).await.unwrap();
    assert_eq!(
        store
            .find_by_identity(&corp_alice)
            .await
            .unwrap()
            .unwrap()
            .user_id,
        alice.user_id
    );
    let error = store
        .link(alice.user_id, &identity("corp", "sub-other"))
        .await
        .unwrap_err();
    assert!(
        matches!(error, AuthError::ProviderAlreadyLinked(_)),
        "{error:?}"
    );
    let error = store.link(alice.user_id, &corp_ada).await.unwrap_err();
    assert!(matches!(error, AuthError::IdentityTaken(_)), "{error:?}");
    let error = store
        .link(Uuid::now_v7(), &identity("corp", "sub-nobody"))
        .await
        .unwrap_err();
    assert!(matches!(error, AuthError::AccountNotFound), "{error:?}");
    assert_eq!(
        store.linked_providers(alice.user_id).await.unwrap(),
        ["corp"]
    );

    // Unlinking never leaves an account without a way in.
    let error = store.unlink(ada.user_id, "corp").await.unwrap_err();
    assert!(matches!(error, AuthError::LastSignInMethod(_)), "{error:?}");
    store
        .link(ada.user_id, &identity("github", "583231"))
        .await
        .unwrap();
    store.unlink(ada.user_id, "corp").await.unwrap();
    assert_eq!(
        store.linked_providers(ada.user_id).await.unwrap(),
        ["github"]
    );
    assert!(store.find_by_identity(&corp_ada).await.unwrap().is_none());
    let error = store.unlink(ada.user_id, "github").await.unwrap_err();
    assert!(matches!(error, AuthError::LastSignInMethod(_)), "{error:?}");
    store.unlink(alice.user_id, "corp").await.unwrap();
    let error = store.unlink(alice.user_id, "corp").await.unwrap_err();
    assert!(matches!(error, AuthError::NotLinked(_)), "{error:?}");
    assert!(
        store
            .linked_providers(alice.user_id)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn in_memory_account_store_meets_the_contract() {
    let bus = Arc::new(InMemoryEventBus::new());
    account_store_contract(Arc::new(InMemoryAccountStore::new(bus))).await;
}

#[tokio::test]
async fn postgres_account_store_meets_the_contract() {
    let db = TestDatabase::create().await;
    messenger_common::postgres::migrate(db.pool(), &messenger_auth::MIGRATOR)
        .await
        .expect("migrations apply");
    account_store_contract(Arc::new(PostgresAccountStore::new(db.pool().clone()))).await;
}

#[tokio::test]
async fn in_memory_account_store_publishes_the_event_to_the_bus() {
    let bus = Arc::new(InMemoryEventBus::new());
    let mut received = bus.subscribe(AUTH_EVENTS);
    let store = InMemoryAccountStore::new(bus.clone());
    let alice = account("alice@example.com");
    let event = registered(&alice);
    store.create(&alice, &event).await.unwrap();
    let delivered = tokio::time::timeout(Duration::from_secs(5), received.recv())
        .await
        .expect("the event reaches the bus")
        .expect("bus open");
    assert_eq!(delivered.event.event_id, event.event_id);
    assert_eq!(delivered.key, alice.user_id.to_string());

    // A refused duplicate publishes nothing.
    let dup = account("alice@example.com");
    assert!(store.create(&dup, &registered(&dup)).await.is_err());
    assert!(
        received.try_recv().is_err(),
        "no event for a refused duplicate"
    );
}

#[tokio::test]
async fn postgres_account_store_writes_the_event_to_the_outbox_in_the_same_transaction() {
    let db = TestDatabase::create().await;
    messenger_common::postgres::migrate(db.pool(), &messenger_auth::MIGRATOR)
        .await
        .expect("migrations apply");
    let store = PostgresAccountStore::new(db.pool().clone());
    let alice = account("alice@example.com");
    let event = registered(&alice);
    store.create(&alice, &event).await.unwrap();

    let rows: Vec<(String, String, String)> =
        sqlx::query_as("SELECT topic, event_key, event_id FROM messenger_outbox")
            .fetch_all(db.pool())
            .await
            .unwrap();
    assert_eq!(
        rows,
        vec![(
            AUTH_EVENTS.to_owned(),
            alice.user_id.to_string(),
            event.event_id.clone()
        )]
    );

    let dup = account("alice@example.com");
    assert!(store.create(&dup, &registered(&dup)).await.is_err());
    let outbox_rows: i64 = sqlx::query_scalar("SELECT count(*) FROM messenger_outbox")
        .fetch_one(db.pool())
        .await
        .unwrap();
    assert_eq!(outbox_rows, 1, "a refused duplicate leaves no outbox row");
}

// ---------------------------------------------------------------------------------------
// SessionStore

async fn session_store_contract(store: Arc<dyn SessionStore>) {
    let token = AccessToken::generate().unwrap();
    let session = Session {
        user_id: Uuid::now_v7(),
        expires_at: Utc::now() + chrono::Duration::hours(1),
    };
    assert_eq!(store.get(&token.digest()).await.unwrap(), None);
    store.insert(&token.digest(), &session).await.unwrap();
    let found = store.get(&token.digest()).await.unwrap().expect("stored");
    assert_eq!(found.user_id, session.user_id);
    assert_eq!(
        found.expires_at.timestamp_millis(),
        session.expires_at.timestamp_millis()
    );

    // Another token does not see it.
    let other = AccessToken::generate().unwrap();
    assert_eq!(store.get(&other.digest()).await.unwrap(), None);

    store.remove(&token.digest()).await.unwrap();
    assert_eq!(store.get(&token.digest()).await.unwrap(), None);
    // Removing again (or something never stored) is fine.
    store.remove(&token.digest()).await.unwrap();
    store.remove(&other.digest()).await.unwrap();

    // Sessions disappear at their expiry.
    let short = AccessToken::generate().unwrap();
    let short_session = Session {
        user_id: Uuid::now_v7(),
        expires_at: Utc::now() + chrono::Duration::milliseconds(300),
    };
    store.insert(&short.digest(), &short_session).await.unwrap();
    assert!(store.get(&short.digest()).await.unwrap().is_some());
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert_eq!(store.get(&short.digest()).await.unwrap(), None);

    // A session that is already over is never served.
    let stale = AccessToken::generate().unwrap();
    let stale_session = Session {
        user_id: Uuid::now_v7(),
        expires_at: Utc::now() - chrono::Duration::seconds(1),
    };
    store.insert(&stale.digest(), &stale_session).await.unwrap();
    assert_eq!(store.get(&stale.digest()).await.unwrap(), None);
}

#[tokio::test]
async fn in_memory_session_store_meets_the_contract() {
    session_store_contract(Arc::new(InMemorySessionStore::new())).await;
}

#[tokio::test]
async fn redis_session_store_meets_the_contract() {
    let redis = messenger_common::redis::connect(redis_url())
        .await
        .expect("TEST_REDIS_URL reachable");
    session_store_contract(Arc::new(RedisSessionStore::new(redis, unique_prefix()))).await;
}

// ---------------------------------------------------------------------------------------
// OAuthFlowStore

fn flow(expires_in: chrono::Duration) -> OAuthFlow {
    OAuthFlow {
        provider: "corp".into(),
        state: "state-123".into(),
        pkce_verifier: "verifier-456".into(),
        nonce: Some("nonce-789".into()),
        link_user: Some(Uuid::now_v7()),
        expires_at: Utc::now() + expires_in,
    }
}

async fn oauth_flow_store_contract(store: Arc<dyn OAuthFlowStore>) {
    // Taken once, then gone: a replayed callback finds nothing.
    let id = AccessToken::generate().unwrap().digest();
    let begun = flow(chrono::Duration::minutes(5));
    store.insert(&id, &begun).await.unwrap();
    let taken = store.take(&id).await.unwrap().expect("the flow");
    assert_eq!(taken, begun);
    assert_eq!(store.take(&id).await.unwrap(), None);
    // Unknown and expired flows are not there.
    let unknown = AccessToken::generate().unwrap().digest();
    assert_eq!(store.take(&unknown).await.unwrap(), None);
    let stale = AccessToken::generate().unwrap().digest();
    store
        .insert(&stale, &flow(chrono::Duration::seconds(-1)))
        .await
        .unwrap();
    assert_eq!(store.take(&stale).await.unwrap(), None);
    // Many callbacks racing for one flow: exactly one gets it.
    let raced = AccessToken::generate().unwrap().digest();
    store.insert(&raced, &begun).await.unwrap();
    let racers: Vec<_> = (0..8)
        .map(|_| {
            let (store, raced) = (store.clone(), raced.clone());
            tokio::spawn(async move { store.take(&raced).await.unwrap() })
        })
        .collect();
    let mut got = 0;
    for racer in racers {
        got += usize::from(racer.await.unwrap().is_some());
    }
    assert_eq!(got, 1);
}

#[tokio::test]
async fn in_memory_oauth_flow_store_meets_the_contract() {
    oauth_flow_store_contract(Arc::new(InMemoryOAuthFlowStore::new())).await;
}

#[tokio::test]
async fn redis_oauth_flow_store_meets_the_contract() {
    let redis = messenger_common::redis::connect(&redis_url())
        .await
        .expect("TEST_REDIS_URL reachable");
    oauth_flow_store_contract(Arc::new(RedisOAuthFlowStore::new(redis, unique_prefix()))).await;
}

#[tokio::test]
async fn redis_session_store_keeps_only_the_token_digest() {
    let url = redis_url();
    let redis = messenger_common::redis::connect(&url).await.unwrap();
    let prefix = unique_prefix();
    let store = RedisSessionStore::new(redis.clone(), prefix.clone());
    let token = AccessToken::generate().unwrap();
    let session = Session {
        user_id: Uuid::now_v7(),
        expires_at: Utc::now() + chrono::Duration::minutes(5),
    };
    store.insert(&token.digest(), &session).await.unwrap();

    let mut conn = redis.clone();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(keys.len(), 1);
    assert!(keys[0].ends_with(token.digest().as_str()));
    assert!(!keys[0].contains(token.expose()));
    let value: String = redis::cmd("GET")
        .arg(&keys[0])
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(!value.contains(token.expose()));
    let ttl_ms: i64 = redis::cmd("PTTL")
        .arg(&keys[0])
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        (1..=300_000).contains(&ttl_ms),
        "the key expires with the token, PTTL {ttl_ms}"
    );
}

// ---------------------------------------------------------------------------------------
// LoginAttemptLimiter

const LIMITS: LoginLimits = LoginLimits {
    max_failures_per_account_client: 3,
    max_failures_per_client: 10,
    window: Duration::from_secs(15 * 60),
    max_failures_per_account: 8,
    account_window: Duration::from_secs(60 * 60),
    first_delay: Duration::from_secs(1),
    max_delay: Duration::from_secs(60),
};

/// The wait a refused attempt asks for; panics if the attempt was let in.
fn refused(result: Result<(), AuthError>) -> Duration {
    match result {
        Err(AuthError::TooManyAttempts { retry_after }) => retry_after,
        other => panic!("expected TooManyAttempts, got {other:?}"),
    }
}

/// `n` failed attempts (begun, never succeeded) on `account` from `client`.
async fn fail(limiter: &dyn LoginAttemptLimiter, account: &Email, client: &str, n: u32) {
    for i in 0..n {
        limiter
            .begin_attempt(account, client)
            .await
            .unwrap_or_else(|e| panic!("failure {i} of {n} from {client} refused: {e:?}"));
    }
}

async fn login_attempt_limiter_contract(
    limiter: Arc<dyn LoginAttemptLimiter>,
    clock: LimiterClock,
) {
    let alice = Email::parse("alice@example.com").unwrap();
    let bob = Email::parse("bob@example.com").unwrap();

    // Per (account, client): three failures, then that client waits 1 s, 2 s, 4 s...
    fail(&*limiter, &alice, "10.0.0.1", 3).await;
    assert_eq!(
        refused(limiter.begin_attempt(&alice, "10.0.0.1").await),
        Duration::from_secs(1)
    );
    // ...while the account's owner elsewhere gets in, and the stranger can try bob.
    limiter.begin_attempt(&alice, "10.0.0.2").await.unwrap();
    limiter.attempt_succeeded(&alice, "10.0.0.2").await.unwrap();
    fail(&*limiter, &bob, "10.0.0.1", 1).await;
    clock.advance(Duration::from_secs(1));
    fail(&*limiter, &alice, "10.0.0.1", 1).await;
    assert_eq!(
        refused(limiter.begin_attempt(&alice, "10.0.0.1").await),
        Duration::from_secs(2)
    );
    // A success from that client forgets its failures against the account.
    clock.advance(Duration::from_secs(2));
    limiter.begin_attempt(&alice, "10.0.0.1").await.unwrap();
    limiter.attempt_succeeded(&alice, "10.0.0.1").await.unwrap();
    fail(&*limiter, &alice, "10.0.0.1", 3).await;
    refused(limiter.begin_attempt(&alice, "10.0.0.1").await);
    // An attempt abandoned before its password was checked stops counting.
    limiter.attempt_abandoned(&alice, "10.0.0.1").await.unwrap();
    fail(&*limiter, &alice, "10.0.0.1", 1).await;
    refused(limiter.begin_attempt(&alice, "10.0.0.1").await);
    // The window ends and everything is forgotten.
    clock.advance(LIMITS.window);
    fail(&*limiter, &alice, "10.0.0.1", 3).await;

    // Per client across accounts: ten failures (successes don't count), then it waits.
    for n in 0..10 {
        limiter.begin_attempt(&bob, "192.0.2.1").await.unwrap();
        limiter.attempt_succeeded(&bob, "192.0.2.1").await.unwrap();
        let email = Email::parse(&format!("guess{n}@example.com")).unwrap();
        limiter.begin_attempt(&email, "192.0.2.1").await.unwrap();
    }
    refused(limiter.begin_attempt(&bob, "192.0.2.1").await);
    limiter.begin_attempt(&bob, "192.0.2.2").await.unwrap();
    limiter.attempt_succeeded(&bob, "192.0.2.2").await.unwrap();

    // IPv6 clients count by /64: fresh addresses in one /64 are one client.
    let dave = Email::parse("dave@example.com").unwrap();
    for n in 1..=3 {
        fail(&*limiter, &dave, &format!("2001:db8:1:2::{n}"), 1).await;
    }
    refused(limiter.begin_attempt(&dave, "2001:db8:1:2:ffff::9").await);
    fail(&*limiter, &dave, "2001:db8:1:3::1", 1).await;

    // Per account, from many clients: eight failures in the hour, then clients the
    // account has not seen log in wait (doubling, capped)...
    let erin = Email::parse("erin@example.com").unwrap();
    limiter.begin_attempt(&erin, "198.51.100.1").await.unwrap();
    limiter
        .attempt_succeeded(&erin, "198.51.100.1")
        .await
        .unwrap();
    for n in 0..8 {
        fail(&*limiter, &erin, &format!("203.0.113.{n}"), 1).await;
    }
    assert_eq!(
        refused(limiter.begin_attempt(&erin, "203.0.113.50").await),
        Duration::from_secs(1)
    );
    // ...while a client that logged in to it before does not.
    limiter.begin_attempt(&erin, "198.51.100.1").await.unwrap();
    limiter
        .attempt_succeeded(&erin, "198.51.100.1")
        .await
        .unwrap();
    for n in 0..12 {
        clock.advance(LIMITS.max_delay);
        fail(&*limiter, &erin, &format!("203.0.114.{n}"), 1).await;
    }
    let wait = refused(limiter.begin_attempt(&erin, "203.0.113.51").await);
    assert_eq!(wait, LIMITS.max_delay, "delays stop growing at the cap");

    // Parallel attempts cannot slip past a limit.
    let carol = Email::parse("carol@example.com").unwrap();
    let race = |clients: Vec<String>| {
        let racers: Vec<_> = clients
            .into_iter()
            .map(|client| {
                let limiter = limiter.clone();
                let carol = carol.clone();
                tokio::spawn(async move { limiter.begin_attempt(&carol, &client).await })
            })
            .collect();
        async move {
            let mut allowed = 0;
            for racer in racers {
                match racer.await.unwrap() {
                    Ok(()) => allowed += 1,
                    Err(AuthError::TooManyAttempts { .. }) => {}
                    Err(other) => panic!("unexpected {other:?}"),
                }
            }
            allowed
        }
    };
    let one_client = vec!["10.2.0.1".to_owned(); 12];
    assert_eq!(
        race(one_client).await,
        LIMITS.max_failures_per_account_client
    );
    clock.advance(LIMITS.max_delay);
    let many_clients = (0..12).map(|n| format!("10.1.0.{n}")).collect();
    // Three are already counted against carol; five more fit the account's budget.
    assert_eq!(
        race(many_clients).await,
        LIMITS.max_failures_per_account - LIMITS.max_failures_per_account_client
    );
}

#[tokio::test]
async fn in_memory_login_attempt_limiter_meets_the_contract() {
    let clock = LimiterClock::manual(1_800_000_000_000);
    let limiter = InMemoryLoginAttemptLimiter::new(LIMITS).with_clock(clock.clone());
    login_attempt_limiter_contract(Arc::new(limiter), clock).await;
}

#[tokio::test]
async fn redis_login_attempt_limiter_meets_the_contract() {
    let redis = messenger_common::redis::connect(redis_url())
        .await
        .expect("TEST_REDIS_URL reachable");
    let clock = LimiterClock::manual(1_800_000_000_000);
    let limiter =
        RedisLoginAttemptLimiter::new(redis, unique_prefix(), LIMITS).with_clock(clock.clone());
    login_attempt_limiter_contract(Arc::new(limiter), clock).await;
}

// ---------------------------------------------------------------------------------------
// RegistrationLimiter

const REGISTER_LIMITS: RegisterLimits = RegisterLimits {
    max_per_client: 3,
    window: Duration::from_secs(3600),
};

fn registration_refused(result: Result<(), AuthError>) -> Duration {
    match result {
        Err(AuthError::TooManyRegistrations { retry_after }) => retry_after,
        other => panic!("expected TooManyRegistrations, got {other:?}"),
    }
}

async fn registration_limiter_contract(limiter: Arc<dyn RegistrationLimiter>, clock: LimiterClock) {
    // Three in the window, then the client waits until its window ends.
    for _ in 0..3 {
        limiter.begin_registration("10.0.0.1").await.unwrap();
        clock.advance(Duration::from_secs(600));
    }
    assert_eq!(
        registration_refused(limiter.begin_registration("10.0.0.1").await),
        Duration::from_secs(1800)
    );
    // Another address is its own client; an IPv4-mapped address is the IPv4 one.
    limiter.begin_registration("10.0.0.2").await.unwrap();
    registration_refused(limiter.begin_registration("::ffff:10.0.0.1").await);
    clock.advance(Duration::from_secs(1800));
    limiter.begin_registration("10.0.0.1").await.unwrap();

    // IPv6 clients count by /64.
    for n in 1..=3 {
        limiter
            .begin_registration(&format!("2001:db8:5:6::{n}"))
            .await
            .unwrap();
    }
    registration_refused(limiter.begin_registration("2001:db8:5:6:abcd::1").await);
    limiter.begin_registration("2001:db8:5:7::1").await.unwrap();

    // Parallel registrations cannot slip past the limit.
    let racers: Vec<_> = (0..12)
        .map(|_| {
            let limiter = limiter.clone();
            tokio::spawn(async move { limiter.begin_registration("192.0.2.77").await })
        })
        .collect();
    let mut allowed = 0;
    for racer in racers {
        match racer.await.unwrap() {
            Ok(()) => allowed += 1,
            Err(AuthError::TooManyRegistrations { .. }) => {}
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(allowed, REGISTER_LIMITS.max_per_client);
}

#[tokio::test]
async fn in_memory_registration_limiter_meets_the_contract() {
    let clock = LimiterClock::manual(1_800_000_000_000);
    let limiter = InMemoryRegistrationLimiter::new(REGISTER_LIMITS).with_clock(clock.clone());
    registration_limiter_contract(Arc::new(limiter), clock).await;
}

#[tokio::test]
async fn redis_registration_limiter_meets_the_contract() {
    let redis = messenger_common::redis::connect(&redis_url())
        .await
        .expect("TEST_REDIS_URL reachable");
    let clock = LimiterClock::manual(1_800_000_000_000);
    let limiter = RedisRegistrationLimiter::new(redis, unique_prefix(), REGISTER_LIMITS)
        .with_clock(clock.clone());
    registration_limiter_contract(Arc::new(limiter), clock).await;
}
