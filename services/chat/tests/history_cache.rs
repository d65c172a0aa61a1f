//! The Redis history cache against real Redis (`TEST_REDIS_URL`, a unique key prefix per
//! test): the race between a reader caching what it read and a concurrent send.

use std::time::Duration;

use messenger_chat::cache::{CachedPage, HistoryCache};
use messenger_chat::domain::{ChatId, Message, MessageId, UserId};
use messenger_common::testing;
use redis::AsyncCommands;

async fn cache(ttl: Duration) -> (HistoryCache, redis::aio::ConnectionManager, String) {
    let url = testing::redis_url();
    let connection = messenger_common::redis::connect(&url)
        .await
        .unwrap_or_else(|error| panic!("Redis at TEST_REDIS_URL={url} is unreachable: {error}"));
    let prefix = testing::unique_prefix();
    (
        HistoryCache::new(connection.clone(), prefix.clone(), ttl),
        connection,
        prefix,
    )
}

fn page(chat: ChatId, contents: &[&str]) -> CachedPage {
    let author = UserId::new_random();
    let mut messages: Vec<Message> = contents
        .iter()
        .map(|content| {
            let id = MessageId::generate();
            Message {
                id,
                chat_id: chat,
                author_id: author,
                content: (*content).to_owned(),
                sent_at: id.timestamp(),
                client_message_id: None,
            }
        })
        .collect();
    messages.reverse();
    CachedPage {
        messages,
        complete: true,
    }
}

#[tokio::test]
async fn a_page_read_before_a_concurrent_send_is_never_served() {
    let (cache, _, _) = cache(Duration::from_secs(60)).await;
    let chat = ChatId::generate();
    let stale = page(chat, &["one"]);

    // Reader: misses, notes the generation, reads the store (one message)...
    let lookup = cache.latest_page(chat).await;
    assert_eq!(lookup.page, None);
    // ...a send lands and invalidates...
    cache.invalidate(chat).await;
    // ...and only then the reader caches what it read.
    cache
        .store_latest_page(chat, lookup.generation, &stale)
        .await;
    assert_eq!(
        cache.latest_page(chat).await.page,
        None,
        "the stale page must not be served"
    );

    // A reader that starts after the send caches a page that is served.
    let lookup = cache.latest_page(chat).await;
    let fresh = page(chat, &["one", "two"]);
    cache
        .store_latest_page(chat, lookup.generation, &fresh)
        .await;
    assert_eq!(cache.latest_page(chat).await.page, Some(fresh));
    // Other chats are unaffected.
    assert_eq!(cache.latest_page(ChatId::generate()).await.page, None);
}

#[tokio::test]
async fn cached_pages_expire_after_the_ttl() {
    let (cache, mut redis, prefix) = cache(Duration::from_secs(30)).await;
    let chat = ChatId::generate();
    let lookup = cache.latest_page(chat).await;
    cache
        .store_latest_page(chat, lookup.generation, &page(chat, &["hi"]))
        .await;
    cache.invalidate(ChatId::generate()).await;
    let keys: Vec<String> = redis.keys(format!("{prefix}*")).await.unwrap();
    assert!(!keys.is_empty());
    for key in &keys {
        let ttl: i64 = redis.ttl(key).await.unwrap();
        assert!(ttl > 0 && ttl <= 60, "{key} should expire, TTL {ttl}");
    }
    let _: () = redis.del(keys).await.unwrap();
}
