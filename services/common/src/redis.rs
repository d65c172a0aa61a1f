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
