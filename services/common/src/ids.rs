//! The identifiers every service shares, with one rule each: [`UserId`] (the UUID auth
//! gives a user) and [`Nickname`] (3–32 characters of `[a-z0-9_.-]`, case-insensitive).
//! A value that breaks the rule is an [`InvalidValue`], which each service maps to its own
//! `InvalidArgument`.

use std::fmt;

use uuid::Uuid;

/// Fewest characters in a nickname.
pub const NICKNAME_MIN_CHARS: usize = 3;
/// Most characters in a nickname.
pub const NICKNAME_MAX_CHARS: usize = 32;
/// Longest excerpt of a rejected value an error repeats: a 4 MiB value must not come back
/// as a 4 MiB message.
const ECHO_MAX_CHARS: usize = 40;

/// A request field that breaks its rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} {reason}")]
pub struct InvalidValue {
    /// The field, as the request names it.
    pub field: &'static str,
    /// What is wrong, for the caller.
    pub reason: String,
}

impl InvalidValue {
    fn new(field: &'static str, reason: impl Into<String>) -> Self {
        Self {
            field,
            reason: reason.into(),
        }
    }
}

/// `value` for an error message, cut to a few dozen characters.
pub fn excerpt(value: &str) -> String {
    if value.chars().count() <= ECHO_MAX_CHARS {
        format!("{value:?}")
    } else {
        let head: String = value.chars().take(ECHO_MAX_CHARS).collect();
        format!("{head:?}... ({} bytes)", value.len())
    }
}

/// The first bidi embedding/override (U+202A–U+202E) or isolate (U+2066–U+2069) control
/// in `value`. They reorder the text around them when displayed, so a message or bio could
/// show other users something else than what it says ("Trojan Source"); free text that
/// other people read refuses them.
pub fn find_bidi_control(value: &str) -> Option<char> {
    value
        .chars()
        .find(|c| matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}'))
}

/// The reason a free-text field with a bidi control is refused, naming the character.
pub fn bidi_control_reason(found: char) -> String {
    format!(
        "must not contain bidirectional override or isolate control characters (found U+{:04X})",
        u32::from(found)
    )
}

/// A user: the UUID the auth service gave them at registration. Serialized as the UUID
/// itself, so stored and cached values read the same as before the type existed.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub struct UserId(Uuid);

impl UserId {
    /// Parses a request field (surrounding spaces ignored); the error names `field`.
    pub fn parse(field: &'static str, raw: &str) -> Result<Self, InvalidValue> {
        let raw = raw.trim();
        if raw.is_empty() {
            return Err(InvalidValue::new(field, "is required"));
        }
        Uuid::parse_str(raw)
            .map(Self)
            .map_err(|_| InvalidValue::new(field, format!("must be a UUID, got {}", excerpt(raw))))
    }

    /// A fresh random id (tests, stand-ins).
    pub fn new_random() -> Self {
        Self(Uuid::new_v4())
    }

    /// The UUID.
    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl From<Uuid> for UserId {
    fn from(uuid: Uuid) -> Self {
        Self(uuid)
    }
}

impl From<UserId> for Uuid {
    fn from(id: UserId) -> Self {
        id.0
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

/// A nickname: 3–32 characters of `[a-z0-9_.-]`. Accepted in any case (nicknames are
/// case-insensitive) and kept lower-case.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Nickname(String);

impl Nickname {
    /// Parses the `nickname` field of a request.
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        Self::parse_field("nickname", raw)
    }

    /// Parses a nickname given in the field `field`.
    pub fn parse_field(field: &'static str, raw: &str) -> Result<Self, InvalidValue> {
        let chars = raw.chars().count();
        if !(NICKNAME_MIN_CHARS..=NICKNAME_MAX_CHARS).contains(&chars) {
            return Err(InvalidValue::new(
                field,
                format!(
                    "must be {NICKNAME_MIN_CHARS}-{NICKNAME_MAX_CHARS} characters, got {chars}"
                ),
            ));
        }
        let lower = raw.to_ascii_lowercase();
        if let Some(bad) = lower.chars().find(|c| !is_nickname_char(*c)) {
            return Err(InvalidValue::new(
                field,
                format!("may only contain a-z, 0-9, '_', '.' and '-', found {bad:?}"),
            ));
        }
        Ok(Self(lower))
    }

    /// The nickname, lower-case.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The nickname, lower-case.
    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Display for Nickname {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whether `c` may appear in a (lower-cased) nickname.
pub fn is_nickname_char(c: char) -> bool {
    matches!(c, 'a'..='z' | '0'..='9' | '_' | '.' | '-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bidi_overrides_and_isolates_are_found_and_named() {
        for c in ('\u{202A}'..='\u{202E}').chain('\u{2066}'..='\u{2069}') {
            let text = format!("pay {c}1234 to");
            assert_eq!(find_bidi_control(&text), Some(c));
        }
        // Ordinary right-to-left text and the implicit marks (LRM/RLM) stay allowed.
        for fine in [
            "שלום עולם",
            "مرحبا",
            "a\u{200E}b\u{200F}c",
            "plain",
            "🦀\n\t",
        ] {
            assert_eq!(find_bidi_control(fine), None, "{fine:?}");
        }
        assert!(bidi_control_reason('\u{202E}').ends_with("(found U+202E)"));
    }

    #[test]
    fn nicknames_follow_one_rule() {
        for good in ["ann", "Ann.B-2_x", &"z".repeat(32)] {
            let nickname = Nickname::parse(good).unwrap();
            assert_eq!(nickname.as_str(), good.to_ascii_lowercase());
        }
        for (bad, reason) in [
            ("", "must be 3-32 characters, got 0"),
            ("ab", "must be 3-32 characters, got 2"),
            (&"z".repeat(33), "must be 3-32 characters, got 33"),
            (&"z".repeat(64), "must be 3-32 characters, got 64"),
            ("ann smith", "found ' '"),
            ("anné", "found 'é'"),
        ] {
            let error = Nickname::parse(bad).unwrap_err();
            assert_eq!(error.field, "nickname");
            assert!(error.reason.contains(reason), "{bad:?}: {error}");
        }
    }

    #[test]
    fn user_ids_are_uuids_and_errors_repeat_only_an_excerpt() {
        let id = UserId::parse("user_id", " 0190a5e8-7c1e-7000-8000-000000000001 ").unwrap();
        assert_eq!(id.to_string(), "0190a5e8-7c1e-7000-8000-000000000001");
        assert_eq!(
            UserId::parse("user_id", "").unwrap_err().to_string(),
            "user_id is required"
        );
        let huge = "x".repeat(4 << 20);
        let error = UserId::parse("author_id", &huge).unwrap_err().to_string();
        assert!(
            error.starts_with("author_id must be a UUID, got \"xxxx"),
            "{}",
            &error[..60]
        );
        assert!(error.len() < 200, "the error is {} bytes", error.len());
    }
}
