//! Pure rules of the chat service: identifiers, what a chat and a message are, and the
//! validation of every request field. No IO here; the gRPC layer and the stores build on it.

use std::fmt;

use chrono::{DateTime, TimeZone, Utc};
use uuid::Uuid;

use crate::error::ChatError;

/// A chat holds at most this many people, the creator included.
pub const MAX_PARTICIPANTS: usize = 100;
/// Longest message content, in characters (Unicode scalar values) after trimming.
pub const MAX_CONTENT_CHARS: usize = 4096;
/// History and chat-list page size when the request leaves `limit` at 0.
pub const DEFAULT_HISTORY_LIMIT: usize = 50;
/// Largest history or chat-list page a caller may ask for.
pub const MAX_HISTORY_LIMIT: usize = 100;
/// Longest accepted client-chosen idempotency key.
pub const MAX_CLIENT_MESSAGE_ID_CHARS: usize = 128;

/// A user, named by the UUID the auth service gave them (the one type every service shares).
pub use messenger_common::ids::UserId;

/// A chat. A UUID v7, so it also says when the chat was created.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChatId(Uuid);

impl ChatId {
    pub fn parse(field: &str, value: &str) -> Result<Self, ChatError> {
        parse_uuid(field, value).map(Self)
    }

    /// A fresh id from the process-wide monotonic UUID v7 clock.
    pub fn generate() -> Self {
        Self(Uuid::now_v7())
    }

    /// When the id was generated (millisecond precision).
    pub fn timestamp(&self) -> DateTime<Utc> {
        uuid_v7_time(&self.0)
    }
}

impl fmt::Display for ChatId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

/// A message id: a UUID v7 whose lowercase hyphenated text sorts like the id itself, so
/// later messages have greater ids both as values and as strings (which is what MongoDB
/// compares). `Uuid::now_v7` is monotonic within a process, so two sends handled by the
/// same process are ordered even within one millisecond.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId(Uuid);

impl MessageId {
    pub fn parse(field: &str, value: &str) -> Result<Self, ChatError> {
        parse_uuid(field, value).map(Self)
    }

    pub fn generate() -> Self {
        Self(Uuid::now_v7())
    }

    /// When the id was generated (millisecond precision): the message's `sent_at`.
    pub fn timestamp(&self) -> DateTime<Utc> {
        uuid_v7_time(&self.0)
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

fn parse_uuid(field: &str, value: &str) -> Result<Uuid, ChatError> {
    if value.is_empty() {
        return Err(ChatError::InvalidArgument(format!("{field} is required")));
    }
    Uuid::parse_str(value).map_err(|_| {
        ChatError::InvalidArgument(format!(
            "{field} must be a UUID, got {}",
            messenger_common::ids::excerpt(value)
        ))
    })
}

/// The UNIX-millisecond timestamp embedded in a UUID v7 (the epoch for other versions,
/// which never reach here because every id we generate is v7).
fn uuid_v7_time(id: &Uuid) -> DateTime<Utc> {
    let millis = id
        .get_timestamp()
        .map(|ts| {
            let (secs, nanos) = ts.to_unix();
            secs as i64 * 1000 + i64::from(nanos / 1_000_000)
        })
        .unwrap_or(0);
    Utc.timestamp_millis_opt(millis)
        .single()
        .unwrap_or_default()
}

/// Two people (direct) or more (group).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChatKind {
    Direct,
    Group,
}

/// A conversation and its summary (last activity, last message).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chat {
    pub id: ChatId,
    pub kind: ChatKind,
    pub creator_id: UserId,
    /// The creator first, then the others in the order they were named.
    pub participant_ids: Vec<UserId>,
    pub created_at: DateTime<Utc>,
    pub last_activity_at: DateTime<Utc>,
    pub last_message: Option<Message>,
}

impl Chat {
    pub fn is_participant(&self, user: UserId) -> bool {
        self.participant_ids.contains(&user)
    }

    /// The key that makes a direct chat unique per pair of people; `None` for groups.
    pub fn direct_key(&self) -> Option<String> {
        match (self.kind, self.participant_ids.as_slice()) {
            (ChatKind::Direct, [a, b]) => Some(direct_key(*a, *b)),
            _ => None,
        }
    }

    /// What "most recently active first" sorts by: the id of the last message, or the
    /// chat's own id before the first message. Both come from the same monotonic UUID v7
    /// clock, so the order is exact even within one millisecond.
    pub fn activity_key(&self) -> String {
        match &self.last_message {
            Some(message) => message.id.to_string(),
            None => self.id.to_string(),
        }
    }
}

/// The same key for (a, b) and (b, a).
pub fn direct_key(a: UserId, b: UserId) -> String {
    let (low, high) = if a <= b { (a, b) } else { (b, a) };
    format!("{low}:{high}")
}

/// One message of a chat.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub id: MessageId,
    pub chat_id: ChatId,
    pub author_id: UserId,
    /// Trimmed, 1..=4096 characters.
    pub content: String,
    pub sent_at: DateTime<Utc>,
    pub client_message_id: Option<String>,
}

/// A validated CreateChat request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChatDraft {
    pub creator_id: UserId,
    /// Everyone but the creator, in request order, without duplicates.
    pub other_ids: Vec<UserId>,
}

impl ChatDraft {
    pub fn kind(&self) -> ChatKind {
        if self.other_ids.len() == 1 {
            ChatKind::Direct
        } else {
            ChatKind::Group
        }
    }

    /// The chat this draft creates, with a fresh id; its creation time is the id's.
    pub fn into_chat(self) -> Chat {
        let id = ChatId::generate();
        let kind = self.kind();
        let mut participant_ids = Vec::with_capacity(self.other_ids.len() + 1);
        participant_ids.push(self.creator_id);
        participant_ids.extend(self.other_ids);
        Chat {
            id,
            kind,
            creator_id: participant_ids[0],
            participant_ids,
            created_at: id.timestamp(),
            last_activity_at: id.timestamp(),
            last_message: None,
        }
    }
}

/// Validates CreateChat: UUIDs, 1..=99 others, no duplicates, the creator not listed
/// (the creator is added automatically, and must not end up in the chat twice).
pub fn validate_create_chat(
    creator_id: &str,
    participant_ids: &[String],
) -> Result<ChatDraft, ChatError> {
    let creator_id = UserId::parse("creator_id", creator_id)?;
    if participant_ids.is_empty() {
        return Err(ChatError::InvalidArgument(
            "participant_ids must name at least one other person".into(),
        ));
    }
    if participant_ids.len() > MAX_PARTICIPANTS - 1 {
        return Err(ChatError::InvalidArgument(format!(
            "a chat holds at most {MAX_PARTICIPANTS} people: participant_ids may name at most {} others, got {}",
            MAX_PARTICIPANTS - 1,
            participant_ids.len()
        )));
    }
    let mut other_ids: Vec<UserId> = Vec::with_capacity(participant_ids.len());
    for raw in participant_ids {
        let id = UserId::parse("participant_ids", raw)?;
        if id == creator_id {
            return Err(ChatError::InvalidArgument(
                "participant_ids must not include the creator (the creator is added automatically)"
                    .into(),
            ));
        }
        if other_ids.contains(&id) {
            return Err(ChatError::InvalidArgument(format!(
                "participant_ids lists {id} more than once"
            )));
        }
        other_ids.push(id);
    }
    Ok(ChatDraft {
        creator_id,
        other_ids,
    })
}

/// Trims the content and checks its length (1..=4096 characters) and that it holds no
/// bidi override/isolate controls.
pub fn validate_content(raw: &str) -> Result<String, ChatError> {
    let trimmed = raw.trim();
    if trimmed.is_empty() {
        return Err(ChatError::InvalidArgument(
            "content must not be empty or only whitespace".into(),
        ));
    }
    let chars = trimmed.chars().count();
    if chars > MAX_CONTENT_CHARS {
        return Err(ChatError::InvalidArgument(format!(
            "content is {chars} characters long; the limit is {MAX_CONTENT_CHARS}"
        )));
    }
    if let Some(found) = messenger_common::ids::find_bidi_control(trimmed) {
        return Err(ChatError::InvalidArgument(format!(
            "content {}",
            messenger_common::ids::bidi_control_reason(found)
        )));
    }
    Ok(trimmed.to_owned())
}

/// An empty key means "no idempotency key"; otherwise 1..=128 characters, no control
/// characters (it ends up in logs and index keys).
pub fn validate_client_message_id(raw: &str) -> Result<Option<String>, ChatError> {
    if raw.is_empty() {
        return Ok(None);
    }
    if raw.chars().count() > MAX_CLIENT_MESSAGE_ID_CHARS {
        return Err(ChatError::InvalidArgument(format!(
            "client_message_id may be at most {MAX_CLIENT_MESSAGE_ID_CHARS} characters"
        )));
    }
    if raw.chars().any(char::is_control) {
        return Err(ChatError::InvalidArgument(
            "client_message_id must not contain control characters".into(),
        ));
    }
    Ok(Some(raw.to_owned()))
}

/// The size of a history or chat-list page: 0 means the default (50); otherwise 1..=100.
pub fn validate_page_limit(limit: u32) -> Result<usize, ChatError> {
    match usize::try_from(limit) {
        Ok(0) => Ok(DEFAULT_HISTORY_LIMIT),
        Ok(n) if n <= MAX_HISTORY_LIMIT => Ok(n),
        _ => Err(ChatError::InvalidArgument(format!(
            "limit must be between 1 and {MAX_HISTORY_LIMIT} (0 for the default {DEFAULT_HISTORY_LIMIT}), got {limit}"
        ))),
    }
}

/// The `before` cursor: empty for the newest page, else a message id.
pub fn parse_history_cursor(before: &str) -> Result<Option<MessageId>, ChatError> {
    if before.is_empty() {
        Ok(None)
    } else {
        MessageId::parse("before", before).map(Some)
    }
}

/// The `cursor` of a chat-list page: empty for the first page, else the `next_cursor` of
/// the page before, which is the activity key ([`Chat::activity_key`]) of that page's last
/// chat. The next page holds the chats whose activity key is smaller, so a chat that gets a
/// message while a client pages moves above the cursor and is not listed twice (the client
/// hears of it through its event stream); a chat whose activity did not change is listed
/// exactly once.
pub fn parse_chat_list_cursor(cursor: &str) -> Result<Option<String>, ChatError> {
    if cursor.is_empty() {
        Ok(None)
    } else {
        // Canonical (lower-case, hyphenated) text, as activity keys are stored.
        parse_uuid("cursor", cursor).map(|key| Some(key.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|_| UserId::new_random().to_string()).collect()
    }

    fn invalid(result: Result<impl fmt::Debug, ChatError>) -> String {
        match result {
            Err(ChatError::InvalidArgument(message)) => message,
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }

    #[test]
    fn create_chat_accepts_one_to_ninety_nine_distinct_others() {
        let creator = UserId::new_random().to_string();
        for (others, kind) in [
            (1, ChatKind::Direct),
            (2, ChatKind::Group),
            (99, ChatKind::Group),
        ] {
            let draft = validate_create_chat(&creator, &ids(others)).expect("valid request");
            assert_eq!(draft.other_ids.len(), others);
            assert_eq!(draft.kind(), kind);
            let chat = draft.into_chat();
            assert_eq!(chat.participant_ids.len(), others + 1);
            assert_eq!(chat.participant_ids[0].to_string(), creator);
            assert_eq!(chat.creator_id.to_string(), creator);
        }
    }

    #[test]
    fn create_chat_rejects_bad_participant_lists() {
        let creator = UserId::new_random();
        let other = UserId::new_random().to_string();
        let cases: Vec<(String, Vec<String>, &str)> = vec![
            (creator.to_string(), vec![], "at least one"),
            (creator.to_string(), ids(100), "at most 100 people"),
            (
                creator.to_string(),
                vec![other.clone(), other.clone()],
                "more than once",
            ),
            (
                creator.to_string(),
                vec![creator.to_string()],
                "must not include the creator",
            ),
            (
                creator.to_string(),
                vec!["not-a-uuid".into()],
                "participant_ids must be a UUID",
            ),
            (
                creator.to_string(),
                vec![String::new()],
                "participant_ids is required",
            ),
            (
                "bob".into(),
                vec![other.clone()],
                "creator_id must be a UUID",
            ),
            (String::new(), vec![other], "creator_id is required"),
        ];
        for (creator, others, expected) in cases {
            let message = invalid(validate_create_chat(&creator, &others));
            assert!(
                message.contains(expected),
                "{message:?} should contain {expected:?}"
            );
        }
    }

    #[test]
    fn direct_key_is_the_same_for_both_orders_and_differs_per_pair() {
        let (a, b, c) = (
            UserId::new_random(),
            UserId::new_random(),
            UserId::new_random(),
        );
        assert_eq!(direct_key(a, b), direct_key(b, a));
        assert_ne!(direct_key(a, b), direct_key(a, c));
        let chat = ChatDraft {
            creator_id: a,
            other_ids: vec![b],
        }
        .into_chat();
        assert_eq!(chat.direct_key(), Some(direct_key(b, a)));
        let group = ChatDraft {
            creator_id: a,
            other_ids: vec![b, c],
        }
        .into_chat();
        assert_eq!(group.direct_key(), None);
    }

    #[test]
    fn content_is_trimmed_and_limited_to_4096_characters() {
        assert_eq!(validate_content("  hello \n").unwrap(), "hello");
        assert_eq!(
            validate_content(&"я".repeat(4096)).unwrap().chars().count(),
            4096
        );
        assert_eq!(
            validate_content(&format!("  {}  ", "x".repeat(4096)))
                .unwrap()
                .len(),
            4096
        );
        for bad in ["", "   ", "\n\t "] {
            assert!(invalid(validate_content(bad)).contains("empty"));
        }
        assert!(invalid(validate_content(&"x".repeat(4097))).contains("4097"));
    }

    #[test]
    fn content_with_bidi_override_or_isolate_controls_is_refused() {
        for raw in [
            "invoice \u{202E}fdp.exe",
            "\u{2066}hidden\u{2069}",
            "a\u{202A}b",
            "x\u{2068}y",
        ] {
            let message = invalid(validate_content(raw));
            assert!(
                message.starts_with("content must not contain bidirectional"),
                "{raw:?}: {message}"
            );
        }
        // Right-to-left scripts themselves are welcome.
        assert_eq!(validate_content("שלום").unwrap(), "שלום");
    }

    #[test]
    fn client_message_id_is_optional_but_bounded() {
        assert_eq!(validate_client_message_id("").unwrap(), None);
        assert_eq!(
            validate_client_message_id("abc-1").unwrap().as_deref(),
            Some("abc-1")
        );
        assert!(validate_client_message_id(&"k".repeat(128)).is_ok());
        invalid(validate_client_message_id(&"k".repeat(129)));
        invalid(validate_client_message_id("a\nb"));
    }

    #[test]
    fn page_limit_defaults_to_50_and_allows_1_to_100() {
        let cases = [
            (0, Some(50)),
            (1, Some(1)),
            (100, Some(100)),
            (101, None),
            (u32::MAX, None),
        ];
        for (limit, expected) in cases {
            assert_eq!(validate_page_limit(limit).ok(), expected, "limit {limit}");
        }
    }

    #[test]
    fn history_cursor_is_empty_or_a_message_id() {
        assert_eq!(parse_history_cursor("").unwrap(), None);
        let id = MessageId::generate();
        assert_eq!(parse_history_cursor(&id.to_string()).unwrap(), Some(id));
        invalid(parse_history_cursor("yesterday"));
    }

    #[test]
    fn chat_list_cursor_is_empty_or_an_activity_key_in_canonical_form() {
        assert_eq!(parse_chat_list_cursor("").unwrap(), None);
        let id = MessageId::generate().to_string();
        assert_eq!(parse_chat_list_cursor(&id).unwrap(), Some(id.clone()));
        assert_eq!(
            parse_chat_list_cursor(&id.to_uppercase()).unwrap(),
            Some(id)
        );
        invalid(parse_chat_list_cursor("page-2"));
    }

    #[test]
    fn message_ids_sort_by_creation_as_values_and_as_strings() {
        let generated: Vec<MessageId> = (0..2000).map(|_| MessageId::generate()).collect();
        for pair in generated.windows(2) {
            assert!(pair[0] < pair[1]);
            assert!(pair[0].to_string() < pair[1].to_string());
        }
        let now = Utc::now();
        let stamp = generated[0].timestamp();
        assert!(
            (now - stamp).num_seconds().abs() < 5,
            "{stamp} should be close to {now}"
        );
    }
}
