//! Redis: [`connect`] returns a `ConnectionManager`, a cloneable multiplexed connection
//! that reconnects by itself, with connect and response timeouts so a slow Redis fails a
//! request instead of hanging it.

use std::time::Duration;

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::error::Error;

/// Bound on connecting and on each command's response.
pub const REDIS_TIMEOUT: Duration = Duration::from_secs(2);

/// Connects to `url` (`redis://host:6379/0`).
pub async fn connect(url: &str) -> Result<ConnectionManager, Error> {
    let client = ::redis::Client::open(url)?;
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
    /// Where to connect while `connection` is empty (`None` when built connected).
    url: Option<String>,
}

impl LazyConnection {
    /// Connects to `url` on first use. Fails now only when `url` is not a Redis URL.
    pub fn new(url: &str) -> Result<Self, Error> {
        ::redis::Client::open(url)?;
        Ok(Self {
            connection: Default::default(),
            url: Some(url.to_owned()),
        })
    }

    /// Wraps a connection already made.
    pub fn connected(connection: ConnectionManager) -> Self {
        Self {
            connection: std::sync::Arc::new(tokio::sync::OnceCell::new_with(Some(connection))),
            url: None,
        }
    }

    /// The connection, connecting first if no attempt has succeeded yet.
    pub async fn get(&self) -> Result<ConnectionManager, Error> {
        let connection = self
            .connection
            .get_or_try_init(|| connect(self.url.as_deref().unwrap_or_default()))
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
