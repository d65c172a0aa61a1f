//! The `messenger.v1.AuthService` gRPC endpoint: unpacks requests, calls
//! [`AuthService`], maps errors once through `AuthError` → `ServiceError` → `Status`.

use std::net::IpAddr;

use chrono::{DateTime, Utc};
use messenger_common::identity::Caller;
use messenger_proto::v1::auth_service_server;
use messenger_proto::v1::{
    CheckSessionsRequest, CheckSessionsResponse, ListOAuthProvidersRequest,
    ListOAuthProvidersResponse, LoginRequest, LoginResponse, LogoutRequest, LogoutResponse,
    OAuthProvider, OAuthSignInRequest, OAuthSignInResponse, RegisterRequest, RegisterResponse,
    StartOAuthRequest, StartOAuthResponse, UnlinkOAuthRequest, UnlinkOAuthResponse,
    ValidateTokenRequest, ValidateTokenResponse, o_auth_sign_in_response,
};
use tonic::{Request, Response, Status};

use crate::service::{AuthService, IssuedToken, OAuthCallback, OAuthOutcome};

/// Most digests one `CheckSessions` call may ask about.
pub const MAX_CHECKED_SESSIONS: usize = 1000;

/// Metadata key the gateway sets to the end user's address.
pub const CLIENT_IP_METADATA: &str = "x-client-ip";

pub struct AuthGrpc {
    service: AuthService,
}

impl AuthGrpc {
    pub fn new(service: AuthService) -> Self {
        Self { service }
    }

    pub fn into_server(self) -> auth_service_server::AuthServiceServer<Self> {
        auth_service_server::AuthServiceServer::new(self)
    }
}

/// The only caller whose `x-client-ip` is believed.
pub const GATEWAY: &str = "gateway";

/// The end user's address (for the per-client login and registration limits):
/// `x-client-ip` when the verified caller is the gateway and it
/// holds an IP address, else the peer of the connection. Anyone else could pick a fresh
/// address per attempt and escape the per-client login limit.
pub fn client_address<T>(request: &Request<T>) -> String {
    let is_gateway = matches!(
        messenger_common::identity::caller(request),
        Some(Caller::Service(name)) if name == GATEWAY
    );
    let from_gateway = is_gateway
        .then(|| request.metadata().get(CLIENT_IP_METADATA))
        .flatten()
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse::<IpAddr>().ok());
    from_gateway
        .or_else(|| request.remote_addr().map(|addr| addr.ip()))
        .map_or_else(|| "unknown".to_owned(), |ip| ip.to_string())
}

/// Ok when the verified caller is the gateway.
fn require_gateway<T>(request: &Request<T>, what: &str) -> Result<(), Status> {
    match messenger_common::identity::caller(request) {
        Some(Caller::Service(name)) if name == GATEWAY => Ok(()),
        _ => Err(Status::unauthenticated(format!(
            "only the gateway may {what}"
        ))),
    }
}

fn login_response(issued: &IssuedToken) -> LoginResponse {
    LoginResponse {
        access_token: issued.token.expose().to_owned(),
        token_type: "Bearer".to_owned(),
        expires_at: Some(timestamp(issued.session.expires_at)),
        user_id: issued.session.user_id.to_string(),
    }
}

fn timestamp(at: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: at.timestamp(),
        nanos: i32::try_from(at.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

#[tonic::async_trait]
impl auth_service_server::AuthService for AuthGrpc {
    async fn register(
        &self,
        request: Request<RegisterRequest>,
    ) -> Result<Response<RegisterResponse>, Status> {
        let client = client_address(&request);
        let request = request.into_inner();
        let user_id = self
            .service
            .register(
                &request.email,
                &request.password,
                &request.nickname,
                &client,
            )
            .await?;
        Ok(Response::new(RegisterResponse {
            user_id: user_id.to_string(),
        }))
    }

    async fn login(
        &self,
        request: Request<LoginRequest>,
    ) -> Result<Response<LoginResponse>, Status> {
        let client = client_address(&request);
        let request = request.into_inner();
        let issued = self
            .service
            .login(&request.email, &request.password, &client)
            .await?;
        Ok(Response::new(login_response(&issued)))
    }

    async fn logout(
        &self,
        request: Request<LogoutRequest>,
    ) -> Result<Response<LogoutResponse>, Status> {
        self.service
            .logout(&request.into_inner().access_token)
            .await?;
        Ok(Response::new(LogoutResponse {}))
    }

    async fn validate_token(
        &self,
        request: Request<ValidateTokenRequest>,
    ) -> Result<Response<ValidateTokenResponse>, Status> {
        let session = self
            .service
            .validate(&request.into_inner().access_token)
            .await?;
        Ok(Response::new(ValidateTokenResponse {
            user_id: session.user_id.to_string(),
            expires_at: Some(timestamp(session.expires_at)),
        }))
    }

    async fn check_sessions(
        &self,
        request: Request<CheckSessionsRequest>,
    ) -> Result<Response<CheckSessionsResponse>, Status> {
        // Which tokens are alive is the gateway's business only.
        require_gateway(&request, "check sessions")?;
        let digests = request.into_inner().token_digests;
        if digests.len() > MAX_CHECKED_SESSIONS {
            return Err(Status::invalid_argument(format!(
                "token_digests: at most {MAX_CHECKED_SESSIONS} per call"
            )));
        }
        let ended = self.service.ended_sessions(&digests).await?;
        Ok(Response::new(CheckSessionsResponse { ended }))
    }

    async fn list_o_auth_providers(
        &self,
        _request: Request<ListOAuthProvidersRequest>,
    ) -> Result<Response<ListOAuthProvidersResponse>, Status> {
        let providers = self
            .service
            .oauth_providers()
            .into_iter()
            .map(|provider| OAuthProvider {
                kind: provider.kind.label().to_owned(),
                name: provider.name,
                display_name: provider.display_name,
            })
            .collect();
        Ok(Response::new(ListOAuthProvidersResponse { providers }))
    }

    async fn start_o_auth(
        &self,
        request: Request<StartOAuthRequest>,
    ) -> Result<Response<StartOAuthResponse>, Status> {
        // A signed-in user links; the gateway itself starts a sign-in.
        let link_user = match messenger_common::identity::caller(&request) {
            Some(Caller::User(user_id)) => Some(*user_id),
            Some(Caller::Service(name)) if name == GATEWAY => None,
            _ => {
                return Err(Status::unauthenticated(
                    "only the gateway or a signed-in user may start an OAuth flow",
                ));
            }
        };
        let started = self
            .service
            .start_oauth(&request.into_inner().provider, link_user)
            .await?;
        Ok(Response::new(StartOAuthResponse {
            authorization_url: started.authorization_url.to_string(),
            flow_id: started.flow_id.expose().to_owned(),
            expires_at: Some(timestamp(started.expires_at)),
        }))
    }

    async fn o_auth_sign_in(
        &self,
        request: Request<OAuthSignInRequest>,
    ) -> Result<Response<OAuthSignInResponse>, Status> {
        require_gateway(&request, "complete an OAuth flow")?;
        let request = request.into_inner();
        let outcome = self
            .service
            .finish_oauth(OAuthCallback {
                provider: &request.provider,
                flow_id: &request.flow_id,
                state: &request.state,
                code: &request.code,
                error: &request.error,
                error_description: &request.error_description,
            })
            .await?;
        let response = match outcome {
            OAuthOutcome::SignedIn { issued, created } => OAuthSignInResponse {
                outcome: Some(o_auth_sign_in_response::Outcome::SignedIn(login_response(
                    &issued,
                ))),
                created,
            },
            OAuthOutcome::Linked { user_id } => OAuthSignInResponse {
                outcome: Some(o_auth_sign_in_response::Outcome::LinkedUserId(
                    user_id.to_string(),
                )),
                created: false,
            },
        };
        Ok(Response::new(response))
    }

    async fn unlink_o_auth(
        &self,
        request: Request<UnlinkOAuthRequest>,
    ) -> Result<Response<UnlinkOAuthResponse>, Status> {
        let Some(Caller::User(user_id)) = messenger_common::identity::caller(&request).cloned()
        else {
            return Err(Status::unauthenticated(
                "only a signed-in user may unlink a provider",
            ));
        };
        self.service
            .unlink_oauth(user_id, &request.into_inner().provider)
            .await?;
        Ok(Response::new(UnlinkOAuthResponse {}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_client_ip(caller: Option<Caller>, ip: &str) -> Request<()> {
        let mut request = Request::new(());
        request
            .metadata_mut()
            .insert(CLIENT_IP_METADATA, ip.parse().unwrap());
        if let Some(caller) = caller {
            request.extensions_mut().insert(caller);
        }
        request
    }

    #[test]
    fn client_address_believes_the_header_only_from_the_gateway_and_only_an_ip() {
        let gateway = || Some(Caller::Service(GATEWAY.into()));
        assert_eq!(
            client_address(&with_client_ip(gateway(), "203.0.113.7")),
            "203.0.113.7"
        );
        assert_eq!(
            client_address(&with_client_ip(gateway(), "not an address")),
            "unknown"
        );
        for other in [
            None,
            Some(Caller::Service("chat".into())),
            Some(Caller::User(uuid::Uuid::new_v4())),
        ] {
            assert_eq!(
                client_address(&with_client_ip(other.clone(), "203.0.113.7")),
                "unknown",
                "{other:?}"
            );
        }
    }
}
