//! `messenger-gateway`: reads the configuration from the environment, starts logging,
//! binds the listeners and serves until SIGTERM/SIGINT.

use std::process::ExitCode;

use messenger_common::{Shutdown, telemetry};
use messenger_gateway::{Config, Listeners, run};

#[tokio::main]
async fn main() -> ExitCode {
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(error) => {
            eprintln!("messenger-gateway: {error}");
            return ExitCode::FAILURE;
        }
    };
    telemetry::init(&config.name, config.log_format);
    let result = async {
        let listeners = Listeners::bind(&config).await?;
        run(config, listeners, Shutdown::on_signal()).await
    }
    .await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "messenger-gateway stopped");
            ExitCode::FAILURE
        }
    }
}
