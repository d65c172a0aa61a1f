//! `messenger-friends`: reads the configuration, starts logging, binds the listeners and
//! runs the friends service until SIGTERM/SIGINT.

use std::process::ExitCode;

use messenger_common::{Shutdown, telemetry};
use messenger_friends::{Config, Listeners, run};

#[tokio::main]
async fn main() -> ExitCode {
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(error) => {
            eprintln!("messenger-friends: {error}");
            return ExitCode::FAILURE;
        }
    };
    telemetry::init("friends", config.service.log_format);
    let listeners = match Listeners::bind(&config.service).await {
        Ok(listeners) => listeners,
        Err(error) => {
            tracing::error!(%error, "cannot bind the listeners");
            return ExitCode::FAILURE;
        }
    };
    match run(config, listeners, Shutdown::on_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "friends service failed");
            ExitCode::FAILURE
        }
    }
}
