//! `/v1/chats`: conversations between friends and their messages.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use messenger_proto::v1 as proto;

use crate::api::AppState;
use crate::api::extract::{ApiJson, ApiQuery, Authenticated, page_limit, parse_uuid};
use crate::api::types::{
    ChatList, ChatView, CreateChatBody, HistoryPage, HistoryQuery, MessageView, PageQuery,
    SendMessageBody,
};
use crate::error::{ApiError, Problem};

/// Opens a chat with friends; with one friend, returns your existing direct chat if any.
#[utoipa::path(
    post, path = "/v1/chats", tag = "chats",
    security(("bearer" = [])),
    request_body = CreateChatBody,
    responses(
        (status = 201, body = ChatView),
        (status = 400, body = Problem),
        (status = 401, body = Problem),
        (status = 403, description = "Someone is not your friend", body = Problem),
        (status = 404, description = "Someone does not exist", body = Problem),
    )
)]
pub async fn create_chat(
    State(state): State<AppState>,
    user: Authenticated,
    ApiJson(body): ApiJson<CreateChatBody>,
) -> Result<(StatusCode, Json<ChatView>), ApiError> {
    for (i, id) in body.participant_ids.iter().enumerate() {
        parse_uuid(&format!("participant_ids[{i}]"), id)?;
    }
    let request = state.peers.as_user(
        user.user_id,
        proto::CreateChatRequest {
            creator_id: user.user_id.to_string(),
            participant_ids: body.participant_ids,
        },
    );
    let chat = state.peers.chat.clone().create_chat(request).await?;
    Ok((StatusCode::CREATED, Json(chat.into_inner().into())))
}

/// Your chats, most recently active first, each with its last message, a page at a time.
#[utoipa::path(
    get, path = "/v1/chats", tag = "chats",
    security(("bearer" = [])),
    params(PageQuery),
    responses(
        (status = 200, body = ChatList),
        (status = 400, body = Problem),
        (status = 401, body = Problem),
    )
)]
pub async fn list_chats(
    State(state): State<AppState>,
    user: Authenticated,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> Result<Json<ChatList>, ApiError> {
    let request = state.peers.as_user(
        user.user_id,
        proto::GetUserChatsRequest {
            user_id: user.user_id.to_string(),
            limit: page_limit(query.limit)?,
            cursor: query.cursor.unwrap_or_default(),
        },
    );
    let page = state
        .peers
        .chat
        .clone()
        .get_user_chats(request)
        .await?
        .into_inner();
    Ok(Json(ChatList {
        chats: page.chats.into_iter().map(ChatView::from).collect(),
        next_cursor: Some(page.next_cursor).filter(|c| !c.is_empty()),
    }))
}

/// One of your chats. Someone else's chat is a 404, as if it did not exist.
#[utoipa::path(
    get, path = "/v1/chats/{chat_id}", tag = "chats",
    security(("bearer" = [])),
    params(("chat_id" = String, Path)),
    responses(
        (status = 200, body = ChatView),
        (status = 400, body = Problem),
        (status = 401, body = Problem),
        (status = 404, body = Problem),
    )
)]
pub async fn get_chat(
    State(state): State<AppState>,
    user: Authenticated,
    Path(chat_id): Path<String>,
) -> Result<Json<ChatView>, ApiError> {
    let chat_id = parse_uuid("chat_id", &chat_id)?;
    let request = state.peers.as_user(
        user.user_id,
        proto::GetChatRequest {
            chat_id: chat_id.to_string(),
            user_id: user.user_id.to_string(),
        },
    );
    let chat = state.peers.chat.clone().get_chat(request).await?;
    Ok(Json(chat.into_inner().into()))
}

/// Sends a message. With `client_message_id`, a retry returns the first message.
#[utoipa::path(
    post, path = "/v1/chats/{chat_id}/messages", tag = "chats",
    security(("bearer" = [])),
    params(("chat_id" = String, Path)),
    request_body = SendMessageBody,
    responses(
        (status = 201, body = MessageView),
        (status = 400, body = Problem),
        (status = 401, body = Problem),
        (status = 403, description = "Not a participant", body = Problem),
        (status = 404, body = Problem),
        (status = 413, description = "Body too large", body = Problem),
    )
)]
pub async fn send_message(
    State(state): State<AppState>,
    user: Authenticated,
    Path(chat_id): Path<String>,
    ApiJson(body): ApiJson<SendMessageBody>,
) -> Result<(StatusCode, Json<MessageView>), ApiError> {
    let chat_id = parse_uuid("chat_id", &chat_id)?;
    let request = state.peers.as_user(
        user.user_id,
        proto::SendMessageRequest {
            chat_id: chat_id.to_string(),
            author_id: user.user_id.to_string(),
            content: body.content,
            client_message_id: body.client_message_id.unwrap_or_default(),
        },
    );
    let message = state.peers.chat.clone().send_message(request).await?;
    Ok((StatusCode::CREATED, Json(message.into_inner().into())))
}

/// A page of history, newest first.
#[utoipa::path(
    get, path = "/v1/chats/{chat_id}/messages", tag = "chats",
    security(("bearer" = [])),
    params(("chat_id" = String, Path), HistoryQuery),
    responses(
        (status = 200, body = HistoryPage),
        (status = 400, body = Problem),
        (status = 401, body = Problem),
        (status = 403, description = "Not a participant", body = Problem),
        (status = 404, body = Problem),
    )
)]
pub async fn history(
    State(state): State<AppState>,
    user: Authenticated,
    Path(chat_id): Path<String>,
    ApiQuery(query): ApiQuery<HistoryQuery>,
) -> Result<Json<HistoryPage>, ApiError> {
    let chat_id = parse_uuid("chat_id", &chat_id)?;
    let request = state.peers.as_user(
        user.user_id,
        proto::GetChatHistoryRequest {
            chat_id: chat_id.to_string(),
            reader_id: user.user_id.to_string(),
            before: query.before.unwrap_or_default(),
            limit: page_limit(query.limit)?,
        },
    );
    let page = state
        .peers
        .chat
        .clone()
        .get_chat_history(request)
        .await?
        .into_inner();
    Ok(Json(HistoryPage {
        messages: page.messages.into_iter().map(MessageView::from).collect(),
        next_before: Some(page.next_before).filter(|b| !b.is_empty()),
    }))
}
