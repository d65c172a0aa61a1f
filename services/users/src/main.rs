//! `messenger-users`: reads the configuration, binds the listeners and serves until
//! SIGTERM/SIGINT (see `messenger_users::run`).

use std::process::ExitCode;

use messenger_common::{Shutdown, telemetry};
use messenger_users::{Config, Listeners, run};

#[tokio::main]
async fn main() -> ExitCode {
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(error) => {
            eprintln!("messenger-users: {error}");
            return ExitCode::FAILURE;
        }
    };
    telemetry::init("users", config.service.log_format);
    let listeners = match Listeners::bind(&config.service).await {
        Ok(listeners) => listeners,
        Err(error) => {
            tracing::error!(%error, grpc = %config.service.grpc_addr, admin = %config.service.admin_addr, "cannot bind listeners");
            return ExitCode::FAILURE;
        }
    };
    match run(config, listeners, Shutdown::on_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = %error, "users service failed");
            ExitCode::FAILURE
        }
    }
}
