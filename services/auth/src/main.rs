//! `messenger-auth`: reads the configuration from the environment, starts logging, binds
//! the listeners and runs the service until SIGTERM/SIGINT.

use std::process::ExitCode;

use messenger_auth::{Config, Listeners, run};
use messenger_common::{Shutdown, telemetry};

#[tokio::main]
async fn main() -> ExitCode {
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(error) => {
            eprintln!("messenger-auth: {error}");
            return ExitCode::FAILURE;
        }
    };
    telemetry::init(&config.service.name, config.service.log_format);
    let result = async {
        let listeners = Listeners::bind(&config.service).await?;
        run(config, listeners, Shutdown::on_signal()).await
    }
    .await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "messenger-auth stopped");
            ExitCode::FAILURE
        }
    }
}
