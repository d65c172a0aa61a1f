//! The latest page of each active chat, cached in Redis so opening a chat skips the
//! store's history query. Never the source of truth: a cached page is used only while
//! no message was sent since it was read (see [`HistoryCache`]) and while its newest
//! message is the chat's last message as the store reports it. Redis trouble never
//! fails a request: it is logged and the store answers.

use std::time::Duration;

use messenger_common::redis::LazyConnection;
use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};

use crate::domain::{Chat, ChatId, Message, MessageId, UserId};

/// How many messages a cached page holds: the largest page a caller may ask for.
pub const CACHED_PAGE_LEN: usize = crate::domain::MAX_HISTORY_LIMIT;

/// A chat's newest messages, newest first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CachedPage {
    pub messages: Vec<Message>,
    /// The chat has no messages beyond these.
    pub complete: bool,
}

impl CachedPage {
    /// Whether this page still shows the chat as it is: its newest message is the chat's
    /// last message (both empty also counts).
    pub fn is_current_for(&self, chat: &Chat) -> bool {
        self.messages.first().map(|message| message.id)
            == chat.last_message.as_ref().map(|message| message.id)
    }

    /// The first page of `limit` messages and the cursor for the next one, if this page
    /// holds enough to answer.
    pub fn first_page(&self, limit: usize) -> Option<(Vec<Message>, Option<MessageId>)> {
        if self.messages.len() > limit {
            let page = self.messages[..limit].to_vec();
            let next = page.last().map(|message| message.id);
            Some((page, next))
        } else if self.complete {
            Some((self.messages.clone(), None))
        } else if self.messages.len() == limit {
            // Exactly `limit` cached and more exist in the store.
            let next = self.messages.last().map(|message| message.id);
            Some((self.messages.clone(), next))
        } else {
            None
        }
    }
}

/// What a cache read found: the page, if one is current, and the chat's generation,
/// which the reader passes back when it caches a page it read from the store.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CacheLookup {
    pub page: Option<CachedPage>,
    pub generation: u64,
}

/// The Redis-backed cache of each chat's latest page.
///
/// Every send bumps the chat's generation counter after the message is stored, and a
/// page is stored with the generation its reader saw before querying the store. A page
/// read from the store before a concurrent send landed therefore carries an older
/// generation and is never served, even if the racing reader writes it last.
///
/// Built with [`HistoryCache::connect_lazily`], it connects on first use, so the
/// service starts and serves from the store while Redis is down.
#[derive(Clone)]
pub struct HistoryCache {
    connection: LazyConnection,
    key_prefix: String,
    ttl: Duration,
}

impl HistoryCache {
    /// `key_prefix` namespaces every key (e.g. `chat:`); `ttl` bounds how long
    /// an idle chat's page stays.
    pub fn new(
        connection: ConnectionManager,
        key_prefix: impl Into<String>,
        ttl: Duration,
    ) -> Self {
        Self {
            connection: LazyConnection::connected(connection),
            key_prefix: key_prefix.into(),
            ttl,
        }
    }

    /// A cache that connects to `url` on first use (and again on later calls until that
    /// succeeds). Fails only for a malformed URL.
    pub fn connect_lazily(
        url: impl Into<messenger_common::redis::RedisConfig>,
        key_prefix: impl Into<String>,
        ttl: Duration,
    ) -> Result<Self, messenger_common::Error> {
        Ok(Self {
            connection: LazyConnection::new(url)?,
            key_prefix: key_prefix.into(),
            ttl,
        })
    }

    /// The connection, or `None` (logged) while Redis cannot be reached.
    async fn connection(&self, chat: ChatId) -> Option<ConnectionManager> {
        match self.connection.get().await {
            Ok(connection) => Some(connection),
            Err(error) => {
                tracing::warn!(%error, %chat, "history cache unavailable; using the store");
                None
            }
        }
    }

    fn page_key(&self, chat: ChatId) -> String {
        format!("{}history:{chat}", self.key_prefix)
    }

    fn generation_key(&self, chat: ChatId) -> String {
        format!("{}history-generation:{chat}", self.key_prefix)
    }

    fn ttl_secs(&self) -> u64 {
        self.ttl.as_secs().max(1)
    }

    /// The cached page if it belongs to the chat's current generation (a Redis or
    /// decoding failure counts as a miss).
    pub async fn latest_page(&self, chat: ChatId) -> CacheLookup {
        let Some(mut connection) = self.connection(chat).await else {
            return CacheLookup::default();
        };
        let read: Result<(Option<u64>, Option<String>), _> = redis::cmd("MGET")
            .arg(self.generation_key(chat))
            .arg(self.page_key(chat))
            .query_async(&mut connection)
            .await;
        let (generation, raw) = match read {
            Ok((generation, raw)) => (generation.unwrap_or(0), raw),
            Err(error) => {
                tracing::warn!(%error, %chat, "history cache read failed; reading the store");
                return CacheLookup::default();
            }
        };
        let page = raw.and_then(|raw| match serde_json::from_str::<StoredPage>(&raw) {
            Ok(stored) if stored.generation == generation => stored.into_page(chat),
            Ok(_) => None,
            Err(error) => {
                tracing::warn!(%error, %chat, "undecodable history cache entry ignored");
                None
            }
        });
        CacheLookup { page, generation }
    }

    /// Caches the chat's latest page, read from the store after seeing `generation`
    /// (best effort).
    pub async fn store_latest_page(&self, chat: ChatId, generation: u64, page: &CachedPage) {
        let encoded = match serde_json::to_string(&StoredPage::from_page(page, generation)) {
            Ok(encoded) => encoded,
            Err(error) => {
                tracing::warn!(%error, %chat, "could not encode a history page");
                return;
            }
        };
        let Some(mut connection) = self.connection(chat).await else {
            return;
        };
        if let Err(error) = connection
            .set_ex::<_, _, ()>(self.page_key(chat), encoded, self.ttl_secs())
            .await
        {
            tracing::warn!(%error, %chat, "history cache write failed");
        }
    }

    /// Called after a message is stored: moves the chat to a new generation, so every
    /// page cached before is stale, and drops the page. Best effort; the generation key
    /// outlives any page stored under it.
    pub async fn invalidate(&self, chat: ChatId) {
        let Some(mut connection) = self.connection(chat).await else {
            return;
        };
        let generation_key = self.generation_key(chat);
        let result: Result<(), _> = redis::pipe()
            .atomic()
            .incr(&generation_key, 1)
            .ignore()
            .expire(
                &generation_key,
                i64::try_from(self.ttl_secs() * 2).unwrap_or(i64::MAX),
            )
            .ignore()
            .del(self.page_key(chat))
            .ignore()
            .query_async(&mut connection)
            .await;
        if let Err(error) = result {
            tracing::warn!(%error, %chat, "history cache invalidation failed");
        }
    }
}

/// The JSON shape in Redis; ids as strings, times as UNIX milliseconds.
#[derive(Serialize, Deserialize)]
struct StoredPage {
    generation: u64,
    messages: Vec<StoredMessage>,
    complete: bool,
}

#[derive(Serialize, Deserialize)]
struct StoredMessage {
    id: String,
    author_id: String,
    content: String,
    sent_at_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    client_message_id: Option<String>,
}

impl StoredPage {
    fn from_page(page: &CachedPage, generation: u64) -> Self {
        Self {
            generation,
            messages: page
                .messages
                .iter()
                .map(|message| StoredMessage {
                    id: message.id.to_string(),
                    author_id: message.author_id.to_string(),
                    content: message.content.clone(),
                    sent_at_ms: message.sent_at.timestamp_millis(),
                    client_message_id: message.client_message_id.clone(),
                })
                .collect(),
            complete: page.complete,
        }
    }

    fn into_page(self, chat: ChatId) -> Option<CachedPage> {
        let messages = self
            .messages
            .into_iter()
            .map(|stored| {
                Some(Message {
                    id: MessageId::parse("id", &stored.id).ok()?,
                    chat_id: chat,
                    author_id: UserId::parse("author_id", &stored.author_id).ok()?,
                    content: stored.content,
                    sent_at: chrono::DateTime::from_timestamp_millis(stored.sent_at_ms)?,
                    client_message_id: stored.client_message_id,
                })
            })
            .collect::<Option<Vec<_>>>()?;
        Some(CachedPage {
            messages,
            complete: self.complete,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ChatDraft;

    fn messages(chat: ChatId, author: UserId, count: usize) -> Vec<Message> {
        let mut messages: Vec<Message> = (0..count)
            .map(|n| {
                let id = MessageId::generate();
                Message {
                    id,
                    chat_id: chat,
                    author_id: author,
                    content: format!("m{n}"),
                    sent_at: id.timestamp(),
                    client_message_id: None,
                }
            })
            .collect();
        messages.reverse();
        messages
    }

    #[test]
    fn first_page_answers_only_when_the_cache_holds_enough() {
        let chat = ChatId::generate();
        let author = UserId::new_random();
        let five = messages(chat, author, 5);
        let partial = CachedPage {
            messages: five.clone(),
            complete: false,
        };
        let complete = CachedPage {
            messages: five.clone(),
            complete: true,
        };

        let (page, next) = partial.first_page(3).unwrap();
        assert_eq!(page, five[..3].to_vec());
        assert_eq!(next, Some(five[2].id));
        assert_eq!(partial.first_page(5).unwrap().1, Some(five[4].id));
        assert_eq!(partial.first_page(6), None);
        assert_eq!(complete.first_page(5), Some((five.clone(), None)));
        assert_eq!(complete.first_page(50), Some((five, None)));
    }

    #[test]
    fn a_page_is_current_only_while_its_head_is_the_chats_last_message() {
        let (a, b) = (UserId::new_random(), UserId::new_random());
        let mut chat = ChatDraft {
            creator_id: a,
            other_ids: vec![b],
        }
        .into_chat();
        let empty = CachedPage {
            messages: vec![],
            complete: true,
        };
        assert!(empty.is_current_for(&chat));
        let page = CachedPage {
            messages: messages(chat.id, a, 2),
            complete: true,
        };
        assert!(!page.is_current_for(&chat));
        chat.last_message = Some(page.messages[0].clone());
        assert!(page.is_current_for(&chat));
        chat.last_message = Some(messages(chat.id, a, 1).remove(0));
        assert!(!page.is_current_for(&chat));
        assert!(!empty.is_current_for(&chat));
    }

    #[test]
    fn pages_survive_the_json_round_trip() {
        let chat = ChatId::generate();
        let mut page = CachedPage {
            messages: messages(chat, UserId::new_random(), 3),
            complete: false,
        };
        page.messages[1].client_message_id = Some("retry-key".into());
        let json = serde_json::to_string(&StoredPage::from_page(&page, 7)).unwrap();
        let back = serde_json::from_str::<StoredPage>(&json)
            .unwrap()
            .into_page(chat);
        assert_eq!(back, Some(page));
    }
}
