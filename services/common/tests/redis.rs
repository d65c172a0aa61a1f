//! `redis::connect` against the real Redis.

use messenger_common::admin::ReadinessCheck;
use messenger_common::testing::{free_port, redis_url, unique_prefix};
use redis::AsyncCommands as _;

#[tokio::test]
async fn connect_gives_a_working_connection() {
    let mut redis = messenger_common::redis::connect(redis_url())
        .await
        .expect("TEST_REDIS_URL reachable");
    let key = format!("{}greeting", unique_prefix());
    let _: () = redis.set_ex(&key, "hello", 30).await.unwrap();
    let value: String = redis.get(&key).await.unwrap();
    assert_eq!(value, "hello");
    assert_eq!(redis.name(), "redis");
    assert_eq!(redis.check().await, Ok(()));
}

#[tokio::test]
async fn connecting_to_a_dead_redis_fails_quickly() {
    let started = std::time::Instant::now();
    let result =
        messenger_common::redis::connect(format!("redis://127.0.0.1:{}", free_port())).await;
    assert!(result.is_err(), "nothing listens there");
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
}
