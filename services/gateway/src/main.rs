//! `messenger-gateway`: the REST gateway until SIGTERM/SIGINT (see [`messenger_common::service::main`]).

#[tokio::main]
async fn main() -> std::process::ExitCode {
    messenger_common::service::main::<messenger_gateway::Service>().await
}
