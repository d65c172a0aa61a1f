//! Pure rules of the users service: what a valid nickname, bio, avatar URL, search query and
//! page token are, and how a registration whose nickname is taken gets a free one. No IO here.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::UsersError;

pub use messenger_common::ids::{NICKNAME_MAX_CHARS, NICKNAME_MIN_CHARS};
pub const BIO_MAX_CHARS: usize = 500;
pub const AVATAR_URL_MAX_CHARS: usize = 2048;
pub const SEARCH_DEFAULT_PAGE_SIZE: u32 = 20;
pub const SEARCH_MAX_PAGE_SIZE: u32 = 100;
/// Most ids one `GetUserProfiles` call may ask about.
pub const MAX_PROFILES_PER_CALL: usize = 100;
/// Hex digits of the user id appended on the first collision; grows by one per further collision.
pub const COLLISION_SUFFIX_MIN_HEX: usize = 6;
/// Upper bound for the suffix so at least three characters of the requested nickname survive.
pub const COLLISION_SUFFIX_MAX_HEX: usize = NICKNAME_MAX_CHARS - 1 - NICKNAME_MIN_CHARS;

/// A public profile as stored. `version` grows by one on every change; the cache uses it so a
/// slow reader can never overwrite a newer cached profile with an older one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Profile {
    pub user_id: Uuid,
    pub nickname: String,
    pub bio: String,
    pub avatar_url: String,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Nicknames follow the one rule every service shares.
pub use messenger_common::ids::Nickname;
use messenger_common::ids::{excerpt, is_nickname_char};

/// Parses a user id (a UUID in any standard textual form).
pub fn parse_user_id(raw: &str) -> Result<Uuid, UsersError> {
    Uuid::parse_str(raw.trim())
        .map_err(|_| UsersError::invalid("user_id", format!("{} is not a UUID", excerpt(raw))))
}

/// The ids of a `GetUserProfiles` request: at most [`MAX_PROFILES_PER_CALL`], each a UUID,
/// duplicates dropped (first occurrence kept).
pub fn parse_user_ids(raw: &[String]) -> Result<Vec<Uuid>, UsersError> {
    if raw.len() > MAX_PROFILES_PER_CALL {
        return Err(UsersError::invalid(
            "user_ids",
            format!(
                "at most {MAX_PROFILES_PER_CALL} per call, got {}",
                raw.len()
            ),
        ));
    }
    let mut ids = Vec::with_capacity(raw.len());
    for (i, value) in raw.iter().enumerate() {
        let id = Uuid::parse_str(value.trim()).map_err(|_| {
            UsersError::invalid(
                "user_ids",
                format!("[{i}] {} is not a UUID", excerpt(value)),
            )
        })?;
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    Ok(ids)
}

/// The nicknames a registration tries, in order: the requested one, then the requested one
/// (truncated to keep ≤ 32 characters) + `-` + the LAST 6, 7, ... 28 hex digits of the user
/// id, and finally the 32 hex digits of the user id alone. The last digits are used because
/// UUIDv7 ids start with a millisecond timestamp: users registering within hours of each other
/// share their first digits, while the last ones are random.
pub fn registration_nickname_candidates(requested: &Nickname, user_id: Uuid) -> Vec<Nickname> {
    let hex = user_id.simple().to_string();
    let mut candidates = vec![requested.clone()];
    for digits in COLLISION_SUFFIX_MIN_HEX..=COLLISION_SUFFIX_MAX_HEX {
        let suffix = &hex[hex.len() - digits..];
        let keep = requested
            .as_str()
            .len()
            .min(NICKNAME_MAX_CHARS - 1 - digits);
        // Nicknames are ASCII, so byte truncation is character truncation.
        candidates
            .extend(Nickname::parse(&format!("{}-{suffix}", &requested.as_str()[..keep])).ok());
    }
    candidates.extend(Nickname::parse(&hex).ok());
    candidates.dedup();
    candidates
}

/// A profile-creating `UserRegistered` event, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Registration {
    pub event_id: String,
    pub user_id: Uuid,
    pub nickname: Nickname,
}

impl Registration {
    pub fn parse(event_id: &str, user_id: &str, nickname: &str) -> Result<Self, UsersError> {
        let event_id = event_id.trim();
        if event_id.is_empty() || event_id.len() > 128 {
            return Err(UsersError::invalid(
                "event_id",
                "must be 1-128 characters (a UUID)",
            ));
        }
        Ok(Self {
            event_id: event_id.to_owned(),
            user_id: parse_user_id(user_id)?,
            nickname: Nickname::parse(nickname)?,
        })
    }
}

/// What processing a registration did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegistrationOutcome {
    /// A new profile; its nickname may differ from the requested one (collision resolved).
    Created(Profile),
    /// This event id was processed before: nothing changed.
    AlreadyProcessed,
    /// A profile for this user id exists already (an earlier event): nothing changed.
    ProfileExists,
}

/// A validated partial update; `None` leaves a field as it is, an empty bio or avatar URL
/// clears it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProfileUpdate {
    pub nickname: Option<Nickname>,
    pub bio: Option<String>,
    pub avatar_url: Option<String>,
}

impl ProfileUpdate {
    pub fn parse(
        nickname: Option<&str>,
        bio: Option<&str>,
        avatar_url: Option<&str>,
    ) -> Result<Self, UsersError> {
        Ok(Self {
            nickname: nickname.map(Nickname::parse).transpose()?,
            bio: bio.map(parse_bio).transpose()?,
            avatar_url: avatar_url.map(parse_avatar_url).transpose()?,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.nickname.is_none() && self.bio.is_none() && self.avatar_url.is_none()
    }

    /// The profile after this update (used by the in-memory store; PostgreSQL does the same
    /// in SQL).
    pub fn apply_to(&self, profile: &mut Profile) {
        if let Some(nickname) = &self.nickname {
            profile.nickname = nickname.as_str().to_owned();
        }
        if let Some(bio) = &self.bio {
            profile.bio.clone_from(bio);
        }
        if let Some(avatar_url) = &self.avatar_url {
            profile.avatar_url.clone_from(avatar_url);
        }
    }
}

/// Up to 500 characters; line breaks and tabs are fine, other control characters are not
/// (PostgreSQL cannot even store NUL), nor are bidi overrides and isolates.
pub fn parse_bio(raw: &str) -> Result<String, UsersError> {
    let chars = raw.chars().count();
    if chars > BIO_MAX_CHARS {
        return Err(UsersError::invalid(
            "bio",
            format!("must be at most {BIO_MAX_CHARS} characters, got {chars}"),
        ));
    }
    if let Some(bad) = raw
        .chars()
        .find(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
    {
        return Err(UsersError::invalid(
            "bio",
            format!("must not contain control character {bad:?}"),
        ));
    }
    if let Some(found) = messenger_common::ids::find_bidi_control(raw) {
        return Err(UsersError::invalid(
            "bio",
            messenger_common::ids::bidi_control_reason(found),
        ));
    }
    Ok(raw.to_owned())
}

/// Empty (clears the avatar) or an absolute http(s) URL with a host and no credentials, at
/// most 2048 characters; stored in the normalised form the `url` crate prints.
pub fn parse_avatar_url(raw: &str) -> Result<String, UsersError> {
    if raw.is_empty() {
        return Ok(String::new());
    }
    let too_long = || {
        UsersError::invalid(
            "avatar_url",
            format!("must be at most {AVATAR_URL_MAX_CHARS} characters"),
        )
    };
    if raw.chars().count() > AVATAR_URL_MAX_CHARS {
        return Err(too_long());
    }
    let url = url::Url::parse(raw)
        .map_err(|e| UsersError::invalid("avatar_url", format!("not an absolute URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(UsersError::invalid(
            "avatar_url",
            format!(
                "scheme must be http or https, got {}",
                excerpt(url.scheme())
            ),
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(UsersError::invalid("avatar_url", "must have a host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(UsersError::invalid(
            "avatar_url",
            "must not contain credentials",
        ));
    }
    let normalised = String::from(url);
    if normalised.chars().count() > AVATAR_URL_MAX_CHARS {
        return Err(too_long());
    }
    Ok(normalised)
}

/// A validated nickname-prefix search: the lower-cased prefix, the page size, and where the
/// previous page ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SearchQuery {
    pub prefix: String,
    pub page_size: u32,
    /// The last nickname of the previous page; this page starts strictly after it.
    pub after: Option<String>,
}

impl SearchQuery {
    pub fn parse(prefix: &str, page_size: u32, page_token: &str) -> Result<Self, UsersError> {
        let chars = prefix.chars().count();
        if !(1..=NICKNAME_MAX_CHARS).contains(&chars) {
            return Err(UsersError::invalid(
                "prefix",
                format!("must be 1-{NICKNAME_MAX_CHARS} characters, got {chars}"),
            ));
        }
        let prefix = prefix.to_ascii_lowercase();
        if let Some(bad) = prefix.chars().find(|c| !is_nickname_char(*c)) {
            return Err(UsersError::invalid(
                "prefix",
                format!("nicknames only contain a-z, 0-9, '_', '.' and '-', found {bad:?}"),
            ));
        }
        let page_size = match page_size {
            0 => SEARCH_DEFAULT_PAGE_SIZE,
            1..=SEARCH_MAX_PAGE_SIZE => page_size,
            _ => {
                return Err(UsersError::invalid(
                    "page_size",
                    format!(
                        "must be 1-{SEARCH_MAX_PAGE_SIZE} (0 means {SEARCH_DEFAULT_PAGE_SIZE}), got {page_size}"
                    ),
                ));
            }
        };
        let after = if page_token.is_empty() {
            None
        } else {
            Some(decode_page_token(&prefix, page_token)?)
        };
        Ok(Self {
            prefix,
            page_size,
            after,
        })
    }

    /// The SQL `LIKE` pattern matching nicknames that start with the prefix, with the LIKE
    /// wildcards (`_` is a legal nickname character) escaped by `\`.
    pub fn like_pattern(&self) -> String {
        let mut pattern = String::with_capacity(self.prefix.len() + 2);
        for c in self.prefix.chars() {
            if matches!(c, '%' | '_' | '\\') {
                pattern.push('\\');
            }
            pattern.push(c);
        }
        pattern.push('%');
        pattern
    }

    /// Builds the page from up to `page_size + 1` rows fetched in nickname order: the extra
    /// row only tells that another page exists.
    pub fn page_from_rows(&self, mut rows: Vec<Profile>) -> SearchPage {
        let page_size = self.page_size as usize;
        let next_page_token = if rows.len() > page_size {
            rows.truncate(page_size);
            rows.last()
                .map(|last| encode_page_token(&self.prefix, &last.nickname))
        } else {
            None
        };
        SearchPage {
            profiles: rows,
            next_page_token,
        }
    }
}

/// One page of search results.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SearchPage {
    pub profiles: Vec<Profile>,
    pub next_page_token: Option<String>,
}

const PAGE_TOKEN_VERSION: &str = "v1";

/// The token is opaque to clients (hex of `v1\n<prefix>\n<last nickname>`); it carries the
/// prefix so a token from one search cannot silently continue another.
pub fn encode_page_token(prefix: &str, last_nickname: &str) -> String {
    hex::encode(format!("{PAGE_TOKEN_VERSION}\n{prefix}\n{last_nickname}"))
}

fn decode_page_token(prefix: &str, token: &str) -> Result<String, UsersError> {
    let invalid = || UsersError::invalid("page_token", "not a token from this search");
    let bytes = hex::decode(token).map_err(|_| invalid())?;
    let text = String::from_utf8(bytes).map_err(|_| invalid())?;
    let mut parts = text.splitn(3, '\n');
    let (Some(PAGE_TOKEN_VERSION), Some(token_prefix), Some(last)) =
        (parts.next(), parts.next(), parts.next())
    else {
        return Err(invalid());
    };
    if token_prefix != prefix || !last.starts_with(prefix) {
        return Err(invalid());
    }
    let last = Nickname::parse_field("page_token", last).map_err(|_| invalid())?;
    Ok(last.into_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(error: UsersError) -> &'static str {
        match error {
            UsersError::InvalidArgument { field, .. } => field,
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }

    #[test]
    fn batch_ids_are_uuids_at_most_a_hundred_without_duplicates() {
        let a = Uuid::now_v7();
        let b = Uuid::now_v7();
        let raw = vec![a.to_string(), b.to_string(), a.to_string()];
        assert_eq!(parse_user_ids(&raw).unwrap(), vec![a, b]);
        assert_eq!(parse_user_ids(&[]).unwrap(), Vec::<Uuid>::new());
        let hundred: Vec<String> = (0..100).map(|_| Uuid::now_v7().to_string()).collect();
        assert_eq!(parse_user_ids(&hundred).unwrap().len(), 100);
        let too_many: Vec<String> = (0..101).map(|_| Uuid::now_v7().to_string()).collect();
        assert_eq!(field_of(parse_user_ids(&too_many).unwrap_err()), "user_ids");
        let bad = vec![a.to_string(), "x".repeat(10_000)];
        let error = parse_user_ids(&bad).unwrap_err();
        assert!(error.to_string().len() < 300, "{error}");
        assert_eq!(field_of(error), "user_ids");
    }

    #[test]
    fn nickname_rules() {
        let cases: &[(&str, Option<&str>)] = &[
            ("alice", Some("alice")),
            ("Alice", Some("alice")),
            ("a.b_c-9", Some("a.b_c-9")),
            ("abc", Some("abc")),
            (&"x".repeat(32), Some(&"x".repeat(32))),
            ("ab", None),
            ("", None),
            (&"x".repeat(33), None),
            ("al ice", None),
            ("alice!", None),
            ("алиса", None),
            ("ali\0ce", None),
        ];
        for (raw, expected) in cases {
            let parsed = Nickname::parse(raw);
            match expected {
                Some(expected) => {
                    assert_eq!(parsed.expect(raw).as_str(), *expected, "input {raw:?}")
                }
                None => assert_eq!(field_of(parsed.expect_err(raw).into()), "nickname"),
            }
        }
    }

    #[test]
    fn bio_rules() {
        assert_eq!(parse_bio("").unwrap(), "");
        assert_eq!(
            parse_bio("line\nbreak\tand tab").unwrap(),
            "line\nbreak\tand tab"
        );
        assert!(
            parse_bio(&"é".repeat(500)).is_ok(),
            "500 characters, 1000 bytes"
        );
        assert_eq!(field_of(parse_bio(&"a".repeat(501)).unwrap_err()), "bio");
        assert_eq!(field_of(parse_bio("nul\0byte").unwrap_err()), "bio");
        for bidi in ["mirror \u{202E}olleh", "\u{2067}rtl isolate\u{2069}"] {
            let error = parse_bio(bidi).unwrap_err();
            let message = error.to_string();
            assert!(message.contains("bidirectional override"), "{message}");
            assert_eq!(field_of(error), "bio");
        }
        assert!(parse_bio("עברית בסדר").is_ok());
    }

    #[test]
    fn rejected_values_are_quoted_as_short_excerpts() {
        let id = "u".repeat(100_000);
        let scheme = format!("{}:x", "s".repeat(2000));
        for error in [
            parse_user_id(&id),
            parse_avatar_url(&scheme).map(|_| Uuid::nil()),
        ]
        .map(Result::unwrap_err)
        {
            let message = error.to_string();
            assert!(message.len() < 200, "{} bytes: {message}", message.len());
            assert!(message.contains("bytes)"), "{message}");
        }
    }

    #[test]
    fn avatar_url_rules() {
        let ok: &[(&str, &str)] = &[
            ("", ""),
            (
                "https://cdn.example.com/a.png",
                "https://cdn.example.com/a.png",
            ),
            ("http://EXAMPLE.com", "http://example.com/"),
        ];
        for (raw, normalised) in ok {
            assert_eq!(parse_avatar_url(raw).expect(raw), *normalised);
        }
        let long = format!("https://example.com/{}", "a".repeat(2048));
        let bad = [
            "example.com/a.png",
            "/relative/a.png",
            "ftp://example.com/a.png",
            "javascript:alert(1)",
            "data:image/png;base64,AAAA",
            "https://user:secret@example.com/a.png",
            "http://",
            long.as_str(),
        ];
        for raw in bad {
            assert_eq!(
                field_of(parse_avatar_url(raw).expect_err(raw)),
                "avatar_url"
            );
        }
    }

    #[test]
    fn user_id_must_be_a_uuid() {
        let id = Uuid::now_v7();
        assert_eq!(parse_user_id(&id.to_string()).unwrap(), id);
        assert_eq!(
            field_of(parse_user_id("not-a-uuid").unwrap_err()),
            "user_id"
        );
        assert_eq!(field_of(parse_user_id("").unwrap_err()), "user_id");
    }

    #[test]
    fn collision_candidates_are_deterministic_and_valid() {
        let user_id = Uuid::parse_str("0190f3a2-7b1c-7d4e-8f00-123456abcdef").unwrap();
        let requested = Nickname::parse("alice").unwrap();
        let candidates = registration_nickname_candidates(&requested, user_id);
        assert_eq!(
            candidates,
            registration_nickname_candidates(&requested, user_id)
        );
        assert_eq!(candidates[0].as_str(), "alice");
        assert_eq!(candidates[1].as_str(), "alice-abcdef");
        assert_eq!(candidates[2].as_str(), "alice-6abcdef");
        assert_eq!(
            candidates.last().unwrap().as_str(),
            "0190f3a27b1c7d4e8f00123456abcdef"
        );
        for candidate in &candidates {
            assert_eq!(Nickname::parse(candidate.as_str()).unwrap(), *candidate);
        }
        let unique: std::collections::HashSet<_> = candidates.iter().collect();
        assert_eq!(unique.len(), candidates.len(), "no candidate repeats");
    }

    #[test]
    fn collision_candidates_truncate_long_nicknames_to_32() {
        let user_id = Uuid::parse_str("0190f3a2-7b1c-7d4e-8f00-123456abcdef").unwrap();
        let requested = Nickname::parse(&"n".repeat(32)).unwrap();
        let candidates = registration_nickname_candidates(&requested, user_id);
        assert_eq!(candidates[1].as_str(), format!("{}-abcdef", "n".repeat(25)));
        assert!(candidates.iter().all(|c| c.as_str().len() <= 32));
        // The longest suffix still keeps three characters of the requested nickname.
        let longest = &candidates[candidates.len() - 2];
        assert!(longest.as_str().starts_with("nnn-"), "{longest}");
    }

    #[test]
    fn search_query_rules() {
        let q = SearchQuery::parse("Al", 0, "").unwrap();
        assert_eq!((q.prefix.as_str(), q.page_size, q.after), ("al", 20, None));
        assert_eq!(SearchQuery::parse("al", 100, "").unwrap().page_size, 100);
        assert_eq!(
            field_of(SearchQuery::parse("al", 101, "").unwrap_err()),
            "page_size"
        );
        assert_eq!(
            field_of(SearchQuery::parse("", 10, "").unwrap_err()),
            "prefix"
        );
        assert_eq!(
            field_of(SearchQuery::parse("a%", 10, "").unwrap_err()),
            "prefix"
        );
        assert_eq!(
            field_of(SearchQuery::parse(&"a".repeat(33), 10, "").unwrap_err()),
            "prefix"
        );
    }

    #[test]
    fn like_pattern_escapes_wildcards() {
        let q = SearchQuery::parse("a_b", 10, "").unwrap();
        assert_eq!(q.like_pattern(), "a\\_b%");
        assert_eq!(
            SearchQuery::parse("ab.", 10, "").unwrap().like_pattern(),
            "ab.%"
        );
    }

    #[test]
    fn page_tokens_round_trip_and_are_bound_to_the_prefix() {
        let token = encode_page_token("al", "alice");
        let q = SearchQuery::parse("AL", 5, &token).unwrap();
        assert_eq!(q.after.as_deref(), Some("alice"));
        for bad in [
            "zz".to_owned(),
            "not hex".to_owned(),
            encode_page_token("bo", "bob"),
            encode_page_token("al", "bob"),
            hex::encode("v0\nal\nalice"),
            hex::encode("v1\nal\nal ice"),
        ] {
            assert_eq!(
                field_of(SearchQuery::parse("al", 5, &bad).unwrap_err()),
                "page_token",
                "token {bad:?}"
            );
        }
    }

    fn profile(nickname: &str) -> Profile {
        let now = Utc::now();
        Profile {
            user_id: Uuid::now_v7(),
            nickname: nickname.to_owned(),
            bio: String::new(),
            avatar_url: String::new(),
            version: 1,
            created_at: now,
            updated_at: now,
        }
    }

    #[test]
    fn page_from_rows_sets_a_token_only_when_more_rows_exist() {
        let q = SearchQuery::parse("a", 2, "").unwrap();
        let full = q.page_from_rows(vec![profile("aa"), profile("ab"), profile("ac")]);
        assert_eq!(full.profiles.len(), 2);
        assert_eq!(full.next_page_token, Some(encode_page_token("a", "ab")));
        let last = q.page_from_rows(vec![profile("aa"), profile("ab")]);
        assert_eq!(last.profiles.len(), 2);
        assert_eq!(last.next_page_token, None);
    }

    #[test]
    fn update_parse_and_apply() {
        assert!(ProfileUpdate::parse(None, None, None).unwrap().is_empty());
        let update = ProfileUpdate::parse(Some("Bob"), Some(""), Some("https://x.io/a")).unwrap();
        let mut p = profile("alice");
        p.bio = "old".into();
        update.apply_to(&mut p);
        assert_eq!((p.nickname.as_str(), p.bio.as_str()), ("bob", ""));
        assert_eq!(p.avatar_url, "https://x.io/a");
        assert_eq!(
            field_of(
                ProfileUpdate::parse(Some("ok_nick"), Some(&"b".repeat(501)), None).unwrap_err()
            ),
            "bio"
        );
    }
}
