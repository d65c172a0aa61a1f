//! [`InMemoryChatStore`]: the chat store in a mutex, for `messenger dev` and fast tests.
//! Keeps nothing across restarts. Every method is one critical section, so a change and
//! its event are atomic here too.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;

use async_trait::async_trait;
use messenger_proto::v1::Event;

use super::{ChatStore, OutboxEvent, Stored, outbox_event};
use crate::domain::{Chat, ChatId, Message, MessageId, UserId};
use crate::error::ChatError;

/// The chat store kept in process memory.
#[derive(Default)]
pub struct InMemoryChatStore {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    chats: HashMap<ChatId, Chat>,
    direct_chats: HashMap<String, ChatId>,
    messages: HashMap<ChatId, BTreeMap<MessageId, Message>>,
    /// (chat, author, client_message_id) → message, the idempotency index.
    client_message_ids: HashMap<(ChatId, UserId, String), MessageId>,
    /// Unpublished events in the order they were written.
    outbox: VecDeque<OutboxEvent>,
}

impl InMemoryChatStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, State>, ChatError> {
        // A poisoned lock means a panic mid-update: the state may be half written.
        self.state
            .lock()
            .map_err(|_| ChatError::internal(anyhow::anyhow!("in-memory chat store poisoned")))
    }
}

#[async_trait]
impl ChatStore for InMemoryChatStore {
    async fn create_chat(&self, chat: Chat, event: Event) -> Result<Stored<Chat>, ChatError> {
        let mut state = self.lock()?;
        let direct_key = chat.direct_key();
        if let Some(key) = &direct_key
            && let Some(existing) = state
                .direct_chats
                .get(key)
                .and_then(|id| state.chats.get(id))
        {
            return Ok(Stored {
                value: existing.clone(),
                created: false,
            });
        }
        if let Some(key) = direct_key {
            state.direct_chats.insert(key, chat.id);
        }
        state
            .outbox
            .push_back(outbox_event(event, chat.id.to_string()));
        state.chats.insert(chat.id, chat.clone());
        Ok(Stored {
            value: chat,
            created: true,
        })
    }

    async fn chat(&self, id: ChatId) -> Result<Option<Chat>, ChatError> {
        Ok(self.lock()?.chats.get(&id).cloned())
    }

    async fn user_chats(
        &self,
        user: UserId,
        before: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Chat>, ChatError> {
        let state = self.lock()?;
        let mut chats: Vec<Chat> = state
            .chats
            .values()
            .filter(|chat| chat.is_participant(user))
            .filter(|chat| before.is_none_or(|before| chat.activity_key().as_str() < before))
            .cloned()
            .collect();
        chats.sort_by_cached_key(|chat| std::cmp::Reverse(chat.activity_key()));
        chats.truncate(limit);
        Ok(chats)
    }

    async fn append_message(
        &self,
        message: Message,
        event: Event,
    ) -> Result<Stored<Message>, ChatError> {
        let mut state = self.lock()?;
        let State {
            chats,
            messages,
            client_message_ids,
            outbox,
            ..
        } = &mut *state;
        let chat = chats
            .get_mut(&message.chat_id)
            .ok_or(ChatError::ChatNotFound)?;
        let chat_messages = messages.entry(message.chat_id).or_default();
        if let Some(client_id) = &message.client_message_id {
            let key = (message.chat_id, message.author_id, client_id.clone());
            if let Some(original) = client_message_ids
                .get(&key)
                .and_then(|id| chat_messages.get(id))
            {
                return Ok(Stored {
                    value: original.clone(),
                    created: false,
                });
            }
            client_message_ids.insert(key, message.id);
        }
        chat_messages.insert(message.id, message.clone());
        if chat
            .last_message
            .as_ref()
            .is_none_or(|last| last.id < message.id)
        {
            chat.last_activity_at = message.sent_at;
            chat.last_message = Some(message.clone());
        }
        outbox.push_back(outbox_event(event, message.chat_id.to_string()));
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
        let state = self.lock()?;
        let Some(messages) = state.messages.get(&chat) else {
            return Ok(Vec::new());
        };
        let older = match before {
            Some(before) => messages.range(..before),
            None => messages.range(..),
        };
        Ok(older
            .rev()
            .take(limit)
            .map(|(_, message)| message.clone())
            .collect())
    }

    async fn pending_events(&self, limit: usize) -> Result<Vec<OutboxEvent>, ChatError> {
        Ok(self.lock()?.outbox.iter().take(limit).cloned().collect())
    }

    async fn mark_event_published(&self, event_id: &str) -> Result<(), ChatError> {
        self.lock()?
            .outbox
            .retain(|pending| pending.event_id != event_id);
        Ok(())
    }
}
