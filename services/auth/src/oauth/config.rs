//! The `AUTH_OAUTH_*` variables: which providers exist and how to reach them. Parsed and
//! checked at start-up, so a typo stops the service with the variable's name instead of
//! failing a user's sign-in later.

use std::time::Duration;

use messenger_common::ConfigError;
use messenger_common::config::{env_nonzero_duration_from, env_optional_from};
use openidconnect::core::CoreJwsSigningAlgorithm;
use url::Url;

/// How long a begun flow waits for its callback (`AUTH_OAUTH_FLOW_TTL`).
pub const DEFAULT_FLOW_TTL: Duration = Duration::from_secs(5 * 60);
/// Bound on every call to a provider (`AUTH_OAUTH_HTTP_TIMEOUT`).
pub const DEFAULT_HTTP_TIMEOUT: Duration = Duration::from_secs(10);
const NAME_MAX_CHARS: usize = 32;

/// All configured providers and what they share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthConfig {
    pub providers: Vec<ProviderConfig>,
    /// The gateway's public base URL (`AUTH_OAUTH_REDIRECT_BASE_URL`); a provider
    /// redirects to `<base>/v1/auth/oauth/<name>/callback`.
    pub redirect_base: Option<Url>,
    pub flow_ttl: Duration,
    pub http_timeout: Duration,
}

impl Default for OAuthConfig {
    fn default() -> Self {
        Self {
            providers: Vec::new(),
            redirect_base: None,
            flow_ttl: DEFAULT_FLOW_TTL,
            http_timeout: DEFAULT_HTTP_TIMEOUT,
        }
    }
}

/// One provider, `AUTH_OAUTH_<NAME>_*`.
#[derive(Clone, PartialEq, Eq)]
pub struct ProviderConfig {
    /// Lower-case letters, digits and `-`: it appears in URLs and variable names.
    pub name: String,
    pub display_name: String,
    pub kind: ProviderKind,
    pub client_id: String,
    /// `None` for a public client (PKCE alone).
    pub client_secret: Option<String>,
    pub scopes: Vec<String>,
    /// The callback URL registered with the provider.
    pub redirect_url: Url,
}

impl std::fmt::Debug for ProviderConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderConfig")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("client_id", &self.client_id)
            .field("client_secret", &self.client_secret.as_ref().map(|_| "***"))
            .field("scopes", &self.scopes)
            .field("redirect_url", &self.redirect_url.as_str())
            .finish()
    }
}

// Built once at start-up, a handful of them: the size difference costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProviderKind {
    /// OpenID Connect: endpoints and keys from the issuer's discovery document; the
    /// identity is the validated ID token's.
    Oidc {
        /// As configured, not normalised: the discovery document and the ID tokens must
        /// name the issuer exactly so.
        issuer: String,
        /// ID token signature algorithms accepted (`_ID_TOKEN_ALGORITHMS`, default RS256).
        algorithms: Vec<CoreJwsSigningAlgorithm>,
    },
    /// Plain OAuth 2.0 (GitHub-style): the identity comes from the userinfo endpoint.
    OAuth2 {
        authorize_url: Url,
        token_url: Url,
        userinfo_url: Url,
    },
}

impl ProviderKind {
    pub fn label(&self) -> &'static str {
        match self {
            Self::Oidc { .. } => "oidc",
            Self::OAuth2 { .. } => "oauth2",
        }
    }
}

impl OAuthConfig {
    pub fn from_lookup(lookup: &impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let flow_ttl = env_nonzero_duration_from(lookup, "AUTH_OAUTH_FLOW_TTL", DEFAULT_FLOW_TTL)?;
        let http_timeout =
            env_nonzero_duration_from(lookup, "AUTH_OAUTH_HTTP_TIMEOUT", DEFAULT_HTTP_TIMEOUT)?;
        let names: Option<String> = env_optional_from(lookup, "AUTH_OAUTH_PROVIDERS")?;
        let names: Vec<String> = names
            .unwrap_or_default()
            .split(',')
            .map(|name| name.trim().to_owned())
            .filter(|name| !name.is_empty())
            .collect();
        if names.is_empty() {
            return Ok(Self {
                flow_ttl,
                http_timeout,
                ..Self::default()
            });
        }
        let base_var = "AUTH_OAUTH_REDIRECT_BASE_URL";
        let base: String =
            env_optional_from(lookup, base_var)?.ok_or_else(|| ConfigError::Missing {
                name: base_var.into(),
            })?;
        let redirect_base = parse_url(base_var, &base)?;
        let mut providers = Vec::new();
        for name in &names {
            if !valid_name(name) {
                return Err(ConfigError::invalid(
                    "AUTH_OAUTH_PROVIDERS",
                    name,
                    "a provider name is 1-32 lower-case letters, digits and '-'",
                ));
            }
            if providers.iter().any(|p: &ProviderConfig| &p.name == name) {
                return Err(ConfigError::invalid(
                    "AUTH_OAUTH_PROVIDERS",
                    name,
                    "the provider is listed twice",
                ));
            }
            providers.push(provider(lookup, name, &redirect_base)?);
        }
        Ok(Self {
            providers,
            redirect_base: Some(redirect_base),
            flow_ttl,
            http_timeout,
        })
    }
}

fn valid_name(name: &str) -> bool {
    (1..=NAME_MAX_CHARS).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// `AUTH_OAUTH_<NAME>_<FIELD>`, the name upper-cased with `-` as `_`.
fn var(name: &str, field: &str) -> String {
    format!(
        "AUTH_OAUTH_{}_{field}",
        name.to_ascii_uppercase().replace('-', "_")
    )
}

fn provider(
    lookup: &impl Fn(&str) -> Option<String>,
    name: &str,
    redirect_base: &Url,
) -> Result<ProviderConfig, ConfigError> {
    let get = |field: &str| -> Result<Option<String>, ConfigError> {
        env_optional_from(lookup, &var(name, field))
    };
    let url = |field: &str| -> Result<Option<Url>, ConfigError> {
        get(field)?
            .map(|value| parse_url(&var(name, field), &value))
            .transpose()
    };
    let client_id = get("CLIENT_ID")?.ok_or_else(|| ConfigError::Missing {
        name: var(name, "CLIENT_ID"),
    })?;
    let client_secret = get("CLIENT_SECRET")?;
    let endpoints = [
        url("AUTHORIZE_URL")?,
        url("TOKEN_URL")?,
        url("USERINFO_URL")?,
    ];
    let issuer = get("ISSUER")?;
    if let Some(issuer) = &issuer {
        parse_url(&var(name, "ISSUER"), issuer)?;
    }
    let kind = match (issuer, endpoints) {
        (Some(issuer), [None, None, None]) => ProviderKind::Oidc {
            issuer: issuer.trim().to_owned(),
            algorithms: algorithms(
                &var(name, "ID_TOKEN_ALGORITHMS"),
                get("ID_TOKEN_ALGORITHMS")?,
            )?,
        },
        (Some(_), _) => {
            return Err(ConfigError::invalid(
                &var(name, "ISSUER"),
                "(set)",
                "an OpenID Connect provider takes its endpoints from the issuer's discovery \
                 document; unset the _AUTHORIZE_URL/_TOKEN_URL/_USERINFO_URL variables",
            ));
        }
        (None, [Some(authorize_url), Some(token_url), Some(userinfo_url)]) => {
            ProviderKind::OAuth2 {
                authorize_url,
                token_url,
                userinfo_url,
            }
        }
        (None, _) => {
            return Err(ConfigError::Missing {
                name: format!(
                    "{} (or all of {}, {} and {})",
                    var(name, "ISSUER"),
                    var(name, "AUTHORIZE_URL"),
                    var(name, "TOKEN_URL"),
                    var(name, "USERINFO_URL")
                ),
            });
        }
    };
    let mut scopes: Vec<String> = match get("SCOPES")? {
        Some(text) => text
            .split([' ', ','])
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
        None if matches!(kind, ProviderKind::Oidc { .. }) => {
            vec!["email".to_owned(), "profile".to_owned()]
        }
        None => Vec::new(),
    };
    // The `openid` scope is what makes the provider issue an ID token.
    if matches!(kind, ProviderKind::Oidc { .. }) {
        scopes.retain(|s| s != "openid");
    }
    let display_name = get("DISPLAY_NAME")?.unwrap_or_else(|| title_case(name));
    let redirect_url = redirect_base
        .join(&format!("v1/auth/oauth/{name}/callback"))
        .map_err(|e| {
            ConfigError::invalid("AUTH_OAUTH_REDIRECT_BASE_URL", redirect_base.as_str(), e)
        })?;
    Ok(ProviderConfig {
        name: name.to_owned(),
        display_name,
        kind,
        client_id,
        client_secret,
        scopes,
        redirect_url,
    })
}

/// An absolute http(s) URL; plain http only on loopback (a test provider), since tokens
/// and secrets travel over it.
fn parse_url(variable: &str, value: &str) -> Result<Url, ConfigError> {
    let mut url = Url::parse(value.trim()).map_err(|e| ConfigError::invalid(variable, value, e))?;
    let loopback = match url.host() {
        Some(url::Host::Domain(host)) => host == "localhost",
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    };
    match url.scheme() {
        "https" => {}
        "http" if loopback => {}
        _ => {
            return Err(ConfigError::invalid(
                variable,
                value,
                "use an https URL (plain http only for a loopback address)",
            ));
        }
    }
    if url.host().is_none() || url.query().is_some() || url.fragment().is_some() {
        return Err(ConfigError::invalid(
            variable,
            value,
            "expected a URL with a host and no query or fragment",
        ));
    }
    // A base URL is joined with a relative path: it must end in '/'.
    if variable.ends_with("REDIRECT_BASE_URL") && !url.path().ends_with('/') {
        let path = format!("{}/", url.path());
        url.set_path(&path);
    }
    Ok(url)
}

fn algorithms(
    variable: &str,
    value: Option<String>,
) -> Result<Vec<CoreJwsSigningAlgorithm>, ConfigError> {
    let Some(value) = value else {
        return Ok(vec![CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256]);
    };
    let mut algorithms = Vec::new();
    for name in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let algorithm: CoreJwsSigningAlgorithm =
            serde_json::from_value(serde_json::Value::String(name.to_owned()))
                .map_err(|_| ConfigError::invalid(variable, &value, "unknown algorithm"))?;
        // Unsigned tokens are never accepted; HMAC would make the client secret a
        // signing key anyone holding it could mint tokens with.
        if matches!(
            algorithm,
            CoreJwsSigningAlgorithm::None
                | CoreJwsSigningAlgorithm::HmacSha256
                | CoreJwsSigningAlgorithm::HmacSha384
                | CoreJwsSigningAlgorithm::HmacSha512
        ) {
            return Err(ConfigError::invalid(
                variable,
                &value,
                format!("{name} is not accepted; use asymmetric algorithms such as RS256, ES256"),
            ));
        }
        algorithms.push(algorithm);
    }
    if algorithms.is_empty() {
        return Err(ConfigError::invalid(variable, &value, "name at least one"));
    }
    Ok(algorithms)
}

fn title_case(name: &str) -> String {
    let mut chars = name.chars();
    chars
        .next()
        .map(|first| first.to_ascii_uppercase().to_string() + chars.as_str())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn parse(pairs: &[(&str, &str)]) -> Result<OAuthConfig, ConfigError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        OAuthConfig::from_lookup(&move |name: &str| map.get(name).cloned())
    }

    const CORP: [(&str, &str); 5] = [
        ("AUTH_OAUTH_PROVIDERS", "corp, git-hub"),
        ("AUTH_OAUTH_REDIRECT_BASE_URL", "https://chat.example.com"),
        (
            "AUTH_OAUTH_CORP_ISSUER",
            "https://login.example.com/realms/staff",
        ),
        ("AUTH_OAUTH_CORP_CLIENT_ID", "messenger"),
        ("AUTH_OAUTH_CORP_CLIENT_SECRET", "hunter2-client-secret"),
    ];
    const GITHUB: [(&str, &str); 5] = [
        ("AUTH_OAUTH_GIT_HUB_CLIENT_ID", "Iv1.abc"),
        (
            "AUTH_OAUTH_GIT_HUB_AUTHORIZE_URL",
            "https://github.com/login/oauth/authorize",
        ),
        (
            "AUTH_OAUTH_GIT_HUB_TOKEN_URL",
            "https://github.com/login/oauth/access_token",
        ),
        (
            "AUTH_OAUTH_GIT_HUB_USERINFO_URL",
            "https://api.github.com/user",
        ),
        ("AUTH_OAUTH_GIT_HUB_SCOPES", "read:user user:email"),
    ];

    #[test]
    fn no_providers_is_the_default() {
        let config = parse(&[]).unwrap();
        assert!(config.providers.is_empty());
        assert_eq!(config.flow_ttl, DEFAULT_FLOW_TTL);
    }

    #[test]
    fn an_oidc_issuer_and_a_plain_oauth2_provider() {
        let config = parse(&[CORP.as_slice(), GITHUB.as_slice()].concat()).unwrap();
        let [corp, github] = config.providers.as_slice() else {
            panic!("{config:?}");
        };
        assert_eq!(corp.name, "corp");
        assert_eq!(corp.display_name, "Corp");
        assert_eq!(
            corp.kind,
            ProviderKind::Oidc {
                issuer: "https://login.example.com/realms/staff".to_owned(),
                algorithms: vec![CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256],
            }
        );
        assert_eq!(corp.scopes, ["email", "profile"]);
        assert_eq!(corp.client_secret.as_deref(), Some("hunter2-client-secret"));
        assert_eq!(
            corp.redirect_url.as_str(),
            "https://chat.example.com/v1/auth/oauth/corp/callback"
        );
        assert_eq!(github.name, "git-hub");
        assert_eq!(github.kind.label(), "oauth2");
        assert_eq!(github.scopes, ["read:user", "user:email"]);
        assert_eq!(github.client_secret, None);
        // The secret never shows in a printed configuration.
        assert!(!format!("{config:?}").contains("hunter2"));
    }

    #[test]
    fn bad_provider_settings_fail_naming_the_variable() {
        let with = |extra: &[(&'static str, &'static str)], drop: &str| {
            let mut pairs: Vec<(&str, &str)> =
                CORP.iter().copied().filter(|(k, _)| *k != drop).collect();
            pairs.retain(|(k, _)| !extra.iter().any(|(e, _)| e == k));
            pairs.extend_from_slice(extra);
            parse(&pairs).unwrap_err()
        };
        /// (variables set, variable left out, the variable the error must name)
        type Case = (
            &'static [(&'static str, &'static str)],
            &'static str,
            &'static str,
        );
        let cases: [Case; 9] = [
            (
                &[],
                "AUTH_OAUTH_REDIRECT_BASE_URL",
                "AUTH_OAUTH_REDIRECT_BASE_URL",
            ),
            (
                &[],
                "AUTH_OAUTH_CORP_CLIENT_ID",
                "AUTH_OAUTH_CORP_CLIENT_ID",
            ),
            (
                &[],
                "AUTH_OAUTH_CORP_ISSUER",
                "AUTH_OAUTH_CORP_ISSUER (or all of",
            ),
            (
                &[("AUTH_OAUTH_CORP_ISSUER", "http://login.example.com")],
                "",
                "AUTH_OAUTH_CORP_ISSUER",
            ),
            (
                &[("AUTH_OAUTH_CORP_ID_TOKEN_ALGORITHMS", "none")],
                "",
                "AUTH_OAUTH_CORP_ID_TOKEN_ALGORITHMS",
            ),
            (
                &[("AUTH_OAUTH_CORP_ID_TOKEN_ALGORITHMS", "HS256")],
                "",
                "AUTH_OAUTH_CORP_ID_TOKEN_ALGORITHMS",
            ),
            (
                &[("AUTH_OAUTH_PROVIDERS", "Corp")],
                "",
                "AUTH_OAUTH_PROVIDERS",
            ),
            (
                &[("AUTH_OAUTH_PROVIDERS", "corp,corp")],
                "",
                "AUTH_OAUTH_PROVIDERS",
            ),
            (
                &[(
                    "AUTH_OAUTH_CORP_TOKEN_URL",
                    "https://login.example.com/token",
                )],
                "",
                "AUTH_OAUTH_CORP_ISSUER",
            ),
        ];
        for (extra, drop, variable) in cases {
            let error = with(extra, drop);
            assert!(
                error.variable().starts_with(variable),
                "{extra:?} without {drop}: {error}"
            );
            assert!(!error.to_string().contains("hunter2"), "{error}");
        }
    }

    #[test]
    fn plain_http_is_for_loopback_only() {
        for (value, ok) in [
            ("http://127.0.0.1:4000", true),
            ("http://localhost:4000/", true),
            ("https://login.example.com", true),
            ("http://login.example.com", false),
            ("ftp://login.example.com", false),
            ("https://login.example.com/?next=x", false),
            ("not a url", false),
        ] {
            assert_eq!(parse_url("X", value).is_ok(), ok, "{value}");
        }
    }
}
