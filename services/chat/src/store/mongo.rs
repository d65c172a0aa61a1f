//! [`MongoChatStore`]: chats, messages and the event outbox in MongoDB (collections
//! `chats`, `messages`, `outbox`), with the indexes the queries need created at start-up.
//!
//! Atomicity without transactions (which need a replica set): a state change and its
//! event are two single-document writes, the outbox document FIRST. The outbox document
//! names its subject (the chat or message it announces); the relay publishes it only once
//! the subject exists, and abandons it if the subject still does not exist after a grace
//! period (the write failed or the process died between the two writes). A crash can
//! therefore neither lose the event of a stored change nor publish an event for a change
//! that never happened. See `crate::outbox::plan_outbox`.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, TimeZone, Utc};
use futures::TryStreamExt;
use messenger_proto::v1::Event;
use mongodb::bson::{self, Document, doc};
use mongodb::error::{ErrorKind, WriteFailure};
use mongodb::options::{ClientOptions, IndexOptions};
use mongodb::{Client, Collection, Database, IndexModel};
use prost::Message as _;
use serde::{Deserialize, Serialize};

use super::{ChatStore, OutboxEvent, Stored, outbox_event};
use crate::domain::{Chat, ChatId, ChatKind, Message, MessageId, UserId};
use crate::error::ChatError;
use crate::outbox::{OutboxDecision, PendingCheck, plan_outbox};

const CHATS: &str = "chats";
const MESSAGES: &str = "messages";
const OUTBOX: &str = "outbox";
const DUPLICATE_KEY: i32 = 11000;
const STATE_PENDING: &str = "pending";
const STATE_PUBLISHED: &str = "published";
const STATE_ABANDONED: &str = "abandoned";
/// Published outbox documents are kept this long (for inspection), then expire.
const PUBLISHED_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// Where and how to connect.
#[derive(Clone, Debug)]
pub struct MongoStoreConfig {
    /// `MONGODB_URI`.
    pub uri: messenger_common::config::SecretUrl,
    /// The database; `None` means the one named in the URI, else `messenger_chat`.
    pub database: Option<String>,
    /// How long an outbox event may wait for its subject before it is abandoned. Must be
    /// well above the longest write (the request timeout).
    pub orphan_grace: Duration,
}

impl MongoStoreConfig {
    pub fn new(uri: impl Into<messenger_common::config::SecretUrl>) -> Self {
        Self {
            uri: uri.into(),
            database: None,
            orphan_grace: Duration::from_secs(120),
        }
    }
}

/// The chat store on MongoDB.
#[derive(Clone)]
pub struct MongoChatStore {
    database: Database,
    chats: Collection<ChatDoc>,
    messages: Collection<MessageDoc>,
    outbox: Collection<OutboxDoc>,
    orphan_grace: Duration,
}

impl MongoChatStore {
    /// Connects, checks the server answers, and creates the indexes.
    pub async fn connect(config: &MongoStoreConfig) -> Result<Self, ChatError> {
        let shown_uri = config.uri.to_string();
        let mut options = ClientOptions::parse(config.uri.expose())
            .await
            .map_err(|error| {
                messenger_common::ConfigError::invalid("MONGODB_URI", config.uri.expose(), error)
            })?;
        options
            .app_name
            .get_or_insert_with(|| "messenger-chat".to_owned());
        // Fail start-up (and requests) within seconds rather than the driver's 30 s.
        options
            .server_selection_timeout
            .get_or_insert(Duration::from_secs(5));
        let default_database = options.default_database.clone();
        let client = Client::with_options(options)?;
        let name = config
            .database
            .clone()
            .or(default_database)
            .unwrap_or_else(|| "messenger_chat".to_owned());
        let database = client.database(&name);
        database
            .run_command(doc! { "ping": 1 })
            .await
            .map_err(|error| {
                ChatError::Unavailable(format!("MongoDB at {shown_uri} did not answer: {error}"))
            })?;
        let store = Self {
            chats: database.collection(CHATS),
            messages: database.collection(MESSAGES),
            outbox: database.collection(OUTBOX),
            database,
            orphan_grace: config.orphan_grace,
        };
        store.create_indexes().await?;
        Ok(store)
    }

    /// The database this store writes to (tests drop it when done).
    pub fn database(&self) -> &Database {
        &self.database
    }

    async fn create_indexes(&self) -> Result<(), ChatError> {
        let index = |keys: Document, options: IndexOptions| {
            IndexModel::builder().keys(keys).options(options).build()
        };
        self.chats
            .create_indexes([
                // GetUserChats: a user's chats, most recently active first.
                index(
                    doc! { "participant_ids": 1, "activity_key": -1 },
                    IndexOptions::builder()
                        .name("participants_activity".to_owned())
                        .build(),
                ),
                // One direct chat per pair of people.
                index(
                    doc! { "direct_key": 1 },
                    IndexOptions::builder()
                        .name("direct_key_unique".to_owned())
                        .unique(true)
                        .partial_filter_expression(doc! { "direct_key": { "$type": "string" } })
                        .build(),
                ),
            ])
            .await?;
        self.messages
            .create_indexes([
                // GetChatHistory: a chat's messages by id, newest first.
                index(
                    doc! { "chat_id": 1, "_id": -1 },
                    IndexOptions::builder()
                        .name("chat_message".to_owned())
                        .build(),
                ),
                // Idempotent SendMessage.
                index(
                    doc! { "chat_id": 1, "author_id": 1, "client_message_id": 1 },
                    IndexOptions::builder()
                        .name("client_message_id_unique".to_owned())
                        .unique(true)
                        .partial_filter_expression(
                            doc! { "client_message_id": { "$type": "string" } },
                        )
                        .build(),
                ),
            ])
            .await?;
        self.outbox
            .create_indexes([
                index(
                    doc! { "state": 1, "_id": 1 },
                    IndexOptions::builder().name("state_id".to_owned()).build(),
                ),
                // Only published documents have `published_at`, so only they expire.
                index(
                    doc! { "published_at": 1 },
                    IndexOptions::builder()
                        .name("published_ttl".to_owned())
                        .expire_after(PUBLISHED_RETENTION)
                        .build(),
                ),
            ])
            .await?;
        Ok(())
    }

    /// Writes the outbox document that must precede the change it announces.
    async fn write_outbox(
        &self,
        event: &Event,
        key: String,
        subject: &str,
        subject_id: String,
    ) -> Result<(), ChatError> {
        let document = OutboxDoc {
            id: event.event_id.clone(),
            topic: messenger_proto::topics::CHAT_EVENTS.to_owned(),
            key,
            payload: bson::Binary {
                subtype: bson::spec::BinarySubtype::Generic,
                bytes: event.encode_to_vec(),
            },
            state: STATE_PENDING.to_owned(),
            written_at: to_bson_time(Utc::now()),
            subject_collection: subject.to_owned(),
            subject_id,
            published_at: None,
        };
        self.outbox.insert_one(&document).await?;
        Ok(())
    }

    /// Removes the outbox document of a change that definitely did not happen (it lost a
    /// unique-index race). Best effort: the relay abandons it anyway after the grace.
    async fn drop_outbox(&self, event_id: &str) {
        if let Err(error) = self
            .outbox
            .delete_one(doc! { "_id": event_id, "state": STATE_PENDING })
            .await
        {
            tracing::warn!(%error, event_id, "could not drop the outbox event of a duplicate write");
        }
    }

    /// Moves the chat's summary to `message` unless it already shows a later one.
    /// Idempotent, so a retried send also repairs a summary a crash left behind.
    async fn advance_summary(&self, message: &MessageDoc) -> Result<(), ChatError> {
        let last_message = bson::to_bson(message).map_err(ChatError::internal)?;
        self.chats
            .update_one(
                doc! {
                    "_id": &message.chat_id,
                    "$or": [ { "last_message": null }, { "last_message._id": { "$lt": &message.id } } ],
                },
                doc! { "$set": {
                    "last_message": last_message,
                    "last_activity_at": message.sent_at,
                    "activity_key": &message.id,
                } },
            )
            .await?;
        Ok(())
    }

    async fn message_by_client_id(
        &self,
        message: &Message,
        client_id: &str,
    ) -> Result<Option<MessageDoc>, ChatError> {
        Ok(self
            .messages
            .find_one(doc! {
                "chat_id": message.chat_id.to_string(),
                "author_id": message.author_id.to_string(),
                // `$type` repeats the partial index's filter so the planner can use it.
                "client_message_id": { "$eq": client_id, "$type": "string" },
            })
            .await?)
    }

    /// Whether the chat or message an outbox event announces is stored. A stored message
    /// also moves its chat's summary forward (a no-op normally), which repairs a summary
    /// left behind by a crash between the message insert and the summary update.
    async fn subject_stored(&self, outbox: &OutboxDoc) -> Result<bool, ChatError> {
        if outbox.subject_collection == MESSAGES {
            let Some(message) = self
                .messages
                .find_one(doc! { "_id": &outbox.subject_id })
                .await?
            else {
                return Ok(false);
            };
            self.advance_summary(&message).await?;
            return Ok(true);
        }
        self.subject_exists(&outbox.subject_collection, &outbox.subject_id)
            .await
    }

    async fn subject_exists(&self, collection: &str, id: &str) -> Result<bool, ChatError> {
        let count = self
            .database
            .collection::<Document>(collection)
            .count_documents(doc! { "_id": id })
            .limit(1)
            .await?;
        Ok(count > 0)
    }

    async fn set_outbox_state(&self, event_id: &str, state: &str) -> Result<(), ChatError> {
        self.outbox
            .update_one(
                doc! { "_id": event_id },
                doc! { "$set": { "state": state } },
            )
            .await?;
        Ok(())
    }
}

#[async_trait]
impl ChatStore for MongoChatStore {
    async fn create_chat(&self, chat: Chat, event: Event) -> Result<Stored<Chat>, ChatError> {
        let document = ChatDoc::from_chat(&chat);
        if let Some(key) = &document.direct_key
            && let Some(existing) = self.chats.find_one(direct_key_filter(key)).await?
        {
            return Ok(Stored {
                value: existing.into_chat()?,
                created: false,
            });
        }
        self.write_outbox(&event, document.id.clone(), CHATS, document.id.clone())
            .await?;
        match self.chats.insert_one(&document).await {
            Ok(_) => Ok(Stored {
                value: chat,
                created: true,
            }),
            Err(error) if is_duplicate_key(&error) && document.direct_key.is_some() => {
                // Someone opened the same direct chat a moment ago: theirs wins.
                self.drop_outbox(&event.event_id).await;
                let key = document.direct_key.unwrap_or_default();
                let existing = self
                    .chats
                    .find_one(direct_key_filter(&key))
                    .await?
                    .ok_or_else(|| {
                        ChatError::internal(anyhow::anyhow!(
                            "direct chat {key} vanished after a duplicate-key error"
                        ))
                    })?;
                Ok(Stored {
                    value: existing.into_chat()?,
                    created: false,
                })
            }
            Err(error) => Err(error.into()),
        }
    }

    async fn chat(&self, id: ChatId) -> Result<Option<Chat>, ChatError> {
        self.chats
            .find_one(doc! { "_id": id.to_string() })
            .await?
            .map(ChatDoc::into_chat)
            .transpose()
    }

    async fn user_chats(
        &self,
        user: UserId,
        before: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Chat>, ChatError> {
        let mut filter = doc! { "participant_ids": user.to_string() };
        if let Some(before) = before {
            filter.insert("activity_key", doc! { "$lt": before });
        }
        let documents: Vec<ChatDoc> = self
            .chats
            .find(filter)
            .sort(doc! { "activity_key": -1 })
            .limit(i64::try_from(limit).unwrap_or(i64::MAX))
            .await?
            .try_collect()
            .await?;
        documents.into_iter().map(ChatDoc::into_chat).collect()
    }

    async fn append_message(
        &self,
        message: Message,
        event: Event,
    ) -> Result<Stored<Message>, ChatError> {
        if let Some(client_id) = &message.client_message_id
            && let Some(original) = self.message_by_client_id(&message, client_id).await?
        {
            self.advance_summary(&original).await?;
            return Ok(Stored {
                value: original.into_message()?,
                created: false,
            });
        }
        let document = MessageDoc::from_message(&message);
        self.write_outbox(
            &event,
            document.chat_id.clone(),
            MESSAGES,
            document.id.clone(),
        )
        .await?;
        match self.messages.insert_one(&document).await {
            Ok(_) => {}
            Err(error) if is_duplicate_key(&error) && message.client_message_id.is_some() => {
                // A concurrent retry of the same send won the race: return its message.
                self.drop_outbox(&event.event_id).await;
                let client_id = message.client_message_id.as_deref().unwrap_or_default();
                let original = self
                    .message_by_client_id(&message, client_id)
                    .await?
                    .ok_or_else(|| {
                        ChatError::internal(anyhow::anyhow!(
                            "message vanished after a duplicate-key error"
                        ))
                    })?;
                self.advance_summary(&original).await?;
                return Ok(Stored {
                    value: original.into_message()?,
                    created: false,
                });
            }
            // Not dropping the outbox document: the insert may have reached the server
            // (an ambiguous network error). The relay decides once the grace has passed.
            Err(error) => return Err(error.into()),
        }
        self.advance_summary(&document).await?;
        Ok(Stored {
            value: message,
            created: true,
        })
    }

    async fn history(
        &self,
        chat: ChatId,
        before: Option<MessageId>,
        limit: usize,
    ) -> Result<Vec<Message>, ChatError> {
        let mut filter = doc! { "chat_id": chat.to_string() };
        if let Some(before) = before {
            filter.insert("_id", doc! { "$lt": before.to_string() });
        }
        let documents: Vec<MessageDoc> = self
            .messages
            .find(filter)
            .sort(doc! { "_id": -1 })
            .limit(i64::try_from(limit).unwrap_or(i64::MAX))
            .await?
            .try_collect()
            .await?;
        documents
            .into_iter()
            .map(MessageDoc::into_message)
            .collect()
    }

    async fn pending_events(&self, limit: usize) -> Result<Vec<OutboxEvent>, ChatError> {
        let documents: Vec<OutboxDoc> = self
            .outbox
            .find(doc! { "state": STATE_PENDING })
            .sort(doc! { "_id": 1 })
            .limit(i64::try_from(limit).unwrap_or(i64::MAX))
            .await?
            .try_collect()
            .await?;
        let mut checks = Vec::with_capacity(documents.len());
        for document in &documents {
            checks.push(PendingCheck {
                key: document.key.clone(),
                written_at: from_bson_time(document.written_at),
                subject_stored: self.subject_stored(document).await?,
            });
        }
        let decisions = plan_outbox(&checks, Utc::now(), self.orphan_grace);
        let mut ready = Vec::new();
        for (document, decision) in documents.into_iter().zip(decisions) {
            match decision {
                OutboxDecision::Publish => match Event::decode(document.payload.bytes.as_slice()) {
                    Ok(event) => ready.push(outbox_event(event, document.key)),
                    Err(error) => {
                        tracing::error!(%error, event_id = document.id, "undecodable outbox event abandoned");
                        self.set_outbox_state(&document.id, STATE_ABANDONED).await?;
                    }
                },
                OutboxDecision::Abandon => {
                    tracing::warn!(
                        event_id = document.id,
                        subject = document.subject_id,
                        "abandoning an outbox event whose change was never stored"
                    );
                    self.set_outbox_state(&document.id, STATE_ABANDONED).await?;
                }
                OutboxDecision::Wait => {}
            }
        }
        Ok(ready)
    }

    async fn mark_event_published(&self, event_id: &str) -> Result<(), ChatError> {
        self.outbox
            .update_one(
                doc! { "_id": event_id },
                doc! { "$set": { "state": STATE_PUBLISHED, "published_at": to_bson_time(Utc::now()) } },
            )
            .await?;
        Ok(())
    }
}

/// Finds a direct chat by its key. `$type` repeats the partial index's filter so the
/// query planner can use that index.
fn direct_key_filter(key: &str) -> Document {
    doc! { "direct_key": { "$eq": key, "$type": "string" } }
}

fn is_duplicate_key(error: &mongodb::error::Error) -> bool {
    match error.kind.as_ref() {
        ErrorKind::Write(WriteFailure::WriteError(write)) => write.code == DUPLICATE_KEY,
        ErrorKind::Command(command) => command.code == DUPLICATE_KEY,
        _ => false,
    }
}

fn to_bson_time(time: DateTime<Utc>) -> bson::DateTime {
    bson::DateTime::from_millis(time.timestamp_millis())
}

fn from_bson_time(time: bson::DateTime) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(time.timestamp_millis())
        .single()
        .unwrap_or_default()
}

fn corrupt(what: &str, error: impl std::fmt::Display) -> ChatError {
    ChatError::internal(anyhow::anyhow!("corrupt {what} document: {error}"))
}

#[derive(Debug, Serialize, Deserialize)]
struct ChatDoc {
    #[serde(rename = "_id")]
    id: String,
    kind: String,
    creator_id: String,
    participant_ids: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    direct_key: Option<String>,
    created_at: bson::DateTime,
    last_activity_at: bson::DateTime,
    /// See `Chat::activity_key`.
    activity_key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_message: Option<MessageDoc>,
}

impl ChatDoc {
    fn from_chat(chat: &Chat) -> Self {
        Self {
            id: chat.id.to_string(),
            kind: match chat.kind {
                ChatKind::Direct => "direct",
                ChatKind::Group => "group",
            }
            .to_owned(),
            creator_id: chat.creator_id.to_string(),
            participant_ids: chat
                .participant_ids
                .iter()
                .map(ToString::to_string)
                .collect(),
            direct_key: chat.direct_key(),
            created_at: to_bson_time(chat.created_at),
            last_activity_at: to_bson_time(chat.last_activity_at),
            activity_key: chat.activity_key(),
            last_message: chat.last_message.as_ref().map(MessageDoc::from_message),
        }
    }

    fn into_chat(self) -> Result<Chat, ChatError> {
        let kind = match self.kind.as_str() {
            "direct" => ChatKind::Direct,
            "group" => ChatKind::Group,
            other => return Err(corrupt("chat", format!("unknown kind {other:?}"))),
        };
        let participant_ids = self
            .participant_ids
            .iter()
            .map(|id| UserId::parse("participant_ids", id))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| corrupt("chat", error))?;
        Ok(Chat {
            id: ChatId::parse("_id", &self.id).map_err(|error| corrupt("chat", error))?,
            kind,
            creator_id: UserId::parse("creator_id", &self.creator_id)
                .map_err(|error| corrupt("chat", error))?,
            participant_ids,
            created_at: from_bson_time(self.created_at),
            last_activity_at: from_bson_time(self.last_activity_at),
            last_message: self
                .last_message
                .map(MessageDoc::into_message)
                .transpose()?,
        })
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct MessageDoc {
    #[serde(rename = "_id")]
    id: String,
    chat_id: String,
    author_id: String,
    content: String,
    sent_at: bson::DateTime,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    client_message_id: Option<String>,
}

impl MessageDoc {
    fn from_message(message: &Message) -> Self {
        Self {
            id: message.id.to_string(),
            chat_id: message.chat_id.to_string(),
            author_id: message.author_id.to_string(),
            content: message.content.clone(),
            sent_at: to_bson_time(message.sent_at),
            client_message_id: message.client_message_id.clone(),
        }
    }

    fn into_message(self) -> Result<Message, ChatError> {
        let bad = |error: ChatError| corrupt("message", error);
        Ok(Message {
            id: MessageId::parse("_id", &self.id).map_err(bad)?,
            chat_id: ChatId::parse("chat_id", &self.chat_id).map_err(bad)?,
            author_id: UserId::parse("author_id", &self.author_id)
                .map_err(|error| bad(error.into()))?,
            content: self.content,
            sent_at: from_bson_time(self.sent_at),
            client_message_id: self.client_message_id,
        })
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct OutboxDoc {
    /// The event id.
    #[serde(rename = "_id")]
    id: String,
    topic: String,
    key: String,
    /// The protobuf-encoded `Event`.
    payload: bson::Binary,
    /// `pending`, `published` or `abandoned`.
    state: String,
    written_at: bson::DateTime,
    /// The collection and id of the chat or message the event announces.
    subject_collection: String,
    subject_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    published_at: Option<bson::DateTime>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ChatDraft;

    #[test]
    fn documents_round_trip_through_bson() {
        let (a, b) = (UserId::new_random(), UserId::new_random());
        let mut chat = ChatDraft {
            creator_id: a,
            other_ids: vec![b],
        }
        .into_chat();
        let id = MessageId::generate();
        chat.last_message = Some(Message {
            id,
            chat_id: chat.id,
            author_id: b,
            content: "hi".into(),
            sent_at: id.timestamp(),
            client_message_id: Some("c-1".into()),
        });
        let bson = bson::to_document(&ChatDoc::from_chat(&chat)).unwrap();
        assert_eq!(
            bson.get_str("direct_key").unwrap(),
            crate::domain::direct_key(a, b)
        );
        assert_eq!(
            bson.get_document("last_message")
                .unwrap()
                .get_str("_id")
                .unwrap(),
            id.to_string()
        );
        let back: ChatDoc = bson::from_document(bson).unwrap();
        assert_eq!(back.into_chat().unwrap(), chat);

        let message = chat.last_message.clone().unwrap();
        let mut without_key = MessageDoc::from_message(&message);
        without_key.client_message_id = None;
        // The partial unique index only covers documents where the key is a string.
        assert!(
            !bson::to_document(&without_key)
                .unwrap()
                .contains_key("client_message_id")
        );
    }

    /// A store on a fresh database of the server at `TEST_MONGODB_URI`/`MONGODB_URI`.
    async fn test_store() -> MongoChatStore {
        let uri = std::env::var("TEST_MONGODB_URI")
            .or_else(|_| std::env::var("MONGODB_URI"))
            .unwrap_or_else(|_| {
                panic!("TEST_MONGODB_URI (or MONGODB_URI) must point at a MongoDB 6+ server for the mongo_* tests")
            });
        let config = MongoStoreConfig {
            database: Some(format!("chat_test_{}", uuid::Uuid::new_v4().simple())),
            orphan_grace: Duration::from_secs(60),
            ..MongoStoreConfig::new(uri)
        };
        MongoChatStore::connect(&config)
            .await
            .unwrap_or_else(|error| {
                panic!("cannot reach MongoDB at TEST_MONGODB_URI/MONGODB_URI: {error}")
            })
    }

    /// An outbox document as `write_outbox` writes it, for a subject that may not exist.
    fn orphan(key: &str, subject_id: &str, age: chrono::Duration) -> OutboxDoc {
        let event = messenger_common::events::new_event(
            messenger_common::events::Payload::MessageSent(messenger_proto::v1::MessageSent {
                chat_id: key.to_owned(),
                message_id: subject_id.to_owned(),
                author_id: UserId::new_random().to_string(),
                sent_at: None,
                ..Default::default()
            }),
        );
        OutboxDoc {
            id: event.event_id.clone(),
            topic: messenger_proto::topics::CHAT_EVENTS.to_owned(),
            key: key.to_owned(),
            payload: bson::Binary {
                subtype: bson::spec::BinarySubtype::Generic,
                bytes: event.encode_to_vec(),
            },
            state: STATE_PENDING.to_owned(),
            written_at: to_bson_time(Utc::now() - age),
            subject_collection: MESSAGES.to_owned(),
            subject_id: subject_id.to_owned(),
            published_at: None,
        }
    }

    async fn state_of(store: &MongoChatStore, event_id: &str) -> String {
        store
            .outbox
            .find_one(doc! { "_id": event_id })
            .await
            .unwrap()
            .expect("outbox document")
            .state
    }

    /// The queries and the idempotency rest on these indexes: they must exist on the
    /// server (not only be asked for), the unique ones must refuse a duplicate with code
    /// 11000 while their partial filter lets documents without the key through, and a
    /// second start-up must find them in place.
    #[tokio::test]
    async fn mongo_indexes_exist_and_unique_ones_refuse_duplicates() {
        let store = test_store().await;
        let database = store.database().clone();
        let outcome = async move {
            let names = |collection: &'static str| {
                let database = store.database().clone();
                async move {
                    let mut names = database
                        .collection::<Document>(collection)
                        .list_index_names()
                        .await
                        .unwrap();
                    names.sort();
                    names
                }
            };
            assert_eq!(
                names(CHATS).await,
                ["_id_", "direct_key_unique", "participants_activity"]
            );
            assert_eq!(
                names(MESSAGES).await,
                ["_id_", "chat_message", "client_message_id_unique"]
            );
            assert_eq!(names(OUTBOX).await, ["_id_", "published_ttl", "state_id"]);

            let (a, b) = (UserId::new_random(), UserId::new_random());
            let direct = ChatDraft {
                creator_id: a,
                other_ids: vec![b],
            }
            .into_chat();
            let group = || {
                ChatDraft {
                    creator_id: a,
                    other_ids: vec![b, UserId::new_random()],
                }
                .into_chat()
            };
            store
                .chats
                .insert_one(ChatDoc::from_chat(&direct))
                .await
                .unwrap();
            let mut same_pair = ChatDoc::from_chat(&direct);
            same_pair.id = ChatId::generate().to_string();
            let error = store.chats.insert_one(&same_pair).await.unwrap_err();
            assert!(is_duplicate_key(&error), "{error}");
            // Group chats have no direct key: any number of them.
            for _ in 0..2 {
                store
                    .chats
                    .insert_one(ChatDoc::from_chat(&group()))
                    .await
                    .unwrap();
            }

            let message = |client_id: Option<&str>| {
                let id = MessageId::generate();
                MessageDoc::from_message(&Message {
                    id,
                    chat_id: direct.id,
                    author_id: a,
                    content: "hi".into(),
                    sent_at: id.timestamp(),
                    client_message_id: client_id.map(str::to_owned),
                })
            };
            store.messages.insert_one(message(Some("k"))).await.unwrap();
            let error = store
                .messages
                .insert_one(message(Some("k")))
                .await
                .unwrap_err();
            assert!(is_duplicate_key(&error), "{error}");
            for _ in 0..2 {
                store.messages.insert_one(message(None)).await.unwrap();
            }

            // A restarted service creates the same indexes again without an error.
            store.create_indexes().await.unwrap();
        };
        let outcome = tokio::spawn(outcome).await;
        database.drop().await.ok();
        if let Err(panic) = outcome {
            std::panic::resume_unwind(panic.into_panic());
        }
    }

    #[tokio::test]
    async fn mongo_outbox_waits_for_in_flight_changes_and_abandons_orphans() {
        let store = test_store().await;
        let database = store.database().clone();
        let outcome = async move {
            let (a, b) = (UserId::new_random(), UserId::new_random());
            let chat = ChatDraft {
                creator_id: a,
                other_ids: vec![b],
            }
            .into_chat();
            let created = messenger_common::events::new_event(
                messenger_common::events::Payload::ChatCreated(messenger_proto::v1::ChatCreated {
                    chat_id: chat.id.to_string(),
                    creator_id: a.to_string(),
                    participant_ids: vec![a.to_string(), b.to_string()],
                }),
            );
            store
                .create_chat(chat.clone(), created.clone())
                .await
                .unwrap();

            // A message whose outbox document is written but whose insert has not landed yet,
            // then a later event of the same chat that must not overtake it.
            let in_flight_id = MessageId::generate();
            let in_flight = orphan(
                &chat.id.to_string(),
                &in_flight_id.to_string(),
                chrono::Duration::zero(),
            );
            store.outbox.insert_one(&in_flight).await.unwrap();
            let next_id = MessageId::generate();
            let next = Message {
                id: next_id,
                chat_id: chat.id,
                author_id: a,
                content: "next".into(),
                sent_at: next_id.timestamp(),
                client_message_id: None,
            };
            store
                .messages
                .insert_one(MessageDoc::from_message(&next))
                .await
                .unwrap();
            let next_event = orphan(
                &chat.id.to_string(),
                &next_id.to_string(),
                chrono::Duration::zero(),
            );
            store.outbox.insert_one(&next_event).await.unwrap();
            // An event of another chat whose write failed long ago.
            let abandoned = orphan(
                &ChatId::generate().to_string(),
                &MessageId::generate().to_string(),
                chrono::Duration::minutes(5),
            );
            store.outbox.insert_one(&abandoned).await.unwrap();

            let ready: Vec<String> = store
                .pending_events(10)
                .await
                .unwrap()
                .into_iter()
                .map(|e| e.event_id)
                .collect();
            assert_eq!(ready, vec![created.event_id.clone()]);
            assert_eq!(state_of(&store, &abandoned.id).await, STATE_ABANDONED);
            assert_eq!(state_of(&store, &in_flight.id).await, STATE_PENDING);

            // The in-flight message lands: both of the chat's events are ready, in order.
            let late = Message {
                id: in_flight_id,
                content: "late".into(),
                sent_at: in_flight_id.timestamp(),
                ..next
            };
            store
                .messages
                .insert_one(MessageDoc::from_message(&late))
                .await
                .unwrap();
            let ready: Vec<String> = store
                .pending_events(10)
                .await
                .unwrap()
                .into_iter()
                .map(|e| e.event_id)
                .collect();
            assert_eq!(
                ready,
                vec![
                    created.event_id.clone(),
                    in_flight.id.clone(),
                    next_event.id.clone()
                ]
            );

            // The messages were inserted without touching the chat (as after a crash
            // between the two writes): relaying their events repaired the summary.
            let summary = store.chat(chat.id).await.unwrap().unwrap().last_message;
            assert_eq!(summary.map(|m| m.id), Some(next_id));

            store.mark_event_published(&created.event_id).await.unwrap();
            assert_eq!(state_of(&store, &created.event_id).await, STATE_PUBLISHED);
            let published = store
                .outbox
                .find_one(doc! { "_id": &created.event_id })
                .await
                .unwrap()
                .unwrap();
            assert!(
                published.published_at.is_some(),
                "the TTL index needs published_at"
            );
        };
        let outcome = tokio::spawn(outcome).await;
        database.drop().await.ok();
        if let Err(panic) = outcome {
            std::panic::resume_unwind(panic.into_panic());
        }
    }
}
