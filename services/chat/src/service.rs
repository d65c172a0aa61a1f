//! The gRPC `ChatService`: validates every request field, applies the rules of
//! `crate::domain`, and talks to the store, the friends service and the cache.

use std::sync::Arc;

use messenger_common::events::{Payload, new_event};
use messenger_common::identity::require_user;
use messenger_proto::v1 as proto;
use messenger_proto::v1::chat_service_server::ChatService;
use tokio::sync::Notify;
use tonic::{Request, Response, Status};

use crate::cache::{CACHED_PAGE_LEN, CachedPage, HistoryCache};
use crate::domain::{
    Chat, ChatId, ChatKind, Message, MessageId, UserId, parse_chat_list_cursor,
    parse_history_cursor, validate_client_message_id, validate_content, validate_create_chat,
    validate_page_limit,
};
use crate::error::ChatError;
use crate::friendship::FriendshipChecker;
use crate::store::ChatStore;
use crate::users::UserDirectory;

/// One page of a user's chats and the cursor of the next (less recently active) page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChatListPage {
    pub chats: Vec<Chat>,
    /// The activity key of the page's last chat, when more chats follow.
    pub next_cursor: Option<String>,
}

/// One page of history and the cursor of the next (older) page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryPage {
    pub messages: Vec<Message>,
    pub next_before: Option<MessageId>,
}

/// The chat service's behaviour, independent of the transport.
#[derive(Clone)]
pub struct ChatHandler {
    store: Arc<dyn ChatStore>,
    friendships: Arc<dyn FriendshipChecker>,
    /// Asked only when a chat is refused, to tell "no such user" from "not your friend".
    users: Arc<dyn UserDirectory>,
    cache: Option<HistoryCache>,
    /// Wakes the outbox relay after a write.
    relay_wake: Arc<Notify>,
}

impl ChatHandler {
    pub fn new(
        store: Arc<dyn ChatStore>,
        friendships: Arc<dyn FriendshipChecker>,
        users: Arc<dyn UserDirectory>,
        cache: Option<HistoryCache>,
        relay_wake: Arc<Notify>,
    ) -> Self {
        Self {
            store,
            friendships,
            users,
            cache,
            relay_wake,
        }
    }

    pub async fn create_chat(
        &self,
        creator_id: &str,
        participant_ids: &[String],
    ) -> Result<Chat, ChatError> {
        let draft = validate_create_chat(creator_id, participant_ids)?;
        let not_friends = self
            .friendships
            .not_friends(draft.creator_id, &draft.other_ids)
            .await?;
        if !not_friends.is_empty() {
            // Nobody is friends with an id no one has: say which ids are nobody's. If the
            // users service cannot tell, the refusal stands as it is.
            match self.users.unknown(&not_friends).await {
                Ok(unknown) if !unknown.is_empty() => return Err(ChatError::UnknownUsers(unknown)),
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(%error, "could not ask the users service who exists");
                }
            }
            return Err(ChatError::NotFriends(not_friends));
        }
        let chat = draft.into_chat();
        let event = new_event(Payload::ChatCreated(proto::ChatCreated {
            chat_id: chat.id.to_string(),
            creator_id: chat.creator_id.to_string(),
            participant_ids: chat
                .participant_ids
                .iter()
                .map(ToString::to_string)
                .collect(),
        }));
        let stored = self.store.create_chat(chat, event).await?;
        if stored.created {
            self.relay_wake.notify_one();
            tracing::info!(chat = %stored.value.id, kind = ?stored.value.kind, "chat created");
        }
        Ok(stored.value)
    }

    /// A page of the user's chats, most recently active first (see
    /// `domain::parse_chat_list_cursor` for what the cursor means).
    pub async fn user_chats(
        &self,
        user_id: &str,
        limit: u32,
        cursor: &str,
    ) -> Result<ChatListPage, ChatError> {
        let user = UserId::parse("user_id", user_id)?;
        let limit = validate_page_limit(limit)?;
        let before = parse_chat_list_cursor(cursor)?;
        // One more than asked says whether another page follows.
        let mut chats = self
            .store
            .user_chats(user, before.as_deref(), limit + 1)
            .await?;
        let next_cursor = if chats.len() > limit {
            chats.truncate(limit);
            chats.last().map(Chat::activity_key)
        } else {
            None
        };
        Ok(ChatListPage { chats, next_cursor })
    }

    pub async fn send_message(
        &self,
        chat_id: &str,
        author_id: &str,
        content: &str,
        client_message_id: &str,
    ) -> Result<Message, ChatError> {
        let chat_id = ChatId::parse("chat_id", chat_id)?;
        let author_id = UserId::parse("author_id", author_id)?;
        let content = validate_content(content)?;
        let client_message_id = validate_client_message_id(client_message_id)?;
        let chat = self.participating_chat(chat_id, author_id).await?;
        let id = MessageId::generate();
        let message = Message {
            id,
            chat_id,
            author_id,
            content,
            sent_at: id.timestamp(),
            client_message_id,
        };
        let event = new_event(Payload::MessageSent(proto::MessageSent {
            chat_id: chat_id.to_string(),
            message_id: id.to_string(),
            author_id: author_id.to_string(),
            sent_at: Some(timestamp(message.sent_at)),
            participant_ids: chat
                .participant_ids
                .iter()
                .map(ToString::to_string)
                .collect(),
            content: message.content.clone(),
            client_message_id: message.client_message_id.clone().unwrap_or_default(),
        }));
        let stored = self.store.append_message(message, event).await?;
        if stored.created {
            self.relay_wake.notify_one();
            if let Some(cache) = &self.cache {
                cache.invalidate(chat_id).await;
            }
        }
        Ok(stored.value)
    }

    pub async fn history(
        &self,
        chat_id: &str,
        reader_id: &str,
        before: &str,
        limit: u32,
    ) -> Result<HistoryPage, ChatError> {
        let chat_id = ChatId::parse("chat_id", chat_id)?;
        let reader_id = UserId::parse("reader_id", reader_id)?;
        let before = parse_history_cursor(before)?;
        let limit = validate_page_limit(limit)?;
        let chat = self.participating_chat(chat_id, reader_id).await?;
        match (&self.cache, before) {
            (Some(cache), None) => {
                let lookup = cache.latest_page(chat_id).await;
                if let Some(page) = lookup.page.filter(|page| page.is_current_for(&chat))
                    && let Some((messages, next_before)) = page.first_page(limit)
                {
                    return Ok(HistoryPage {
                        messages,
                        next_before,
                    });
                }
                // Read enough to cache the largest page, plus one to know whether more exist.
                let mut messages = self
                    .store
                    .history(chat_id, None, CACHED_PAGE_LEN + 1)
                    .await?;
                let complete = messages.len() <= CACHED_PAGE_LEN;
                messages.truncate(CACHED_PAGE_LEN);
                let page = CachedPage { messages, complete };
                cache
                    .store_latest_page(chat_id, lookup.generation, &page)
                    .await;
                let (messages, next_before) = page.first_page(limit).unwrap_or_default();
                Ok(HistoryPage {
                    messages,
                    next_before,
                })
            }
            _ => {
                let mut messages = self.store.history(chat_id, before, limit + 1).await?;
                let next_before = if messages.len() > limit {
                    messages.truncate(limit);
                    messages.last().map(|message| message.id)
                } else {
                    None
                };
                Ok(HistoryPage {
                    messages,
                    next_before,
                })
            }
        }
    }

    /// The chat with its last message, for a participant; NotFound for anyone else, so
    /// whether a chat id exists is no secret worth probing for.
    pub async fn chat_for(&self, chat_id: &str, user_id: &str) -> Result<Chat, ChatError> {
        let chat_id = ChatId::parse("chat_id", chat_id)?;
        let user = UserId::parse("user_id", user_id)?;
        match self.store.chat(chat_id).await? {
            Some(chat) if chat.is_participant(user) => Ok(chat),
            _ => Err(ChatError::ChatNotFound),
        }
    }

    /// The chat, if it exists (NotFound) and `user` takes part in it (PermissionDenied).
    async fn participating_chat(&self, chat_id: ChatId, user: UserId) -> Result<Chat, ChatError> {
        let chat = self
            .store
            .chat(chat_id)
            .await?
            .ok_or(ChatError::ChatNotFound)?;
        if chat.is_participant(user) {
            Ok(chat)
        } else {
            Err(ChatError::NotParticipant)
        }
    }
}

#[tonic::async_trait]
impl ChatService for ChatHandler {
    async fn create_chat(
        &self,
        request: Request<proto::CreateChatRequest>,
    ) -> Result<Response<proto::Chat>, Status> {
        require_user(&request, &request.get_ref().creator_id)?;
        let request = request.into_inner();
        let chat =
            ChatHandler::create_chat(self, &request.creator_id, &request.participant_ids).await?;
        Ok(Response::new(chat_to_proto(&chat)))
    }

    async fn get_user_chats(
        &self,
        request: Request<proto::GetUserChatsRequest>,
    ) -> Result<Response<proto::GetUserChatsResponse>, Status> {
        require_user(&request, &request.get_ref().user_id)?;
        let request = request.into_inner();
        let page = self
            .user_chats(&request.user_id, request.limit, &request.cursor)
            .await?;
        Ok(Response::new(proto::GetUserChatsResponse {
            chats: page.chats.iter().map(chat_to_proto).collect(),
            next_cursor: page.next_cursor.unwrap_or_default(),
        }))
    }

    async fn send_message(
        &self,
        request: Request<proto::SendMessageRequest>,
    ) -> Result<Response<proto::Message>, Status> {
        require_user(&request, &request.get_ref().author_id)?;
        let request = request.into_inner();
        let message = ChatHandler::send_message(
            self,
            &request.chat_id,
            &request.author_id,
            &request.content,
            &request.client_message_id,
        )
        .await?;
        Ok(Response::new(message_to_proto(&message)))
    }

    async fn get_chat_history(
        &self,
        request: Request<proto::GetChatHistoryRequest>,
    ) -> Result<Response<proto::GetChatHistoryResponse>, Status> {
        require_user(&request, &request.get_ref().reader_id)?;
        let request = request.into_inner();
        let page = self
            .history(
                &request.chat_id,
                &request.reader_id,
                &request.before,
                request.limit,
            )
            .await?;
        Ok(Response::new(proto::GetChatHistoryResponse {
            messages: page.messages.iter().map(message_to_proto).collect(),
            next_before: page
                .next_before
                .map(|id| id.to_string())
                .unwrap_or_default(),
        }))
    }

    async fn get_chat(
        &self,
        request: Request<proto::GetChatRequest>,
    ) -> Result<Response<proto::Chat>, Status> {
        require_user(&request, &request.get_ref().user_id)?;
        let request = request.into_inner();
        let chat = self.chat_for(&request.chat_id, &request.user_id).await?;
        Ok(Response::new(chat_to_proto(&chat)))
    }
}

fn timestamp(time: chrono::DateTime<chrono::Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: time.timestamp(),
        nanos: i32::try_from(time.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

pub fn chat_to_proto(chat: &Chat) -> proto::Chat {
    proto::Chat {
        chat_id: chat.id.to_string(),
        kind: match chat.kind {
            ChatKind::Direct => proto::ChatKind::Direct,
            ChatKind::Group => proto::ChatKind::Group,
        }
        .into(),
        participant_ids: chat
            .participant_ids
            .iter()
            .map(ToString::to_string)
            .collect(),
        creator_id: chat.creator_id.to_string(),
        created_at: Some(timestamp(chat.created_at)),
        last_activity_at: Some(timestamp(chat.last_activity_at)),
        last_message: chat.last_message.as_ref().map(message_to_proto),
    }
}

pub fn message_to_proto(message: &Message) -> proto::Message {
    proto::Message {
        message_id: message.id.to_string(),
        chat_id: message.chat_id.to_string(),
        author_id: message.author_id.to_string(),
        content: message.content.clone(),
        sent_at: Some(timestamp(message.sent_at)),
        client_message_id: message.client_message_id.clone().unwrap_or_default(),
    }
}
