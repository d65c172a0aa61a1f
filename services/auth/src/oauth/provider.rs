//! The configured providers and the calls to them: the authorization URL of a new flow
//! (PKCE S256, state, and nonce for OpenID Connect), and at the callback the code
//! exchange plus who the user is — from the ID token, validated against the issuer's
//! keys (signature with the configured algorithms only, `iss`, `aud`, `exp`, `iat`,
//! `nonce`), or from the userinfo endpoint of a plain OAuth 2.0 provider.
//!
//! An OpenID Connect provider's discovery document and keys are fetched on first use
//! and cached; a token signed with a key the cache does not know makes it fetch the
//! keys again, so the provider can rotate keys. (ID tokens come straight from the
//! provider's token endpoint, never from the browser, so nobody else can make the
//! service fetch keys.)

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use oauth2::basic::BasicClient;
use oauth2::{
    AuthUrl, AuthorizationCode, ClientId, ClientSecret, CsrfToken, PkceCodeChallenge,
    PkceCodeVerifier, RedirectUrl, RequestTokenError, Scope, TokenResponse as _, TokenUrl,
};
use openidconnect::core::{
    CoreAuthenticationFlow, CoreClient, CoreIdToken, CoreJsonWebKeySet, CoreProviderMetadata,
};
use openidconnect::{
    ClaimsVerificationError, EndpointMaybeSet, EndpointNotSet, EndpointSet, IssuerUrl,
    JsonWebKeySetUrl, Nonce, SignatureVerificationError, TokenResponse as _,
};
use tokio::sync::Mutex;
use url::Url;

use super::http::ProviderHttp;
use super::{OAuthConfig, ProviderConfig, ProviderIdentity, ProviderKind};
use crate::error::AuthError;

/// A discovery document is fetched again after this long.
pub const DISCOVERY_MAX_AGE: Duration = Duration::from_secs(60 * 60);
/// How far an ID token's `iat` may lie in the future (clock skew) or the past.
const IAT_FUTURE_SKEW: chrono::Duration = chrono::Duration::seconds(60);
const IAT_MAX_AGE: chrono::Duration = chrono::Duration::minutes(10);

/// The OpenID Connect client as built from a discovery document.
type OidcClient = CoreClient<
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointMaybeSet,
    EndpointMaybeSet,
>;

/// Every configured provider, by name.
pub struct OAuthProviders {
    providers: Vec<Arc<Provider>>,
    flow_ttl: Duration,
}

impl OAuthProviders {
    pub fn new(config: &OAuthConfig) -> Result<Self, String> {
        let http = ProviderHttp::new(config.http_timeout)?;
        Ok(Self {
            providers: config
                .providers
                .iter()
                .map(|provider| {
                    Arc::new(Provider {
                        config: provider.clone(),
                        http: http.clone(),
                        discovered: Mutex::new(None),
                    })
                })
                .collect(),
            flow_ttl: config.flow_ttl,
        })
    }

    /// No providers (tests, and a deployment that configures none).
    pub fn none() -> Self {
        Self {
            providers: Vec::new(),
            flow_ttl: super::config::DEFAULT_FLOW_TTL,
        }
    }

    pub fn configs(&self) -> impl Iterator<Item = &ProviderConfig> {
        self.providers.iter().map(|p| &p.config)
    }

    pub fn get(&self, name: &str) -> Result<Arc<Provider>, AuthError> {
        self.providers
            .iter()
            .find(|p| p.config.name == name)
            .cloned()
            .ok_or_else(|| AuthError::UnknownProvider(name.chars().take(64).collect()))
    }

    pub fn flow_ttl(&self) -> Duration {
        self.flow_ttl
    }
}

/// Where to send the browser, and the secrets the callback is checked against.
pub struct AuthorizationRequest {
    pub url: Url,
    pub state: String,
    pub pkce_verifier: String,
    pub nonce: Option<String>,
}

struct Discovered {
    metadata: CoreProviderMetadata,
    at: Instant,
}

pub struct Provider {
    config: ProviderConfig,
    http: ProviderHttp,
    discovered: Mutex<Option<Discovered>>,
}

impl Provider {
    pub fn config(&self) -> &ProviderConfig {
        &self.config
    }

    fn client_id(&self) -> ClientId {
        ClientId::new(self.config.client_id.clone())
    }

    fn client_secret(&self) -> Option<ClientSecret> {
        self.config.client_secret.clone().map(ClientSecret::new)
    }

    fn redirect_url(&self) -> RedirectUrl {
        RedirectUrl::from_url(self.config.redirect_url.clone())
    }

    fn scopes(&self) -> impl Iterator<Item = Scope> + '_ {
        self.config.scopes.iter().cloned().map(Scope::new)
    }

    /// A new flow's authorization URL and secrets.
    pub async fn authorization_request(&self) -> Result<AuthorizationRequest, AuthError> {
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        match &self.config.kind {
            ProviderKind::Oidc { .. } => {
                let client = self.oidc_client(self.metadata().await?);
                let (url, state, nonce) = client
                    .authorize_url(
                        CoreAuthenticationFlow::AuthorizationCode,
                        CsrfToken::new_random,
                        Nonce::new_random,
                    )
                    .add_scopes(self.scopes())
                    .set_pkce_challenge(challenge)
                    .url();
                Ok(AuthorizationRequest {
                    url,
                    state: state.secret().clone(),
                    pkce_verifier: verifier.secret().clone(),
                    nonce: Some(nonce.secret().clone()),
                })
            }
            ProviderKind::OAuth2 {
                authorize_url,
                token_url,
                ..
            } => {
                let client = self.oauth2_client(authorize_url, token_url);
                let (url, state) = client
                    .authorize_url(CsrfToken::new_random)
                    .add_scopes(self.scopes())
                    .set_pkce_challenge(challenge)
                    .url();
                Ok(AuthorizationRequest {
                    url,
                    state: state.secret().clone(),
                    pkce_verifier: verifier.secret().clone(),
                    nonce: None,
                })
            }
        }
    }

    /// Exchanges the code and finds out who the user is.
    pub async fn identify(
        &self,
        code: &str,
        pkce_verifier: &str,
        nonce: Option<&str>,
    ) -> Result<ProviderIdentity, AuthError> {
        let code = AuthorizationCode::new(code.to_owned());
        let verifier = PkceCodeVerifier::new(pkce_verifier.to_owned());
        match &self.config.kind {
            ProviderKind::Oidc { .. } => {
                let nonce = nonce.ok_or_else(|| {
                    AuthError::OAuthFlow("the flow has no nonce for this provider".into())
                })?;
                let client = self.oidc_client(self.metadata().await?);
                let token = client
                    .exchange_code(code)
                    .map_err(|e| self.failed(format!("has no token endpoint: {e}")))?
                    .set_pkce_verifier(verifier)
                    .request_async(&self.http)
                    .await
                    .map_err(|e| self.token_error(e))?;
                let id_token = token.id_token().ok_or_else(|| {
                    AuthError::OAuthDenied(format!(
                        "{} answered without an ID token",
                        self.config.name
                    ))
                })?;
                self.verified_identity(client, id_token, nonce).await
            }
            ProviderKind::OAuth2 {
                authorize_url,
                token_url,
                userinfo_url,
            } => {
                let token = self
                    .oauth2_client(authorize_url, token_url)
                    .exchange_code(code)
                    .set_pkce_verifier(verifier)
                    .request_async(&self.http)
                    .await
                    .map_err(|e| self.token_error(e))?;
                let claims = self
                    .http
                    .get_json(userinfo_url, token.access_token().secret())
                    .await
                    .map_err(|e| self.failed(format!("userinfo: {e}")))?;
                ProviderIdentity::from_claims(&claims).ok_or_else(|| {
                    self.failed("userinfo names no subject (`sub` or `id`)".to_owned())
                })
            }
        }
    }

    /// The ID token's identity, checked against the cached keys, and once more against
    /// freshly fetched ones when it names a key the cache does not know.
    async fn verified_identity(
        &self,
        client: OidcClient,
        id_token: &CoreIdToken,
        nonce: &str,
    ) -> Result<ProviderIdentity, AuthError> {
        let nonce = Nonce::new(nonce.to_owned());
        let claims = match self.verify(&client, id_token, &nonce) {
            Err(ClaimsVerificationError::SignatureVerification(
                SignatureVerificationError::NoMatchingKey,
            )) => {
                let client = self.oidc_client(self.refreshed_keys().await?);
                self.verify(&client, id_token, &nonce)
            }
            other => other,
        }
        .map_err(|e| {
            AuthError::OAuthDenied(format!(
                "the ID token from {} is not valid: {e}",
                self.config.name
            ))
        })?;
        let claims = serde_json::to_value(&claims)
            .map_err(|e| self.failed(format!("unreadable ID token claims: {e}")))?;
        ProviderIdentity::from_claims(&claims)
            .ok_or_else(|| self.failed("the ID token names no usable subject".to_owned()))
    }

    fn verify(
        &self,
        client: &OidcClient,
        id_token: &CoreIdToken,
        nonce: &Nonce,
    ) -> Result<openidconnect::core::CoreIdTokenClaims, ClaimsVerificationError> {
        let ProviderKind::Oidc { algorithms, .. } = &self.config.kind else {
            return Err(ClaimsVerificationError::Other(
                "not an OpenID Connect provider".into(),
            ));
        };
        let verifier = client
            .id_token_verifier()
            .set_allowed_algs(algorithms.iter().cloned())
            .set_issue_time_verifier_fn(|issued| {
                let now = Utc::now();
                if issued > now + IAT_FUTURE_SKEW {
                    Err(format!("issued in the future ({issued})"))
                } else if issued < now - IAT_MAX_AGE {
                    Err(format!("issued too long ago ({issued})"))
                } else {
                    Ok(())
                }
            });
        id_token.claims(&verifier, nonce).cloned()
    }

    fn oidc_client(&self, metadata: CoreProviderMetadata) -> OidcClient {
        CoreClient::from_provider_metadata(metadata, self.client_id(), self.client_secret())
            .set_redirect_uri(self.redirect_url())
    }

    fn oauth2_client(
        &self,
        authorize_url: &Url,
        token_url: &Url,
    ) -> BasicClient<EndpointSet, EndpointNotSet, EndpointNotSet, EndpointNotSet, EndpointSet> {
        let client = BasicClient::new(self.client_id())
            .set_auth_uri(AuthUrl::from_url(authorize_url.clone()))
            .set_token_uri(TokenUrl::from_url(token_url.clone()))
            .set_redirect_uri(self.redirect_url());
        match self.client_secret() {
            Some(secret) => client.set_client_secret(secret),
            None => client,
        }
    }

    /// The discovery document with its keys, from the cache while it is fresh.
    async fn metadata(&self) -> Result<CoreProviderMetadata, AuthError> {
        let ProviderKind::Oidc { issuer, .. } = &self.config.kind else {
            return Err(self.failed("is not an OpenID Connect provider".into()));
        };
        let mut cached = self.discovered.lock().await;
        if let Some(discovered) = cached
            .as_ref()
            .filter(|d| d.at.elapsed() < DISCOVERY_MAX_AGE)
        {
            return Ok(discovered.metadata.clone());
        }
        let issuer =
            IssuerUrl::new(issuer.clone()).map_err(|e| self.failed(format!("issuer: {e}")))?;
        let metadata = CoreProviderMetadata::discover_async(issuer, &self.http)
            .await
            .map_err(|e| self.failed(format!("discovery failed: {}", chain(&e))))?;
        *cached = Some(Discovered {
            metadata: metadata.clone(),
            at: Instant::now(),
        });
        Ok(metadata)
    }

    /// The metadata with the provider's current keys, fetched now. Concurrent callers
    /// wait for one another, so a rotation costs one fetch per waiting sign-in at most.
    async fn refreshed_keys(&self) -> Result<CoreProviderMetadata, AuthError> {
        let mut cached = self.discovered.lock().await;
        let Some(discovered) = cached.as_mut() else {
            drop(cached);
            return self.metadata().await;
        };
        let url: &JsonWebKeySetUrl = discovered.metadata.jwks_uri();
        let keys = CoreJsonWebKeySet::fetch_async(url, &self.http)
            .await
            .map_err(|e| self.failed(format!("fetching its keys failed: {}", chain(&e))))?;
        discovered.metadata = discovered.metadata.clone().set_jwks(keys);
        tracing::info!(provider = %self.config.name, "fetched the provider's signing keys again");
        Ok(discovered.metadata.clone())
    }

    fn failed(&self, what: String) -> AuthError {
        AuthError::ProviderFailed(format!("provider {}: {what}", self.config.name))
    }

    /// The provider refusing the code (used, expired, wrong verifier) is the flow
    /// failing; anything else is the provider failing.
    fn token_error<RE, T>(&self, error: RequestTokenError<RE, T>) -> AuthError
    where
        RE: std::error::Error + 'static,
        T: oauth2::ErrorResponse + std::fmt::Display + 'static,
    {
        match &error {
            RequestTokenError::ServerResponse(response) => AuthError::OAuthDenied(format!(
                "{} refused the authorization code: {response}",
                self.config.name
            )),
            _ => self.failed(format!("token request failed: {}", chain(&error))),
        }
    }
}

/// An error and its causes in one line.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
