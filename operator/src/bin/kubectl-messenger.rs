//! `kubectl-messenger`: `kubectl messenger rollout status|promote|abort|pause|resume|retry|
//! set-version|simulate`.

use clap::Parser;
use messenger_operator::cli::{Cli, run};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    if let Err(error) = run(Cli::parse()).await {
        eprintln!("kubectl-messenger: {error}");
        std::process::exit(1);
    }
}
