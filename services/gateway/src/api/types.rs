//! The JSON the API speaks, and the conversions from the services' protobuf messages.
//! Request bodies refuse unknown fields, so a typo is a 400 naming the field rather
//! than a silently ignored setting.

use chrono::{DateTime, SecondsFormat, Utc};
use messenger_proto::v1 as proto;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// RFC 3339 UTC time of a protobuf timestamp (`None` when absent).
pub fn timestamp(ts: Option<&prost_types::Timestamp>) -> Option<String> {
    let ts = ts?;
    let nanos = u32::try_from(ts.nanos).ok()?;
    DateTime::<Utc>::from_timestamp(ts.seconds, nanos)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterBody {
    pub email: String,
    pub password: String,
    pub nickname: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Registered {
    pub user_id: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginBody {
    pub email: String,
    pub password: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LoggedIn {
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: String,
    pub expires_at: Option<String>,
    pub user_id: String,
}

impl From<proto::LoginResponse> for LoggedIn {
    fn from(r: proto::LoginResponse) -> Self {
        Self {
            expires_at: timestamp(r.expires_at.as_ref()),
            access_token: r.access_token,
            token_type: r.token_type,
            user_id: r.user_id,
        }
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct Profile {
    pub user_id: String,
    pub nickname: String,
    pub bio: String,
    pub avatar_url: String,
    pub created_at: Option<String>,
    pub updated_at: Option<String>,
}

impl From<proto::UserProfile> for Profile {
    fn from(p: proto::UserProfile) -> Self {
        Self {
            created_at: timestamp(p.created_at.as_ref()),
            updated_at: timestamp(p.updated_at.as_ref()),
            user_id: p.user_id,
            nickname: p.nickname,
            bio: p.bio,
            avatar_url: p.avatar_url,
        }
    }
}

/// Fields to change; absent fields stay as they are, `""` clears bio or avatar.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProfileChange {
    pub nickname: Option<String>,
    /// Up to 500 characters.
    pub bio: Option<String>,
    /// An http(s) URL up to 2048 characters.
    pub avatar_url: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SearchQuery {
    /// Nickname prefix (case-insensitive).
    pub search: String,
    /// 1..100, default 20.
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ProfilePage {
    pub users: Vec<Profile>,
    /// Absent on the last page.
    pub next_cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct FriendView {
    pub user_id: String,
    pub nickname: String,
    pub since: Option<String>,
}

/// One page of a list: `limit` entries at most, from where `cursor` says.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// 1..100, default 50.
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page; absent for the first page.
    pub cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct FriendList {
    /// Oldest friendship first.
    pub friends: Vec<FriendView>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FriendRequestBody {
    pub nickname: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct FriendRequestSent {
    /// `requested`, or `accepted` when the other person had already asked you.
    pub status: String,
}

#[derive(Debug, Clone, Copy, Deserialize, ToSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    #[default]
    Incoming,
    Outgoing,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DirectionQuery {
    /// `incoming` (default) or `outgoing`.
    pub direction: Option<Direction>,
    /// 1..100, default 50.
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page; absent for the first page.
    pub cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct FriendRequestView {
    pub from_user_id: String,
    pub from_nickname: String,
    pub to_user_id: String,
    pub to_nickname: String,
    pub created_at: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct FriendRequestList {
    /// Newest first.
    pub requests: Vec<FriendRequestView>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateChatBody {
    /// The other participants (you are added): 1..99 user ids, all your friends.
    pub participant_ids: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct MessageView {
    pub message_id: String,
    pub chat_id: String,
    pub author_id: String,
    pub content: String,
    pub sent_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_message_id: Option<String>,
}

impl From<proto::Message> for MessageView {
    fn from(m: proto::Message) -> Self {
        Self {
            sent_at: timestamp(m.sent_at.as_ref()),
            client_message_id: Some(m.client_message_id).filter(|id| !id.is_empty()),
            message_id: m.message_id,
            chat_id: m.chat_id,
            author_id: m.author_id,
            content: m.content,
        }
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ChatView {
    pub chat_id: String,
    /// `direct` or `group`.
    pub kind: String,
    pub participant_ids: Vec<String>,
    pub creator_id: String,
    pub created_at: Option<String>,
    pub last_activity_at: Option<String>,
    pub last_message: Option<MessageView>,
}

impl From<proto::Chat> for ChatView {
    fn from(c: proto::Chat) -> Self {
        let kind = match c.kind() {
            proto::ChatKind::Direct => "direct",
            proto::ChatKind::Group => "group",
            proto::ChatKind::Unspecified => "unspecified",
        };
        Self {
            kind: kind.to_owned(),
            created_at: timestamp(c.created_at.as_ref()),
            last_activity_at: timestamp(c.last_activity_at.as_ref()),
            last_message: c.last_message.map(MessageView::from),
            chat_id: c.chat_id,
            participant_ids: c.participant_ids,
            creator_id: c.creator_id,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ChatList {
    /// Most recently active first.
    pub chats: Vec<ChatView>,
    /// Pass as `cursor` for the next (less recently active) page; absent on the last
    /// page. A chat that gets a message while you page moves above the cursor: it is not
    /// listed twice, and the event stream tells you about it.
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SendMessageBody {
    /// 1..4096 characters.
    pub content: String,
    /// Your own id for this message: a retry with the same id returns the first message
    /// instead of sending it twice.
    pub client_message_id: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
    /// `next_before` of the previous page; absent for the newest messages.
    pub before: Option<String>,
    /// 1..100, default 50.
    pub limit: Option<u32>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct HistoryPage {
    /// Newest first.
    pub messages: Vec<MessageView>,
    /// Pass as `before` for the next (older) page; absent on the last page.
    pub next_before: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TicketView {
    /// Pass as `GET /v1/events?ticket=`; single use.
    pub ticket: String,
    pub expires_at: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// A ticket from `POST /v1/events/ticket`, for clients that cannot send headers.
    pub ticket: Option<String>,
    /// The last event id received, as `Last-Event-ID` (the header wins): a browser that
    /// reconnects with a fresh ticket opens a new `EventSource`, which cannot send it.
    pub last_event_id: Option<String>,
}
