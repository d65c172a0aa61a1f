//! The five components of a track: their ports and what each one needs wired.

use crate::crd::{ComponentSpec, MessengerAppSpec};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Component {
    Gateway,
    Auth,
    Users,
    Friends,
    Chat,
}

impl Component {
    pub const ALL: [Component; 5] = [
        Component::Gateway,
        Component::Auth,
        Component::Users,
        Component::Friends,
        Component::Chat,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Component::Gateway => "gateway",
            Component::Auth => "auth",
            Component::Users => "users",
            Component::Friends => "friends",
            Component::Chat => "chat",
        }
    }

    /// Port of the component's API: REST for the gateway, gRPC for the others.
    pub fn api_port(self) -> i32 {
        match self {
            Component::Gateway => 8080,
            Component::Auth => 8001,
            Component::Chat => 8002,
            Component::Friends => 8003,
            Component::Users => 8004,
        }
    }

    /// Port of `/healthz`, `/readyz` and `/metrics`.
    pub fn admin_port(self) -> i32 {
        match self {
            Component::Gateway => 9080,
            Component::Auth => 9001,
            Component::Chat => 9002,
            Component::Friends => 9003,
            Component::Users => 9004,
        }
    }

    /// Name of the API port in Deployments and Services.
    pub fn api_port_name(self) -> &'static str {
        match self {
            Component::Gateway => "http",
            _ => "grpc",
        }
    }

    /// The listen-address variable of the API port.
    pub fn api_addr_env(self) -> &'static str {
        match self {
            Component::Gateway => "HTTP_ADDR",
            _ => "GRPC_ADDR",
        }
    }

    /// The variable other components read this component's address from (`None` for the
    /// gateway, which nothing inside the track calls).
    pub fn peer_url_env(self) -> Option<&'static str> {
        match self {
            Component::Gateway => None,
            Component::Auth => Some("AUTH_URL"),
            Component::Users => Some("USERS_URL"),
            Component::Friends => Some("FRIENDS_URL"),
            Component::Chat => Some("CHAT_URL"),
        }
    }

    pub fn uses_postgres(self) -> bool {
        matches!(
            self,
            Component::Auth | Component::Users | Component::Friends
        )
    }

    /// Every component: the gateway's replicas share their token cache's revocations
    /// through it (without it each request asks auth).
    pub fn uses_redis(self) -> bool {
        true
    }

    /// Every component: four publish or consume domain events, and each gateway replica
    /// consumes all of them to fan real-time events out to its clients.
    pub fn uses_kafka(self) -> bool {
        true
    }

    pub fn uses_mongodb(self) -> bool {
        matches!(self, Component::Chat)
    }

    pub fn spec(self, spec: &MessengerAppSpec) -> &ComponentSpec {
        let c = &spec.components;
        match self {
            Component::Gateway => &c.gateway,
            Component::Auth => &c.auth,
            Component::Users => &c.users,
            Component::Friends => &c.friends,
            Component::Chat => &c.chat,
        }
    }

    pub fn from_name(name: &str) -> Option<Component> {
        Component::ALL.into_iter().find(|c| c.name() == name)
    }
}

impl std::fmt::Display for Component {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Variables the operator sets itself; a component's extra `env` must not redefine them.
pub const WIRED_ENV: [&str; 16] = [
    "GRPC_ADDR",
    "HTTP_ADDR",
    "ADMIN_ADDR",
    "DATABASE_URL",
    "REDIS_URL",
    "KAFKA_BROKERS",
    "MONGODB_URI",
    "CHAT_STORE",
    "AUTH_URL",
    "USERS_URL",
    "FRIENDS_URL",
    "CHAT_URL",
    "LOG_FORMAT",
    "RUST_LOG",
    "INTERNAL_AUTH_KEY",
    "MIGRATE_ON_START",
];

/// The variable every component reads the app's shared internal-trust key from.
pub const INTERNAL_AUTH_KEY_ENV: &str = "INTERNAL_AUTH_KEY";
