//! The auth use cases — register, login, logout, validate, and sign-in / link / unlink
//! through OAuth providers — over the storage traits. No gRPC types here; `grpc.rs`
//! adapts requests and responses.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use messenger_proto::v1::{UserRegistered, event::Payload};
use uuid::Uuid;

use crate::domain::{
    Email, Nickname, PASSWORD_MAX_CHARS, PASSWORD_TOO_LONG, Password, ValidationError,
};
use crate::error::AuthError;
use crate::oauth::{OAuthProviders, ProviderConfig, nickname_for};
use crate::password::PasswordHasher;
use crate::store::{
    Account, AccountStore, LoginAttemptLimiter, OAuthFlow, OAuthFlowStore, OAuthIdentity,
    RegistrationLimiter, Session, SessionStore,
};
use crate::token::AccessToken;

/// The storage the service runs on.
#[derive(Clone)]
pub struct AuthStores {
    pub accounts: Arc<dyn AccountStore>,
    pub sessions: Arc<dyn SessionStore>,
    pub login_attempts: Arc<dyn LoginAttemptLimiter>,
    pub oauth_flows: Arc<dyn OAuthFlowStore>,
    pub registrations: Arc<dyn RegistrationLimiter>,
}

/// What a successful login hands out.
#[derive(Debug)]
pub struct IssuedToken {
    pub token: AccessToken,
    pub session: Session,
}

/// A begun OAuth flow, as the gateway hands it to the browser.
#[derive(Debug)]
pub struct StartedFlow {
    pub authorization_url: url::Url,
    /// The flow's secret handle (same shape as an access token); only its digest is kept.
    pub flow_id: AccessToken,
    pub expires_at: chrono::DateTime<Utc>,
}

/// The provider's redirect, as the gateway received it.
#[derive(Debug, Default)]
pub struct OAuthCallback<'a> {
    pub provider: &'a str,
    pub flow_id: &'a str,
    pub state: &'a str,
    pub code: &'a str,
    pub error: &'a str,
    pub error_description: &'a str,
}

/// How a completed OAuth flow ended.
#[derive(Debug)]
pub enum OAuthOutcome {
    SignedIn { issued: IssuedToken, created: bool },
    Linked { user_id: Uuid },
}

#[derive(Clone)]
pub struct AuthService {
    stores: AuthStores,
    hasher: PasswordHasher,
    token_ttl: Duration,
    oauth: Arc<OAuthProviders>,
}

impl AuthService {
    pub fn new(stores: AuthStores, hasher: PasswordHasher, token_ttl: Duration) -> Self {
        Self {
            stores,
            hasher,
            token_ttl,
            oauth: Arc::new(OAuthProviders::none()),
        }
    }

    /// The same service signing in through these providers.
    #[must_use]
    pub fn with_oauth(mut self, providers: OAuthProviders) -> Self {
        self.oauth = Arc::new(providers);
        self
    }

    /// Creates the account and (atomically, through the store) its `UserRegistered`
    /// event. Returns the new user id. `client` is the caller's address: each client may
    /// register only so many accounts per window (see `RegisterLimits`).
    pub async fn register(
        &self,
        email: &str,
        password: &str,
        nickname: &str,
        client: &str,
    ) -> Result<Uuid, AuthError> {
        let email = Email::parse(email)?;
        let password = Password::parse(password)?;
        let nickname = Nickname::parse(nickname).map_err(ValidationError::from)?;
        // Counted before the email is looked up, so probing which emails are taken costs
        // the same budget as registering.
        self.stores.registrations.begin_registration(client).await?;
        // Saves the argon2 work for the common case; the unique index decides races.
        if self.stores.accounts.find_by_email(&email).await?.is_some() {
            return Err(AuthError::EmailTaken);
        }
        let password_hash = self
            .hasher
            .hash_blocking(password.expose().to_owned())
            .await?;
        let account = Account {
            user_id: Uuid::now_v7(),
            email: Some(email),
            nickname,
            password_hash: Some(password_hash),
            created_at: Utc::now(),
        };
        let event = messenger_common::events::new_event(Payload::UserRegistered(UserRegistered {
            user_id: account.user_id.to_string(),
            nickname: account.nickname.as_str().to_owned(),
        }));
        self.stores.accounts.create(&account, &event).await?;
        tracing::info!(user_id = %account.user_id, "account registered");
        Ok(account.user_id)
    }

    /// Exchanges email and password for a fresh access token. `client` is the caller's
    /// address, used for the per-client failure limit.
    pub async fn login(
        &self,
        email: &str,
        password: &str,
        client: &str,
    ) -> Result<IssuedToken, AuthError> {
        // A malformed address cannot belong to an account, so saying so reveals nothing.
        let email = Email::parse(email)?;
        if password.is_empty() {
            return Err(ValidationError::Password("is required").into());
        }
        // No account has a longer password, and hashing megabytes costs real CPU: refuse
        // before the limiter counts it or the hasher sees it.
        if exceeds_password_cap(password) {
            return Err(ValidationError::Password(PASSWORD_TOO_LONG).into());
        }
        self.stores
            .login_attempts
            .begin_attempt(&email, client)
            .await?;
        // Until the password check starts, the attempt has taught the caller nothing: if
        // the request ends before (its deadline passes while it queues for a hashing
        // slot, or storage fails), it stops counting as a failure.
        let pending = PendingAttempt::new(&self.stores.login_attempts, &email, client);
        let account = self.stores.accounts.find_by_email(&email).await?;
        let slot = self.hasher.login_slot().await?;
        pending.started();
        let password_matches = self
            .hasher
            .verify_in(
                slot,
                password.to_owned(),
                // No account, or one without a password: the dummy hash keeps the timing.
                account.as_ref().and_then(|a| a.password_hash.clone()),
            )
            .await?;
        // A failed attempt simply stays counted.
        let account = match account {
            Some(account) if password_matches => account,
            _ => return Err(AuthError::InvalidCredentials),
        };

        let issued = self.issue_token(account.user_id).await?;
        self.stores
            .login_attempts
            .attempt_succeeded(&email, client)
            .await?;
        tracing::info!(user_id = %account.user_id, "login succeeded");
        Ok(issued)
    }

    /// A fresh access token for the user.
    async fn issue_token(&self, user_id: Uuid) -> Result<IssuedToken, AuthError> {
        let token = AccessToken::generate()?;
        let ttl = chrono::Duration::from_std(self.token_ttl)
            .map_err(|e| AuthError::CorruptData(format!("token TTL out of range: {e}")))?;
        let session = Session {
            user_id,
            expires_at: Utc::now() + ttl,
        };
        self.stores
            .sessions
            .insert(&token.digest(), &session)
            .await?;
        Ok(IssuedToken { token, session })
    }

    /// The configured providers, in the order of `AUTH_OAUTH_PROVIDERS`.
    pub fn oauth_providers(&self) -> Vec<ProviderConfig> {
        self.oauth.configs().cloned().collect()
    }

    /// Begins a flow with `provider`: a sign-in, or with `link_user` a link to that
    /// (signed-in) user's account. The flow is kept by the digest of its id until the
    /// callback takes it or it expires.
    pub async fn start_oauth(
        &self,
        provider: &str,
        link_user: Option<Uuid>,
    ) -> Result<StartedFlow, AuthError> {
        let provider = self.oauth.get(provider)?;
        if let Some(user_id) = link_user
            && self.stores.accounts.find_by_id(user_id).await?.is_none()
        {
            return Err(AuthError::AccountNotFound);
        }
        let request = provider.authorization_request().await?;
        let ttl = chrono::Duration::from_std(self.oauth.flow_ttl())
            .map_err(|e| AuthError::CorruptData(format!("flow TTL out of range: {e}")))?;
        let flow = OAuthFlow {
            provider: provider.config().name.clone(),
            state: request.state,
            pkce_verifier: request.pkce_verifier,
            nonce: request.nonce,
            link_user,
            expires_at: Utc::now() + ttl,
        };
        let flow_id = AccessToken::generate()?;
        self.stores
            .oauth_flows
            .insert(&flow_id.digest(), &flow)
            .await?;
        Ok(StartedFlow {
            authorization_url: request.url,
            flow_id,
            expires_at: flow.expires_at,
        })
    }

    /// Completes the flow the callback belongs to. The flow is taken first, so whatever
    /// happens next, the same callback (or its code) never works twice.
    pub async fn finish_oauth(
        &self,
        callback: OAuthCallback<'_>,
    ) -> Result<OAuthOutcome, AuthError> {
        const START_AGAIN: &str =
            "this sign-in is unknown, expired or already completed; start it again";
        let provider = self.oauth.get(callback.provider)?;
        let flow_id = AccessToken::parse(callback.flow_id)
            .ok_or_else(|| AuthError::OAuthFlow(START_AGAIN.into()))?;
        let flow = self
            .stores
            .oauth_flows
            .take(&flow_id.digest())
            .await?
            .ok_or_else(|| AuthError::OAuthFlow(START_AGAIN.into()))?;
        let name = provider.config().name.clone();
        if flow.provider != name {
            return Err(AuthError::OAuthFlow(format!(
                "this callback is for {name}, but the sign-in was started with {}",
                flow.provider
            )));
        }
        if !callback.error.is_empty() {
            // The provider's words, cut short: they come back through the browser.
            let cut = |text: &str| -> String { text.chars().take(200).collect() };
            let description = match callback.error_description {
                "" => String::new(),
                text => format!(" ({})", cut(text)),
            };
            return Err(AuthError::OAuthDenied(format!(
                "{name} did not sign you in: {}{description}",
                cut(callback.error)
            )));
        }
        if callback.state != flow.state {
            return Err(AuthError::OAuthFlow(
                "the state does not match the sign-in that was started; start it again".into(),
            ));
        }
        if callback.code.is_empty() {
            return Err(AuthError::OAuthFlow(format!("{name} sent no code")));
        }
        let identity = provider
            .identify(callback.code, &flow.pkce_verifier, flow.nonce.as_deref())
            .await?;
        let key = OAuthIdentity {
            provider: name.clone(),
            subject: identity.subject.clone(),
        };
        if let Some(user_id) = flow.link_user {
            match self.stores.accounts.find_by_identity(&key).await? {
                Some(account) if account.user_id == user_id => {}
                Some(_) => return Err(AuthError::IdentityTaken(name)),
                None => self.stores.accounts.link(user_id, &key).await?,
            }
            tracing::info!(%user_id, provider = %name, "provider linked");
            return Ok(OAuthOutcome::Linked { user_id });
        }
        if let Some(account) = self.stores.accounts.find_by_identity(&key).await? {
            let issued = self.issue_token(account.user_id).await?;
            tracing::info!(user_id = %account.user_id, provider = %name, "OAuth sign-in");
            return Ok(OAuthOutcome::SignedIn {
                issued,
                created: false,
            });
        }
        // Never merged silently: whoever owns the account signs in to it and links.
        if let Some(email) = &identity.verified_email
            && self.stores.accounts.find_by_email(email).await?.is_some()
        {
            return Err(AuthError::EmailBelongsToAccount(name));
        }
        let account = Account {
            user_id: Uuid::now_v7(),
            email: identity.verified_email.clone(),
            nickname: nickname_for(&identity),
            password_hash: None,
            created_at: Utc::now(),
        };
        let event = messenger_common::events::new_event(Payload::UserRegistered(UserRegistered {
            user_id: account.user_id.to_string(),
            nickname: account.nickname.as_str().to_owned(),
        }));
        self.stores
            .accounts
            .create_with_identity(&account, &key, &event)
            .await
            .map_err(|error| match error {
                AuthError::EmailTaken => AuthError::EmailBelongsToAccount(name.clone()),
                other => other,
            })?;
        tracing::info!(user_id = %account.user_id, provider = %name, "account registered through OAuth");
        let issued = self.issue_token(account.user_id).await?;
        Ok(OAuthOutcome::SignedIn {
            issued,
            created: true,
        })
    }

    /// Removes the user's link to `provider`, unless it is their only way in.
    pub async fn unlink_oauth(&self, user_id: Uuid, provider: &str) -> Result<(), AuthError> {
        if provider.is_empty() {
            return Err(AuthError::OAuthFlow("provider is required".into()));
        }
        self.stores.accounts.unlink(user_id, provider).await?;
        tracing::info!(%user_id, %provider, "provider unlinked");
        Ok(())
    }

    /// Revokes the token at once. Unknown or already revoked tokens are fine.
    pub async fn logout(&self, token: &str) -> Result<(), AuthError> {
        if token.is_empty() {
            return Err(AuthError::MissingToken);
        }
        // A string this service never issued has no session to remove.
        if let Some(token) = AccessToken::parse(token) {
            self.stores.sessions.remove(&token.digest()).await?;
        }
        Ok(())
    }

    /// The digests whose session no longer exists. Malformed digests count as ended.
    pub async fn ended_sessions(&self, digests: &[String]) -> Result<Vec<String>, AuthError> {
        let mut ended = Vec::new();
        for text in digests {
            let alive = match crate::token::TokenDigest::parse_hex(text) {
                Some(digest) => self.stores.sessions.get(&digest).await?.is_some(),
                None => false,
            };
            if !alive {
                ended.push(text.clone());
            }
        }
        Ok(ended)
    }

    /// Resolves a token to its session: one session-store lookup, no password work.
    pub async fn validate(&self, token: &str) -> Result<Session, AuthError> {
        let token = AccessToken::parse(token).ok_or(AuthError::InvalidToken)?;
        self.stores
            .sessions
            .get(&token.digest())
            .await?
            .ok_or(AuthError::InvalidToken)
    }
}

/// A login attempt counted by the limiter whose password check has not started yet.
/// Dropped before [`started`](Self::started), it un-counts the attempt in the background
/// (a drop cannot wait for storage).
struct PendingAttempt {
    abandoned: Option<(Arc<dyn LoginAttemptLimiter>, Email, String)>,
}

impl PendingAttempt {
    fn new(limiter: &Arc<dyn LoginAttemptLimiter>, email: &Email, client: &str) -> Self {
        Self {
            abandoned: Some((limiter.clone(), email.clone(), client.to_owned())),
        }
    }

    /// The password check is under way: from here on the attempt counts.
    fn started(mut self) {
        self.abandoned = None;
    }
}

impl Drop for PendingAttempt {
    fn drop(&mut self) {
        let Some((limiter, email, client)) = self.abandoned.take() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            if let Err(error) = limiter.attempt_abandoned(&email, &client).await {
                tracing::warn!(%error, "could not un-count an abandoned login attempt");
            }
        });
    }
}

/// Longer than any password [`Password::parse`] accepts. The byte length answers first
/// (a char is at most 4 bytes), so a huge value is not walked char by char.
fn exceeds_password_cap(password: &str) -> bool {
    password.len() > PASSWORD_MAX_CHARS * 4 || password.chars().count() > PASSWORD_MAX_CHARS
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{
        InMemoryAccountStore, InMemoryLoginAttemptLimiter, InMemoryRegistrationLimiter,
        InMemorySessionStore, LimiterClock, LoginLimits, RegisterLimits,
    };
    use messenger_common::events::InMemoryEventBus;

    const PASSWORD: &str = "correct horse battery";

    fn service(limits: LoginLimits) -> AuthService {
        service_with(InMemoryLoginAttemptLimiter::new(limits))
    }

    fn service_with(limiter: InMemoryLoginAttemptLimiter) -> AuthService {
        service_with_hasher(limiter, PasswordHasher::new().unwrap())
    }

    fn service_with_hasher(
        limiter: InMemoryLoginAttemptLimiter,
        hasher: PasswordHasher,
    ) -> AuthService {
        let registrations = InMemoryRegistrationLimiter::new(RegisterLimits::default());
        service_with_parts(limiter, registrations, hasher)
    }

    fn service_with_parts(
        limiter: InMemoryLoginAttemptLimiter,
        registrations: InMemoryRegistrationLimiter,
        hasher: PasswordHasher,
    ) -> AuthService {
        let stores = AuthStores {
            accounts: Arc::new(InMemoryAccountStore::new(Arc::new(InMemoryEventBus::new()))),
            sessions: Arc::new(InMemorySessionStore::new()),
            login_attempts: Arc::new(limiter),
            oauth_flows: Arc::new(crate::store::InMemoryOAuthFlowStore::new()),
            registrations: Arc::new(registrations),
        };
        AuthService::new(stores, hasher, Duration::from_secs(60))
    }

    /// A service with two plain OAuth 2.0 providers whose endpoints nobody listens on:
    /// starting a flow needs no network, completing one fails at the code exchange.
    fn with_unreachable_providers() -> AuthService {
        let lookup = |name: &str| -> Option<String> {
            let value = match name {
                "AUTH_OAUTH_PROVIDERS" => "corp,other",
                "AUTH_OAUTH_REDIRECT_BASE_URL" => "https://chat.example.com",
                "AUTH_OAUTH_CORP_CLIENT_ID" | "AUTH_OAUTH_OTHER_CLIENT_ID" => "messenger",
                "AUTH_OAUTH_CORP_CLIENT_SECRET" => "a-client-secret",
                "AUTH_OAUTH_CORP_AUTHORIZE_URL" | "AUTH_OAUTH_OTHER_AUTHORIZE_URL" => {
                    "http://127.0.0.1:9/authorize"
                }
                "AUTH_OAUTH_CORP_TOKEN_URL" | "AUTH_OAUTH_OTHER_TOKEN_URL" => {
                    "http://127.0.0.1:9/token"
                }
                "AUTH_OAUTH_CORP_USERINFO_URL" | "AUTH_OAUTH_OTHER_USERINFO_URL" => {
                    "http://127.0.0.1:9/userinfo"
                }
                _ => return None,
            };
            Some(value.to_owned())
        };
        let config = crate::oauth::OAuthConfig::from_lookup(&lookup).unwrap();
        service(LoginLimits::default()).with_oauth(OAuthProviders::new(&config).unwrap())
    }

    #[tokio::test]
    async fn a_flow_starts_with_pkce_and_state_and_is_completed_at_most_once() {
        let auth = with_unreachable_providers();
        let started = auth.start_oauth("corp", None).await.unwrap();
        let url = &started.authorization_url;
        let query: std::collections::HashMap<_, _> = url.query_pairs().into_owned().collect();
        assert_eq!(
            url.as_str().split('?').next(),
            Some("http://127.0.0.1:9/authorize")
        );
        assert_eq!(query["response_type"], "code");
        assert_eq!(query["client_id"], "messenger");
        assert_eq!(query["code_challenge_method"], "S256");
        assert_eq!(
            query["redirect_uri"],
            "https://chat.example.com/v1/auth/oauth/corp/callback"
        );
        // Nothing secret in the URL: no verifier, no client secret, no flow id.
        assert!(!url.as_str().contains("a-client-secret"));
        assert!(!url.as_str().contains(started.flow_id.expose()));
        let state = query["state"].clone();
        let callback = |flow_id, state, code| OAuthCallback {
            provider: "corp",
            flow_id,
            state,
            code,
            ..OAuthCallback::default()
        };
        // The right state and a code: the exchange fails (nobody listens), and the flow
        // is used up all the same.
        let error = auth
            .finish_oauth(callback(started.flow_id.expose(), &state, "code"))
            .await
            .unwrap_err();
        assert!(matches!(error, AuthError::ProviderFailed(_)), "{error:?}");
        let error = auth
            .finish_oauth(callback(started.flow_id.expose(), &state, "code"))
            .await
            .unwrap_err();
        assert!(matches!(error, AuthError::OAuthFlow(_)), "{error:?}");
        assert_eq!(auth.stores.accounts.count().await.unwrap(), 0);
    }

    #[tokio::test]
    async fn callbacks_that_do_not_match_their_flow_are_refused_and_use_it_up() {
        let auth = with_unreachable_providers();
        let state_of = |started: &StartedFlow| {
            started
                .authorization_url
                .query_pairs()
                .find(|(k, _)| k == "state")
                .map(|(_, v)| v.into_owned())
                .unwrap()
        };
        /// (callback provider, state suffix, error, what the refusal is)
        type Case = (
            &'static str,
            &'static str,
            &'static str,
            fn(&AuthError) -> bool,
        );
        let cases: [Case; 4] = [
            (
                "corp",
                "x",
                "",
                |e| matches!(e, AuthError::OAuthFlow(m) if m.contains("state")),
            ),
            (
                "other",
                "",
                "",
                |e| matches!(e, AuthError::OAuthFlow(m) if m.contains("started with corp")),
            ),
            (
                "corp",
                "",
                "access_denied",
                |e| matches!(e, AuthError::OAuthDenied(m) if m.contains("access_denied")),
            ),
            ("nope", "", "", |e| {
                matches!(e, AuthError::UnknownProvider(_))
            }),
        ];
        for (provider, suffix, error, expected) in cases {
            let started = auth.start_oauth("corp", None).await.unwrap();
            let state = format!("{}{suffix}", state_of(&started));
            let refusal = auth
                .finish_oauth(OAuthCallback {
                    provider,
                    flow_id: started.flow_id.expose(),
                    state: &state,
                    code: "code",
                    error,
                    ..OAuthCallback::default()
                })
                .await
                .unwrap_err();
            assert!(
                expected(&refusal),
                "{provider} {suffix} {error}: {refusal:?}"
            );
        }
        // A flow id nobody issued.
        let forged = AccessToken::generate().unwrap();
        let refusal = auth
            .finish_oauth(OAuthCallback {
                provider: "corp",
                flow_id: forged.expose(),
                state: "s",
                code: "c",
                ..OAuthCallback::default()
            })
            .await
            .unwrap_err();
        assert!(matches!(refusal, AuthError::OAuthFlow(_)), "{refusal:?}");
        // Linking needs an account to link to.
        let refusal = auth
            .start_oauth("corp", Some(Uuid::now_v7()))
            .await
            .unwrap_err();
        assert!(matches!(refusal, AuthError::AccountNotFound), "{refusal:?}");
        assert_eq!(auth.stores.accounts.count().await.unwrap(), 0);
    }

    #[tokio::test]
    async fn one_client_registers_only_so_many_accounts_per_window() {
        let clock = LimiterClock::manual(1_800_000_000_000);
        let limits = RegisterLimits {
            max_per_client: 2,
            window: Duration::from_secs(600),
        };
        let auth = service_with_parts(
            InMemoryLoginAttemptLimiter::new(LoginLimits::default()),
            InMemoryRegistrationLimiter::new(limits).with_clock(clock.clone()),
            PasswordHasher::new().unwrap(),
        );
        // Two from one IPv6 /64 (one of them refused for its email: it still counts)...
        auth.register("first@example.com", PASSWORD, "first", "2001:db8:7:7::1")
            .await
            .unwrap();
        let taken = auth
            .register("first@example.com", PASSWORD, "again", "2001:db8:7:7::2")
            .await
            .unwrap_err();
        assert!(matches!(taken, AuthError::EmailTaken), "{taken:?}");
        // ...then another address of that /64 waits out the window.
        clock.advance(Duration::from_secs(60));
        let refused = auth
            .register("third@example.com", PASSWORD, "third", "2001:db8:7:7::3")
            .await
            .unwrap_err();
        assert!(
            matches!(refused, AuthError::TooManyRegistrations { retry_after } if retry_after == Duration::from_secs(540)),
            "{refused:?}"
        );
        let status = tonic::Status::from(refused);
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert_eq!(status.metadata().get("retry-after").unwrap(), "540");
        // A refused registration stores nothing; other clients are not affected.
        assert_eq!(auth.stores.accounts.count().await.unwrap(), 1);
        auth.register("third@example.com", PASSWORD, "third", "2001:db8:7:8::1")
            .await
            .unwrap();
        // Input refused before the limiter is not counted.
        let invalid = auth
            .register("not-an-email", PASSWORD, "fourth", "198.51.100.9")
            .await
            .unwrap_err();
        assert!(matches!(invalid, AuthError::Invalid(_)), "{invalid:?}");
        auth.register("fourth@example.com", PASSWORD, "fourth", "198.51.100.9")
            .await
            .unwrap();
        clock.advance(Duration::from_secs(540));
        auth.register("fifth@example.com", PASSWORD, "fifth", "2001:db8:7:7::3")
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn an_account_without_a_password_cannot_log_in_with_one() {
        let auth = service(LoginLimits::default());
        let account = Account {
            user_id: Uuid::now_v7(),
            email: Some(Email::parse("oauth@example.com").unwrap()),
            nickname: Nickname::parse("oauth_user").unwrap(),
            password_hash: None,
            created_at: Utc::now(),
        };
        let event = messenger_common::events::new_event(Payload::UserRegistered(UserRegistered {
            user_id: account.user_id.to_string(),
            nickname: account.nickname.as_str().to_owned(),
        }));
        auth.stores.accounts.create(&account, &event).await.unwrap();
        let error = auth
            .login("oauth@example.com", PASSWORD, "192.0.2.1")
            .await
            .unwrap_err();
        assert!(matches!(error, AuthError::InvalidCredentials), "{error:?}");
    }

    #[tokio::test]
    async fn a_strangers_wrong_passwords_do_not_lock_the_owner_out() {
        let clock = LimiterClock::manual(1_800_000_000_000);
        let auth = service_with(
            InMemoryLoginAttemptLimiter::new(LoginLimits::default()).with_clock(clock),
        );
        auth.register("owner@example.com", PASSWORD, "owner", "192.0.2.200")
            .await
            .unwrap();
        // A stranger at one IPv4 address, then at fifteen addresses of one IPv6 /64: five
        // guesses each, then they have to wait.
        let ipv4 = vec!["203.0.113.66".to_owned(); 15];
        let ipv6: Vec<String> = (1..=15).map(|n| format!("2001:db8:bad:1::{n:x}")).collect();
        for stranger in [ipv4, ipv6] {
            let mut outcomes = (0, 0);
            for address in &stranger {
                match auth
                    .login("owner@example.com", "a wrong guess", address)
                    .await
                {
                    Err(AuthError::InvalidCredentials) => outcomes.0 += 1,
                    Err(AuthError::TooManyAttempts { .. }) => outcomes.1 += 1,
                    other => panic!("unexpected {other:?}"),
                }
            }
            assert_eq!(outcomes, (5, 10), "{stranger:?}");
        }
        // The owner, at home, is not.
        let issued = auth
            .login("owner@example.com", PASSWORD, "198.51.100.7")
            .await
            .unwrap();
        assert_eq!(
            auth.validate(issued.token.expose()).await.unwrap().user_id,
            issued.session.user_id
        );
    }

    #[tokio::test]
    async fn repeated_failures_from_one_client_wait_longer_each_time_and_success_resets() {
        let clock = LimiterClock::manual(1_800_000_000_000);
        let limits = LoginLimits {
            max_failures_per_account_client: 2,
            ..LoginLimits::default()
        };
        let auth = service_with(InMemoryLoginAttemptLimiter::new(limits).with_clock(clock.clone()));
        auth.register("slow@example.com", PASSWORD, "slow", "192.0.2.200")
            .await
            .unwrap();
        let wrong = "not the password";
        let retry_after = |result: Result<IssuedToken, AuthError>| match result {
            Err(AuthError::TooManyAttempts { retry_after }) => retry_after,
            other => panic!("expected TooManyAttempts, got {other:?}"),
        };
        for _ in 0..2 {
            let error = auth
                .login("slow@example.com", wrong, "c")
                .await
                .unwrap_err();
            assert!(matches!(error, AuthError::InvalidCredentials), "{error:?}");
        }
        // Even the right password waits out the delay from this client, 1 s, then 2 s...
        let first = retry_after(auth.login("slow@example.com", PASSWORD, "c").await);
        assert_eq!(first, Duration::from_secs(1));
        clock.advance(first);
        assert!(auth.login("slow@example.com", wrong, "c").await.is_err());
        let second = retry_after(auth.login("slow@example.com", wrong, "c").await);
        assert_eq!(second, Duration::from_secs(2));
        clock.advance(second);
        // ...and a success forgets this client's failures against the account.
        auth.login("slow@example.com", PASSWORD, "c").await.unwrap();
        for _ in 0..2 {
            let error = auth
                .login("slow@example.com", wrong, "c")
                .await
                .unwrap_err();
            assert!(matches!(error, AuthError::InvalidCredentials), "{error:?}");
        }
        retry_after(auth.login("slow@example.com", wrong, "c").await);
    }

    #[tokio::test]
    async fn an_overlong_login_password_is_refused_before_it_is_hashed_or_counted() {
        let auth = service(LoginLimits {
            max_failures_per_account_client: 1,
            max_failures_per_client: 1,
            max_failures_per_account: 1,
            ..LoginLimits::default()
        });
        auth.register("long@example.com", PASSWORD, "long_pw", "192.0.2.200")
            .await
            .unwrap();
        // Just under gRPC's 4 MiB message limit, and one character over the cap.
        for huge in ["x".repeat(4 * 1024 * 1024 - 64), "é".repeat(129)] {
            let error = auth
                .login("long@example.com", &huge, "192.0.2.1")
                .await
                .unwrap_err();
            assert!(
                matches!(
                    &error,
                    AuthError::Invalid(ValidationError::Password(m)) if *m == PASSWORD_TOO_LONG
                ),
                "{error:?}"
            );
            assert_eq!(
                tonic::Status::from(error).message(),
                "password: must be at most 128 characters"
            );
        }
        // Neither refusal used up the single failure the account and client may have.
        auth.login("long@example.com", PASSWORD, "192.0.2.1")
            .await
            .unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_login_that_times_out_waiting_for_a_hashing_slot_is_not_a_failure() {
        let hour = Duration::from_secs(3600);
        let limits = LoginLimits {
            max_failures_per_account_client: 1,
            max_failures_per_client: 1,
            max_failures_per_account: 1,
            first_delay: hour,
            max_delay: hour,
            ..LoginLimits::default()
        };
        let hasher = PasswordHasher::with_slots(1, 1).unwrap();
        let auth = service_with_hasher(InMemoryLoginAttemptLimiter::new(limits), hasher.clone());
        auth.register("queued@example.com", PASSWORD, "queued", "192.0.2.200")
            .await
            .unwrap();
        // Every login slot is busy: each login queues until its deadline ends it.
        let busy = hasher.login_slot().await.unwrap();
        for attempt in 0..3 {
            let waited = tokio::time::timeout(
                Duration::from_secs(10),
                auth.login("queued@example.com", PASSWORD, "192.0.2.1"),
            )
            .await;
            assert!(waited.is_err(), "attempt {attempt} ended with {waited:?}");
            // The un-counting runs in the background; paused time only moves on once
            // every task is idle, so after this sleep it is done.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        drop(busy);
        // None of the three used up the single failure this client and account may have.
        auth.login("queued@example.com", PASSWORD, "192.0.2.1")
            .await
            .unwrap();
    }
}
