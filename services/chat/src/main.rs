//! `messenger-chat`: reads the configuration, starts logging, binds the listeners and
//! runs the chat service until SIGTERM/SIGINT.

use messenger_chat::{ChatError, Config, Listeners, run};
use messenger_common::Shutdown;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(error) => {
            eprintln!("messenger-chat: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    messenger_common::telemetry::init("chat", config.service.log_format);
    let result = async {
        let listeners = Listeners::bind(&config.service)
            .await
            .map_err(|error| ChatError::Runtime(error.into()))?;
        run(config, listeners, Shutdown::on_signal()).await
    }
    .await;
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "messenger-chat stopped");
            std::process::ExitCode::FAILURE
        }
    }
}
