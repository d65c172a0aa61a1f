//! The `messenger.v1.AuthService` gRPC endpoint: unpacks requests, calls
//! [`AuthService`], maps errors once through `AuthError` → `ServiceError` → `Status`.

use std::net::IpAddr;

use chrono::{DateTime, Utc};
use messenger_common::identity::Caller;
use messenger_proto::v1::auth_service_server;
use messenger_proto::v1::{
    CheckSessionsRequest, CheckSessionsResponse, LoginRequest, LoginResponse, LogoutRequest,
    LogoutResponse, OAuthSignInRequest, RegisterRequest, RegisterResponse, ValidateTokenRequest,
    ValidateTokenResponse,
};
use tonic::{Request, Response, Status};

use crate::error::AuthError;
use crate::service::AuthService;

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
        Ok(Response::new(LoginResponse {
            access_token: issued.token.expose().to_owned(),
            token_type: "Bearer".to_owned(),
            expires_at: Some(timestamp(issued.session.expires_at)),
            user_id: issued.session.user_id.to_string(),
        }))
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
        match messenger_common::identity::caller(&request) {
            Some(Caller::Service(name)) if name == GATEWAY => {}
            _ => {
                return Err(Status::unauthenticated(
                    "only the gateway may check sessions",
                ));
            }
        }
        let digests = request.into_inner().token_digests;
        if digests.len() > MAX_CHECKED_SESSIONS {
            return Err(Status::invalid_argument(format!(
                "token_digests: at most {MAX_CHECKED_SESSIONS} per call"
            )));
        }
        let ended = self.service.ended_sessions(&digests).await?;
        Ok(Response::new(CheckSessionsResponse { ended }))
    }

    async fn o_auth_sign_in(
        &self,
        _request: Request<OAuthSignInRequest>,
    ) -> Result<Response<LoginResponse>, Status> {
        Err(AuthError::OAuthNotImplemented.into())
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
