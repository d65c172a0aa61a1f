//! Registration input rules: what a valid email, password and nickname are.
//!
//! Pure functions only; each `parse` returns the normalised value or a
//! [`ValidationError`] that says which field is wrong and why (never echoing a password).

use std::collections::HashSet;
use std::fmt;
use std::sync::LazyLock;

/// Longest email address SMTP can carry (RFC 5321 path limit minus the angle brackets).
pub const EMAIL_MAX_CHARS: usize = 254;
const EMAIL_LOCAL_MAX_CHARS: usize = 64;
const DOMAIN_LABEL_MAX_CHARS: usize = 63;

/// NIST SP 800-63B: at least 8 characters; the upper bound only keeps hashing cheap.
pub const PASSWORD_MIN_CHARS: usize = 8;
pub const PASSWORD_MAX_CHARS: usize = 128;
/// The refusal for a password over [`PASSWORD_MAX_CHARS`], on register and on login.
pub const PASSWORD_TOO_LONG: &str = "must be at most 128 characters";

pub use messenger_common::ids::{NICKNAME_MAX_CHARS, NICKNAME_MIN_CHARS};

/// Why a registration field was refused. The message is safe to return to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    #[error("email: {0}")]
    Email(&'static str),
    #[error("password: {0}")]
    Password(&'static str),
    #[error("nickname: {0}")]
    Nickname(String),
}

/// A syntactically valid email address, trimmed and lower-cased.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Email(String);

impl Email {
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        let email = raw.trim().to_ascii_lowercase();
        if email.is_empty() {
            return Err(ValidationError::Email("is required"));
        }
        if email.chars().count() > EMAIL_MAX_CHARS {
            return Err(ValidationError::Email("must be at most 254 characters"));
        }
        let mut parts = email.split('@');
        let (Some(local), Some(domain), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(ValidationError::Email("must contain exactly one @"));
        };
        validate_local_part(local)?;
        validate_domain(domain)?;
        Ok(Self(email))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The unquoted dot-atom form of RFC 5322; quoted local parts are legal but only ever
/// seen in attacks and tests, so they are refused.
fn validate_local_part(local: &str) -> Result<(), ValidationError> {
    if local.is_empty() {
        return Err(ValidationError::Email("needs a name before the @"));
    }
    if local.chars().count() > EMAIL_LOCAL_MAX_CHARS {
        return Err(ValidationError::Email(
            "the part before the @ must be at most 64 characters",
        ));
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+/=?^_`{|}~.-".contains(c);
    if !local.chars().all(allowed) {
        return Err(ValidationError::Email(
            "the part before the @ contains a character that is not allowed",
        ));
    }
    if local.starts_with('.') || local.ends_with('.') || local.contains("..") {
        return Err(ValidationError::Email(
            "the part before the @ must not start or end with a dot or contain two dots in a row",
        ));
    }
    Ok(())
}

/// A DNS host name with at least two labels and a non-numeric top-level label.
fn validate_domain(domain: &str) -> Result<(), ValidationError> {
    if domain.is_empty() {
        return Err(ValidationError::Email("needs a domain after the @"));
    }
    let labels: Vec<&str> = domain.split('.').collect();
    if labels.len() < 2 {
        return Err(ValidationError::Email(
            "the domain must have at least two parts, like example.com",
        ));
    }
    for label in &labels {
        let valid = !label.is_empty()
            && label.len() <= DOMAIN_LABEL_MAX_CHARS
            && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !valid {
            return Err(ValidationError::Email(
                "the domain must be dot-separated names of letters, digits and inner hyphens",
            ));
        }
    }
    let top_level = labels[labels.len() - 1];
    if top_level.chars().all(|c| c.is_ascii_digit()) {
        return Err(ValidationError::Email(
            "the domain must not be an IP address",
        ));
    }
    Ok(())
}

/// Passwords that attackers try first; compiled in so the check needs no IO.
static COMMON_PASSWORDS: LazyLock<HashSet<&'static str>> = LazyLock::new(|| {
    include_str!("../data/common-passwords.txt")
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect()
});

/// Whether `candidate` is on the embedded common-password list (case-insensitive).
pub fn is_common_password(candidate: &str) -> bool {
    COMMON_PASSWORDS.contains(candidate.to_lowercase().as_str())
}

/// A password accepted for a new account. Kept exactly as typed (no trimming, no
/// normalisation) and never printed.
#[derive(Clone)]
pub struct Password(String);

impl Password {
    /// Length in characters (not bytes) and not a common password; no composition rules,
    /// as NIST SP 800-63B advises.
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        let chars = raw.chars().count();
        if chars < PASSWORD_MIN_CHARS {
            return Err(ValidationError::Password("must be at least 8 characters"));
        }
        if chars > PASSWORD_MAX_CHARS {
            return Err(ValidationError::Password(PASSWORD_TOO_LONG));
        }
        if is_common_password(raw) {
            return Err(ValidationError::Password(
                "is one of the most common passwords; choose another",
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

/// Nicknames follow the one rule every service shares.
pub use messenger_common::ids::Nickname;

impl From<messenger_common::ids::InvalidValue> for ValidationError {
    fn from(error: messenger_common::ids::InvalidValue) -> Self {
        Self::Nickname(error.reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_trimmed_and_lower_cased() {
        let cases = [
            ("alice@example.com", "alice@example.com"),
            ("  Alice@Example.COM \n", "alice@example.com"),
            (
                "first.last+tag@mail.example.co.uk",
                "first.last+tag@mail.example.co.uk",
            ),
            (
                "o'brien_99@sub-domain.example.org",
                "o'brien_99@sub-domain.example.org",
            ),
            ("x@a.io", "x@a.io"),
        ];
        for (raw, expected) in cases {
            assert_eq!(
                Email::parse(raw).map(|e| e.as_str().to_owned()),
                Ok(expected.to_owned()),
                "{raw:?}"
            );
        }
    }

    #[test]
    fn invalid_emails_are_refused() {
        let long_local = format!("{}@example.com", "a".repeat(65));
        let too_long = format!(
            "{}@{}.com",
            "a".repeat(64),
            vec!["b".repeat(63); 3].join(".")
        );
        let long_label = format!("a@{}.com", "b".repeat(64));
        let cases = [
            "",
            "   ",
            "plainaddress",
            "@example.com",
            "alice@",
            "alice@@example.com",
            "alice@bob@example.com",
            "alice@localhost",
            "alice@example..com",
            "alice@.example.com",
            "alice@example.com.",
            "alice@-example.com",
            "alice@example-.com",
            "alice@exa_mple.com",
            "alice@127.0.0.1",
            ".alice@example.com",
            "alice.@example.com",
            "al..ice@example.com",
            "al ice@example.com",
            "\"alice\"@example.com",
            "alice(comment)@example.com",
            "ålice@example.com",
            "alice@exämple.com",
            "\u{212A}elvin@example.com",
            long_local.as_str(),
            too_long.as_str(),
            long_label.as_str(),
        ];
        for raw in cases {
            assert!(
                matches!(Email::parse(raw), Err(ValidationError::Email(_))),
                "{raw:?} was accepted"
            );
        }
    }

    #[test]
    fn email_length_limit_is_254_characters() {
        // 64 + 1 + 189 = 254
        let domain = format!(
            "{}.{}.{}.com",
            "d".repeat(60),
            "e".repeat(60),
            "f".repeat(63)
        );
        let at_limit = format!("{}@{}", "a".repeat(64), domain);
        assert_eq!(at_limit.len(), 254);
        assert!(Email::parse(&at_limit).is_ok());
        let over = format!("{}@g{domain}", "a".repeat(64));
        assert!(Email::parse(&over).is_err());
    }

    #[test]
    fn passwords_are_checked_by_character_count() {
        let cases: [(String, bool); 9] = [
            ("seven77".into(), false),
            ("correct horse".into(), true),
            ("eight888".into(), true),
            // 8 characters but 16 bytes: accepted, length counts characters.
            ("пароль12".into(), true),
            // 7 characters but 14 bytes: refused.
            ("пароль1".into(), false),
            ("x".repeat(128), true),
            ("x".repeat(129), false),
            // 128 characters, 256 bytes.
            ("é".repeat(128), true),
            (String::new(), false),
        ];
        for (raw, ok) in cases {
            assert_eq!(Password::parse(&raw).is_ok(), ok, "{raw:?}");
        }
    }

    #[test]
    fn common_passwords_are_refused_in_any_case() {
        for raw in [
            "password",
            "PASSWORD",
            "Password1",
            "12345678",
            "iloveyou",
            "qwertyuiop",
        ] {
            assert_eq!(
                Password::parse(raw).err(),
                Some(ValidationError::Password(
                    "is one of the most common passwords; choose another"
                )),
                "{raw:?}"
            );
        }
    }

    #[test]
    fn no_composition_rules() {
        for raw in [
            "all lower case words",
            "ALLUPPERCASEWORDS",
            "9384756120",
            "🦀🦀🦀🦀🦀🦀🦀🦀",
        ] {
            assert!(Password::parse(raw).is_ok(), "{raw:?}");
        }
    }

    #[test]
    fn the_embedded_list_has_hundreds_of_entries() {
        assert!(COMMON_PASSWORDS.len() >= 500, "{}", COMMON_PASSWORDS.len());
    }

    #[test]
    fn password_debug_is_redacted() {
        let password = Password::parse("correct horse battery").unwrap();
        assert!(!format!("{password:?}").contains("horse"));
    }

    #[test]
    fn nicknames() {
        let cases = [
            ("bob", Some("bob")),
            ("Alice_99", Some("alice_99")),
            ("a.b-c_d", Some("a.b-c_d")),
            (&*"n".repeat(32), Some(&*"n".repeat(32))),
            (&*"n".repeat(33), None),
            ("ab", None),
            ("", None),
            ("bob smith", None),
            (" bob", None),
            ("bob!", None),
            ("bøb", None),
            ("имя", None),
            // The Kelvin sign lower-cases to "k" in Unicode; it must not sneak in.
            ("\u{212A}bc", None),
        ];
        for (raw, expected) in cases {
            assert_eq!(
                Nickname::parse(raw).ok().map(|n| n.as_str().to_owned()),
                expected.map(str::to_owned),
                "{raw:?}"
            );
        }
    }
}
