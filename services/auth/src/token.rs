//! Opaque access tokens: 256 random bits, handed to the client once, stored only as a
//! SHA-256 digest so a leaked session store does not leak usable tokens.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::TryRngCore as _;
use rand::rngs::OsRng;
use sha2::{Digest as _, Sha256};

use crate::error::AuthError;

const TOKEN_BYTES: usize = 32;
/// Length of 32 bytes in unpadded base64url.
const TOKEN_CHARS: usize = 43;

/// The bearer token as the client sees it. Never logged: `Debug` is redacted.
#[derive(Clone, PartialEq, Eq)]
pub struct AccessToken(String);

impl AccessToken {
    /// 32 bytes from the operating system's CSPRNG, base64url without padding.
    pub fn generate() -> Result<Self, AuthError> {
        let mut bytes = [0u8; TOKEN_BYTES];
        OsRng
            .try_fill_bytes(&mut bytes)
            .map_err(|e| AuthError::Randomness(e.to_string()))?;
        Ok(Self(URL_SAFE_NO_PAD.encode(bytes)))
    }

    /// Accepts only strings this service could have issued, so garbage never reaches
    /// the session store.
    pub fn parse(raw: &str) -> Option<Self> {
        if raw.len() != TOKEN_CHARS {
            return None;
        }
        let decoded = URL_SAFE_NO_PAD.decode(raw).ok()?;
        (decoded.len() == TOKEN_BYTES).then(|| Self(raw.to_owned()))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn digest(&self) -> TokenDigest {
        TokenDigest(hex::encode(Sha256::digest(self.0.as_bytes())))
    }
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AccessToken(<redacted>)")
    }
}

/// Hex SHA-256 of a token: the key the session is stored under.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TokenDigest(String);

impl TokenDigest {
    /// A digest as another component holds it: 64 lowercase hex digits.
    pub fn parse_hex(text: &str) -> Option<Self> {
        (text.len() == 64 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
            .then(|| Self(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_are_43_char_base64url_and_unique() {
        let first = AccessToken::generate().unwrap();
        let second = AccessToken::generate().unwrap();
        assert_eq!(first.expose().len(), 43);
        assert!(
            first
                .expose()
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        );
        assert_ne!(first, second);
        assert_eq!(AccessToken::parse(first.expose()), Some(first));
    }

    #[test]
    fn digest_is_sha256_hex_and_not_the_token() {
        let token = AccessToken::generate().unwrap();
        let digest = token.digest();
        assert_eq!(digest.as_str().len(), 64);
        assert_ne!(digest.as_str(), token.expose());
        assert_eq!(digest, token.digest());
    }

    #[test]
    fn digests_from_elsewhere_are_64_lowercase_hex_digits() {
        let digest = AccessToken::generate().unwrap().digest();
        assert_eq!(TokenDigest::parse_hex(digest.as_str()), Some(digest));
        for bad in ["", "abc", &"g".repeat(64), &"A".repeat(64), &"a".repeat(65)] {
            assert_eq!(TokenDigest::parse_hex(bad), None, "{bad}");
        }
    }

    #[test]
    fn malformed_tokens_are_refused() {
        for raw in [
            "",
            "short",
            &"a".repeat(44),
            &"+".repeat(43),
            &"a".repeat(42),
        ] {
            assert!(AccessToken::parse(raw).is_none(), "{raw:?}");
        }
    }

    #[test]
    fn debug_does_not_print_the_token() {
        let token = AccessToken::generate().unwrap();
        assert!(!format!("{token:?}").contains(token.expose()));
    }
}
