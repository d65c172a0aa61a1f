//! Where chats, messages and their not-yet-published events live: the [`ChatStore`]
//! trait, with a MongoDB implementation ([`MongoChatStore`]) and an in-memory one
//! ([`InMemoryChatStore`]). Both pass the same contract suite (`tests/store_contract.rs`).

mod memory;
mod mongo;

pub use memory::InMemoryChatStore;
pub use mongo::{MongoChatStore, MongoStoreConfig};

use async_trait::async_trait;
use messenger_proto::v1::Event;

use crate::domain::{Chat, ChatId, Message, MessageId, UserId};
use crate::error::ChatError;

/// The result of a write that may find its work already done.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stored<T> {
    pub value: T,
    /// `false` when an equivalent record existed already (the same direct chat, or a
    /// retried message) and was returned instead; then no event was written either.
    pub created: bool,
}

/// An event written together with the change it describes, waiting to be published.
#[derive(Clone, Debug, PartialEq)]
pub struct OutboxEvent {
    pub event_id: String,
    pub topic: String,
    /// Kafka message key: the chat id, so a chat's events stay in order.
    pub key: String,
    pub event: Event,
}

/// Storage of the chat service. Every method that changes state takes the event that
/// describes the change, so a caller cannot forget it: the store keeps it in its outbox
/// until [`ChatStore::mark_event_published`] (see `crate::outbox`).
#[async_trait]
pub trait ChatStore: Send + Sync + 'static {
    /// Stores a new chat and its `ChatCreated` event. A direct chat for a pair that
    /// already has one returns the existing chat (`created: false`) and drops the event.
    async fn create_chat(&self, chat: Chat, event: Event) -> Result<Stored<Chat>, ChatError>;

    /// The chat with its summary (last activity, last message), if it exists.
    async fn chat(&self, id: ChatId) -> Result<Option<Chat>, ChatError>;

    /// The user's chats, most recently active first, at most `limit`; with `before` (an
    /// activity key, see `Chat::activity_key`), only those whose activity key is smaller.
    async fn user_chats(
        &self,
        user: UserId,
        before: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Chat>, ChatError>;

    /// Appends a message to an existing chat (the caller checked that the chat exists
    /// and the author takes part) with its `MessageSent` event, and moves the chat's
    /// summary to it. A message with the same (chat, author, client_message_id) as a
    /// stored one returns the stored one (`created: false`) and drops the event.
    async fn append_message(
        &self,
        message: Message,
        event: Event,
    ) -> Result<Stored<Message>, ChatError>;

    /// Up to `limit` messages of the chat older than `before` (all if `None`), newest
    /// first.
    async fn history(
        &self,
        chat: ChatId,
        before: Option<MessageId>,
        limit: usize,
    ) -> Result<Vec<Message>, ChatError>;

    /// Up to `limit` events ready to publish, oldest first.
    async fn pending_events(&self, limit: usize) -> Result<Vec<OutboxEvent>, ChatError>;

    /// Records that the event reached the broker; it is not returned again.
    async fn mark_event_published(&self, event_id: &str) -> Result<(), ChatError>;
}

/// The event's topic and key as the outbox stores them.
pub(crate) fn outbox_event(event: Event, key: String) -> OutboxEvent {
    OutboxEvent {
        event_id: event.event_id.clone(),
        topic: messenger_proto::topics::CHAT_EVENTS.to_owned(),
        key,
        event,
    }
}
