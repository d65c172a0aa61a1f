//! `messenger`: `messenger dev` runs the whole messenger in one process for a first try;
//! `messenger rollout ...` steers MessengerApp rollouts on a cluster (the same commands
//! as `kubectl messenger rollout ...`).

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use messenger_operator::cli::{Cli as RolloutCli, RolloutCommand, Top};

mod dev;
mod seed;

#[derive(Parser)]
#[command(
    name = "messenger",
    version,
    about = "The messenger: run it, or roll it out"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Gateway, auth, users, friends and chat in one process, in memory unless told
    /// where the real stores are.
    Dev(dev::DevArgs),
    /// Rollouts of a MessengerApp on the current cluster.
    Rollout {
        #[command(subcommand)]
        command: RolloutCommand,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Dev(args) => match dev::run(args).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("messenger dev: {error}");
                ExitCode::FAILURE
            }
        },
        Command::Rollout { command } => {
            let cli = RolloutCli {
                command: Top::Rollout { command },
            };
            match messenger_operator::cli::run(cli).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("messenger rollout: {error}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
