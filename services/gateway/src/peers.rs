//! The internal services the gateway calls, and how every call is dressed: the deadline
//! left on the REST request (`grpc-timeout`), the request id and trace context, the end
//! user's address (for auth's login limits), and a signed assertion of who acts — the
//! user the token named, or the gateway itself for calls made before anyone is known.

use std::sync::Arc;
use std::time::Duration;

use messenger_common::admin::{Gate, ReadinessCheck};
use messenger_common::grpc::{GrpcTls, connect_channel_with_tls};
use messenger_common::identity::{Caller, InternalKey, attach};
use messenger_proto::v1::auth_service_client::AuthServiceClient;
use messenger_proto::v1::chat_service_client::ChatServiceClient;
use messenger_proto::v1::friends_service_client::FriendsServiceClient;
use messenger_proto::v1::users_service_client::UsersServiceClient;
use tonic::transport::Channel;
use uuid::Uuid;

use crate::config::PeersConfig;
use crate::error::ApiError;
use crate::middleware::current_context;

/// How the gateway signs its own calls (register, login, token checks).
pub const GATEWAY_SERVICE: &str = "gateway";

/// Clients of the four services; cheap to clone.
#[derive(Clone)]
pub struct Peers {
    pub auth: AuthServiceClient<Channel>,
    pub users: UsersServiceClient<Channel>,
    pub friends: FriendsServiceClient<Channel>,
    pub chat: ChatServiceClient<Channel>,
    channels: Arc<[(&'static str, Channel)]>,
    key: InternalKey,
    timeout: Duration,
}

impl Peers {
    /// Lazily connected channels (start-up does not wait for the services).
    pub fn connect(
        config: &PeersConfig,
        key: InternalKey,
        timeout: Duration,
    ) -> Result<Self, ApiError> {
        Self::connect_with_tls(config, &GrpcTls::default(), key, timeout)
    }

    /// [`Peers::connect`] with `https://` peers checked against `tls`'s CA.
    pub fn connect_with_tls(
        config: &PeersConfig,
        tls: &GrpcTls,
        key: InternalKey,
        timeout: Duration,
    ) -> Result<Self, ApiError> {
        let channel = |url: &str| {
            connect_channel_with_tls(url, timeout, tls)
                .map_err(|e| ApiError::internal(format!("{url}: {e}")))
        };
        let (auth, users, friends, chat) = (
            channel(&config.auth_url)?,
            channel(&config.users_url)?,
            channel(&config.friends_url)?,
            channel(&config.chat_url)?,
        );
        Ok(Self {
            auth: AuthServiceClient::new(auth.clone()),
            users: UsersServiceClient::new(users.clone()),
            friends: FriendsServiceClient::new(friends.clone()),
            chat: ChatServiceClient::new(chat.clone()),
            channels: Arc::new([
                ("auth", auth),
                ("users", users),
                ("friends", friends),
                ("chat", chat),
            ]),
            key,
            timeout,
        })
    }

    /// A request made on behalf of `user`.
    pub fn as_user<T>(&self, user: Uuid, message: T) -> tonic::Request<T> {
        self.request(&Caller::User(user), message)
    }

    /// A request made by the gateway itself.
    pub fn as_gateway<T>(&self, message: T) -> tonic::Request<T> {
        self.request(&Caller::Service(GATEWAY_SERVICE.to_owned()), message)
    }

    fn request<T>(&self, caller: &Caller, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        attach(&mut request, &self.key, caller);
        let context = current_context();
        let timeout = context
            .as_ref()
            .map_or(self.timeout, |c| {
                c.deadline
                    .saturating_duration_since(tokio::time::Instant::now())
                    .min(self.timeout)
            })
            .max(Duration::from_millis(1));
        request.set_timeout(timeout);
        if let Some(context) = context {
            let metadata = request.metadata_mut();
            if let Ok(value) = context.request_id.parse() {
                metadata.insert(crate::middleware::REQUEST_ID, value);
            }
            if let Some(value) = context.traceparent.and_then(|t| t.parse().ok()) {
                metadata.insert(messenger_common::grpc::TRACEPARENT_METADATA, value);
            }
            if let Some(value) = context.client_ip.and_then(|ip| ip.to_string().parse().ok()) {
                metadata.insert("x-client-ip", value);
            }
        }
        request
    }

    /// One readiness check per service: its gRPC health service answers SERVING.
    pub fn readiness(&self) -> Vec<Arc<dyn ReadinessCheck>> {
        self.channels
            .iter()
            .map(|(name, channel)| {
                Arc::new(PeerReadiness {
                    name,
                    channel: channel.clone(),
                }) as Arc<dyn ReadinessCheck>
            })
            .collect()
    }
}

struct PeerReadiness {
    name: &'static str,
    channel: Channel,
}

#[messenger_common::async_trait]
impl ReadinessCheck for PeerReadiness {
    fn name(&self) -> &str {
        self.name
    }

    /// A peer that goes away later gets its callers 503s from here (the gateway staying in
    /// its Service), not a front door with no endpoints.
    fn gate(&self) -> Gate {
        Gate::StartUp
    }

    async fn check(&self) -> Result<(), String> {
        use tonic_health::pb::health_check_response::ServingStatus;
        use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
        let response = HealthClient::new(self.channel.clone())
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .map_err(|status| format!("{}: {}", status.code(), status.message()))?;
        match response.into_inner().status() {
            ServingStatus::Serving => Ok(()),
            other => Err(format!("{other:?}")),
        }
    }
}
