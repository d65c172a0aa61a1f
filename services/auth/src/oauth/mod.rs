//! Sign-in through OAuth 2.0 / OpenID Connect providers.
//!
//! [`config`] reads the providers from the environment; [`provider`] talks to them
//! (discovery, JWKS, authorization URL, code exchange, ID token validation, userinfo)
//! with the `openidconnect` and `oauth2` crates; this module holds the pure rules: what
//! a provider's answer says about the user ([`ProviderIdentity`]) and the nickname a
//! first sign-in gets ([`nickname_for`]). The flow itself is `AuthService`'s.

pub mod config;
mod http;
pub mod provider;

pub use config::{OAuthConfig, ProviderConfig, ProviderKind};
pub use provider::{AuthorizationRequest, OAuthProviders, Provider};

use crate::domain::{Email, NICKNAME_MAX_CHARS, NICKNAME_MIN_CHARS, Nickname};

/// Longest subject identifier kept (OpenID Connect: at most 255 ASCII characters).
pub const SUBJECT_MAX_CHARS: usize = 255;

/// Who the provider says the user is, after the answer was validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderIdentity {
    /// The provider's stable identifier for the user (`sub`, or GitHub's `id`).
    pub subject: String,
    /// The email, only when the provider says it verified it.
    pub verified_email: Option<Email>,
    /// What the user calls themselves there (`preferred_username`, GitHub's `login`).
    pub username: Option<String>,
}

impl ProviderIdentity {
    /// Reads the identity from OpenID Connect-style claims (an ID token's or a userinfo
    /// answer's): `sub` (or a numeric or string `id`), `email` with `email_verified`
    /// true, `preferred_username` (or `login`). `None` without a usable subject.
    pub fn from_claims(claims: &serde_json::Value) -> Option<Self> {
        let subject = match claims.get("sub").or_else(|| claims.get("id"))? {
            serde_json::Value::String(text) => text.clone(),
            serde_json::Value::Number(number) => number.to_string(),
            _ => return None,
        };
        let subject_ok = (1..=SUBJECT_MAX_CHARS).contains(&subject.chars().count())
            && !subject.chars().any(char::is_control);
        if !subject_ok {
            return None;
        }
        let verified = claims.get("email_verified") == Some(&serde_json::Value::Bool(true));
        let verified_email = claims
            .get("email")
            .and_then(serde_json::Value::as_str)
            .filter(|_| verified)
            .and_then(|email| Email::parse(email).ok());
        let username = ["preferred_username", "login"]
            .iter()
            .find_map(|key| claims.get(*key).and_then(serde_json::Value::as_str))
            .map(str::to_owned);
        Some(Self {
            subject,
            verified_email,
            username,
        })
    }
}

/// The nickname a first sign-in asks for: the provider's username, else the email's
/// local part, else "user", turned into the nickname alphabet. The users service makes
/// it unique (a taken nickname gets a suffix), as for every registration.
pub fn nickname_for(identity: &ProviderIdentity) -> Nickname {
    let from_email = identity
        .verified_email
        .as_ref()
        .and_then(|email| email.as_str().split('@').next().map(str::to_owned));
    let raw = identity.username.clone().or(from_email).unwrap_or_default();
    let mut nickname: String = raw
        .to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '_'
            }
        })
        .take(NICKNAME_MAX_CHARS)
        .collect();
    if !nickname.chars().any(|c| c.is_ascii_alphanumeric()) {
        nickname = "user".to_owned();
    }
    while nickname.chars().count() < NICKNAME_MIN_CHARS {
        nickname.push('_');
    }
    Nickname::parse(&nickname).unwrap_or_else(|_| Nickname::parse("user").expect("valid"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn identities_are_read_from_claims() {
        let cases = [
            (
                json!({"sub": "248289761001", "email": "Jane@Example.com", "email_verified": true, "preferred_username": "j.doe"}),
                Some(("248289761001", Some("jane@example.com"), Some("j.doe"))),
            ),
            // An email the provider did not verify is not believed.
            (
                json!({"sub": "1", "email": "jane@example.com", "email_verified": false}),
                Some(("1", None, None)),
            ),
            (
                json!({"sub": "1", "email": "jane@example.com"}),
                Some(("1", None, None)),
            ),
            // GitHub's userinfo: a numeric id and a login.
            (
                json!({"id": 583231, "login": "octocat", "email": "octo@example.com"}),
                Some(("583231", None, Some("octocat"))),
            ),
            (json!({"email": "jane@example.com"}), None),
            (json!({"sub": ""}), None),
            (json!({"sub": {"nested": 1}}), None),
            (json!({"sub": "x".repeat(256)}), None),
        ];
        for (claims, expected) in cases {
            let identity = ProviderIdentity::from_claims(&claims);
            let got = identity.as_ref().map(|i| {
                (
                    i.subject.as_str(),
                    i.verified_email.as_ref().map(Email::as_str),
                    i.username.as_deref(),
                )
            });
            assert_eq!(got, expected, "{claims}");
        }
    }

    #[test]
    fn first_sign_in_nicknames_follow_the_nickname_rules() {
        let identity = |username: Option<&str>, email: Option<&str>| ProviderIdentity {
            subject: "s".into(),
            verified_email: email.map(|e| Email::parse(e).unwrap()),
            username: username.map(str::to_owned),
        };
        let cases = [
            (identity(Some("Jane.Doe"), None), "jane.doe"),
            (identity(Some("jane doe!"), None), "jane_doe_"),
            (identity(None, Some("ada.l@example.com")), "ada.l"),
            (identity(Some("al"), None), "al_"),
            (identity(Some("имя"), None), "user"),
            (identity(None, None), "user"),
            (
                identity(Some(&"x".repeat(40)), None),
                "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
            ),
        ];
        for (identity, expected) in cases {
            assert_eq!(nickname_for(&identity).as_str(), expected, "{identity:?}");
        }
    }
}
