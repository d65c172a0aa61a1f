//! The cache during and after an outage, against a private `redis-server` (never the shared
//! test Redis): frozen with SIGSTOP (calls hang and time out), or refusing every command of
//! the service's user (an ACL change; data kept, nothing written). Reads keep working from
//! the store, and once Redis answers again nothing cached before the outage is served stale.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use messenger_common::testing::free_port;
use messenger_users::cache::RedisProfileCache;
use messenger_users::cached_store::CachedProfileStore;
use messenger_users::domain::{
    Nickname, Profile, ProfileUpdate, Registration, RegistrationOutcome, SearchQuery,
};
use messenger_users::store::InMemoryProfileStore;
use uuid::Uuid;

const CACHE_TIMEOUT: Duration = Duration::from_millis(200);
const PAUSE: Duration = Duration::from_millis(500);

/// A `redis-server` of our own (not the shared test Redis), killed on drop.
struct PrivateRedis {
    child: Child,
    port: u16,
}

impl PrivateRedis {
    async fn start() -> Self {
        Self::start_on(free_port()).await
    }

    async fn start_on(port: u16) -> Self {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (Debian package redis-server) must be installed for this test");
        let redis = Self { child, port };
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return redis;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("private redis-server on port {port} did not start");
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Makes Redis refuse (`false`) or accept (`true`) every command of the default user,
    /// which the cache uses; an `admin` user keeps control.
    async fn accept_cache_commands(&self, accept: bool) {
        let admin_url = format!("redis://admin:admin-pw@127.0.0.1:{}", self.port);
        let mut admin = match redis::Client::open(admin_url.as_str())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
        {
            Ok(connection) => connection,
            Err(_) => {
                // First call: create the admin user through the (still open) default user.
                let mut default = redis::Client::open(self.url().as_str())
                    .unwrap()
                    .get_multiplexed_async_connection()
                    .await
                    .expect("connect to the private redis-server");
                let () = redis::cmd("ACL")
                    .arg(&["SETUSER", "admin", "on", ">admin-pw", "~*", "&*", "+@all"][..])
                    .query_async(&mut default)
                    .await
                    .expect("create the admin user");
                redis::Client::open(admin_url.as_str())
                    .unwrap()
                    .get_multiplexed_async_connection()
                    .await
                    .expect("connect as admin")
            }
        };
        let permission = if accept { "+@all" } else { "-@all" };
        let () = redis::cmd("ACL")
            .arg(&["SETUSER", "default", permission][..])
            .query_async(&mut admin)
            .await
            .expect("change the default user's permissions");
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {signal} redis-server");
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn register(profiles: &CachedProfileStore, nickname: &str) -> Profile {
    let registration = Registration::parse(
        &Uuid::now_v7().to_string(),
        &Uuid::now_v7().to_string(),
        nickname,
    )
    .unwrap();
    match profiles.register(&registration).await.unwrap() {
        RegistrationOutcome::Created(profile) => profile,
        other => panic!("expected Created, got {other:?}"),
    }
}

fn nicknames(profiles: &[Profile]) -> Vec<&str> {
    profiles.iter().map(|p| p.nickname.as_str()).collect()
}

async fn cached_profiles(redis: &PrivateRedis) -> CachedProfileStore {
    let cache =
        RedisProfileCache::connect_lazily(redis.url(), "users:", Duration::from_secs(60)).unwrap();
    CachedProfileStore::new(
        Arc::new(InMemoryProfileStore::new()),
        Arc::new(cache),
        CACHE_TIMEOUT,
    )
    .with_pause_after_failure(PAUSE)
}

#[tokio::test]
async fn reads_and_writes_work_while_redis_hangs() {
    let redis = PrivateRedis::start().await;
    let profiles = cached_profiles(&redis).await;
    let search = SearchQuery::parse("hang", 10, "").unwrap();
    let anna = register(&profiles, "hang-anna").await;
    assert_eq!(profiles.get(anna.user_id).await.unwrap(), anna);

    redis.signal("-STOP");
    let started = tokio::time::Instant::now();
    let ben = register(&profiles, "hang-ben").await;
    let update = ProfileUpdate::parse(None, Some("written while Redis hangs"), None).unwrap();
    let edited = profiles.update(anna.user_id, &update).await.unwrap();
    assert_eq!(profiles.get(anna.user_id).await.unwrap(), edited);
    assert_eq!(profiles.get(ben.user_id).await.unwrap(), ben);
    let found = profiles.search(&search).await.unwrap().profiles;
    assert_eq!(nicknames(&found), ["hang-anna", "hang-ben"]);
    // Each failing call costs at most the cache timeout, and skippable ones are skipped.
    assert!(
        started.elapsed() < CACHE_TIMEOUT * 10,
        "took {:?}",
        started.elapsed()
    );
    redis.signal("-CONT");
}

#[tokio::test]
async fn nothing_stale_is_served_after_a_cache_outage() {
    let redis = PrivateRedis::start().await;
    let profiles = cached_profiles(&redis).await;
    let search = SearchQuery::parse("out", 10, "").unwrap();

    let anna = register(&profiles, "outage-anna").await;
    assert_eq!(profiles.get(anna.user_id).await.unwrap(), anna);
    assert_eq!(
        nicknames(&profiles.search(&search).await.unwrap().profiles),
        ["outage-anna"]
    );

    redis.accept_cache_commands(false).await;
    let ben = register(&profiles, "outage-ben").await;
    let update = ProfileUpdate::parse(None, Some("written during the outage"), None).unwrap();
    let edited = profiles.update(anna.user_id, &update).await.unwrap();
    assert_eq!(
        profiles.get(anna.user_id).await.unwrap(),
        edited,
        "served by the store"
    );
    let during = profiles.search(&search).await.unwrap().profiles;
    assert_eq!(nicknames(&during), ["outage-anna", "outage-ben"]);
    assert_eq!(during[0], edited);

    redis.accept_cache_commands(true).await;
    tokio::time::sleep(PAUSE * 2).await;
    // Redis still holds Anna's old profile and the old one-profile page: neither may show.
    assert_eq!(profiles.get(anna.user_id).await.unwrap(), edited);
    let after = profiles.search(&search).await.unwrap().profiles;
    assert_eq!(nicknames(&after), ["outage-anna", "outage-ben"]);
    assert_eq!(after[0], edited);
    let by_nickname = profiles
        .get_by_nickname(&Nickname::parse("outage-ben").unwrap())
        .await
        .unwrap();
    assert_eq!(by_nickname, ben);
}

#[tokio::test]
async fn the_cache_is_used_once_redis_comes_up() {
    let port = free_port();
    let cache = RedisProfileCache::connect_lazily(
        format!("redis://127.0.0.1:{port}"),
        "users:",
        Duration::from_secs(60),
    )
    .unwrap();
    let profiles = CachedProfileStore::new(
        Arc::new(InMemoryProfileStore::new()),
        Arc::new(cache),
        CACHE_TIMEOUT,
    )
    .with_pause_after_failure(PAUSE);
    let lena = register(&profiles, "late-lena").await;
    assert_eq!(
        profiles.get(lena.user_id).await.unwrap(),
        lena,
        "served without Redis"
    );

    let redis = PrivateRedis::start_on(port).await;
    tokio::time::sleep(PAUSE * 2).await;
    assert_eq!(profiles.get(lena.user_id).await.unwrap(), lena);
    let mut connection = redis::Client::open(redis.url().as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let cached: Option<String> = redis::cmd("GET")
        .arg(format!("users:profile:{}", lena.user_id))
        .query_async(&mut connection)
        .await
        .unwrap();
    assert!(
        cached.is_some_and(|value| value.contains("late-lena")),
        "profile now cached"
    );
}
