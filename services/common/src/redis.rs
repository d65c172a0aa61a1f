//! Redis: [`connect`] returns a `ConnectionManager`, a cloneable multiplexed connection
//! that reconnects by itself, with connect and response timeouts so a slow Redis fails a
//! request instead of hanging it. [`RedisConfig`] says where Redis is: a `redis://` URL,
//! or a `rediss://` URL (TLS) whose server certificate is checked against
//! `REDIS_TLS_CA_FILE` (the system's roots when unset) and the URL's host name.

use std::path::PathBuf;
use std::time::Duration;

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::{Client, TlsCertificates};

use crate::config::{ConfigError, SecretUrl};
use crate::error::Error;

/// Bound on connecting and on each command's response.
pub const REDIS_TIMEOUT: Duration = Duration::from_secs(2);

/// Where Redis is and how to trust it: `REDIS_URL` plus `REDIS_TLS_CA_FILE`. A plain URL
/// string converts into one without a CA of its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisConfig {
    /// `redis://[:password@]host:port/db` or `rediss://...` for TLS.
    pub url: SecretUrl,
    /// PEM CA for a `rediss://` server (`REDIS_TLS_CA_FILE`).
    pub ca_file: Option<PathBuf>,
}

impl RedisConfig {
    /// `url` with the server certificate checked against `ca_file` (TLS only).
    pub fn new(url: impl Into<SecretUrl>, ca_file: Option<PathBuf>) -> Self {
        Self {
            url: url.into(),
            ca_file,
        }
    }

    /// A client for these settings. Refuses a CA with a `redis://` URL: the deployment
    /// asked for TLS, and connecting in clear text would silently ignore that.
    pub fn client(&self) -> Result<Client, Error> {
        let url = self.url.expose();
        let Some(ca_file) = &self.ca_file else {
            return Ok(Client::open(url)?);
        };
        if !url.starts_with("rediss://") {
            return Err(ConfigError::invalid(
                "REDIS_TLS_CA_FILE",
                &ca_file.display().to_string(),
                format!(
                    "is set, but REDIS_URL ({}) is not a rediss:// (TLS) URL",
                    self.url
                ),
            )
            .into());
        }
        let root_cert = std::fs::read(ca_file).map_err(|e| {
            ConfigError::invalid(
                "REDIS_TLS_CA_FILE",
                &ca_file.display().to_string(),
                format!("cannot read the file: {e}"),
            )
        })?;
        let certificates = TlsCertificates {
            client_tls: None,
            root_cert: Some(root_cert),
        };
        Ok(Client::build_with_tls(url, certificates)?)
    }
}

impl From<&str> for RedisConfig {
    fn from(url: &str) -> Self {
        Self::new(url, None)
    }
}

impl From<&String> for RedisConfig {
    fn from(url: &String) -> Self {
        Self::new(url.as_str(), None)
    }
}

impl From<String> for RedisConfig {
    fn from(url: String) -> Self {
        Self::new(url, None)
    }
}

impl From<&RedisConfig> for RedisConfig {
    fn from(config: &RedisConfig) -> Self {
        config.clone()
    }
}

/// Connects to `redis` (a [`RedisConfig`], or a plain `redis://host:6379/0`).
pub async fn connect(redis: impl Into<RedisConfig>) -> Result<ConnectionManager, Error> {
    connect_client(redis.into().client()?).await
}

async fn connect_client(client: Client) -> Result<ConnectionManager, Error> {
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(REDIS_TIMEOUT))
        .set_response_timeout(Some(REDIS_TIMEOUT))
        .set_number_of_retries(3);
    Ok(ConnectionManager::new_with_config(client, config).await?)
}

/// A Redis connection opened on first use, for services that use Redis only as a cache:
/// they start and serve from their store while Redis is down. Until a connection is
/// made, every [`LazyConnection::get`] tries again (and fails fast); once made, the
/// `ConnectionManager` reconnects by itself. Cheap to clone; clones share the connection.
#[derive(Clone)]
pub struct LazyConnection {
    connection: std::sync::Arc<tokio::sync::OnceCell<ConnectionManager>>,
    /// What to connect while `connection` is empty (`None` when built connected).
    client: Option<Client>,
}

impl LazyConnection {
    /// Connects to `redis` on first use. Fails now only when the settings are unusable
    /// (not a Redis URL, a CA that cannot be read or given without TLS).
    pub fn new(redis: impl Into<RedisConfig>) -> Result<Self, Error> {
        Ok(Self {
            connection: Default::default(),
            client: Some(redis.into().client()?),
        })
    }

    /// Wraps a connection already made.
    pub fn connected(connection: ConnectionManager) -> Self {
        Self {
            connection: std::sync::Arc::new(tokio::sync::OnceCell::new_with(Some(connection))),
            client: None,
        }
    }

    /// The connection, connecting first if no attempt has succeeded yet.
    pub async fn get(&self) -> Result<ConnectionManager, Error> {
        let connection = self
            .connection
            .get_or_try_init(|| async {
                let client = self.client.clone().ok_or_else(|| {
                    Error::Other("a Redis connection built connected has no client".into())
                })?;
                connect_client(client).await
            })
            .await?;
        Ok(connection.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lazy_connection_rejects_a_malformed_url_at_once() {
        assert!(LazyConnection::new("http://not-redis").is_err());
        assert!(LazyConnection::new("redis://127.0.0.1:6379/0").is_ok());
    }

    #[tokio::test]
    async fn a_lazy_connection_fails_while_redis_is_unreachable_and_retries_on_each_use() {
        // Nothing listens on port 1.
        let lazy = LazyConnection::new("redis://127.0.0.1:1/0").unwrap();
        assert!(lazy.get().await.is_err());
        assert!(
            lazy.get().await.is_err(),
            "a failed attempt is not remembered"
        );
    }
}
