//! `kubectl messenger rollout ...`: reads and steers rollouts. Commands are annotations
//! (promote, promote-full, abort, retry) or spec fields (paused, version) on the
//! MessengerApp, so a GitOps commit of the same change does the same thing; the operator
//! acknowledges each in status and with an Event.

use std::fmt::Write as _;

use clap::{Parser, Subcommand, ValueEnum};
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};

use crate::component::Component;
use crate::crd::{MessengerApp, Slot};
use crate::rollout::{
    ANNOTATION_ABORT, ANNOTATION_PROMOTE, ANNOTATION_PROMOTE_FULL, ANNOTATION_RETRY,
    pending_commands,
};
use crate::simulate::{
    DEFAULT_PROMOTE_AFTER_SECONDS, DEFAULT_READY_AFTER_SECONDS, Scenario, render_text, simulate,
};

/// Any failure, printed as it is: the CLI only reports.
pub type CliResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

#[derive(Parser)]
#[command(name = "kubectl-messenger", about = "Steer MessengerApp rollouts")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Top,
}

#[derive(Subcommand)]
pub enum Top {
    /// Rollouts of a MessengerApp.
    Rollout {
        #[command(subcommand)]
        command: RolloutCommand,
    },
}

#[derive(Subcommand)]
pub enum RolloutCommand {
    /// Slots, versions, replicas, weights, step and analysis of an app.
    Status {
        app: String,
        #[arg(short, long)]
        namespace: Option<String>,
        /// Print again every two seconds.
        #[arg(short, long)]
        watch: bool,
    },
    /// Go past the current pause (canary) or switch now (blue-green); --full skips every
    /// remaining step.
    Promote {
        app: String,
        #[arg(short, long)]
        namespace: Option<String>,
        #[arg(long)]
        full: bool,
    },
    /// All traffic back to the stable slot at once; the new slot is scaled down later.
    Abort {
        app: String,
        #[arg(short, long)]
        namespace: Option<String>,
    },
    /// Hold the rollout where it is (spec.paused = true).
    Pause {
        app: String,
        #[arg(short, long)]
        namespace: Option<String>,
    },
    /// Continue a paused rollout (spec.paused = false).
    Resume {
        app: String,
        #[arg(short, long)]
        namespace: Option<String>,
    },
    /// Start an aborted rollout again.
    Retry {
        app: String,
        #[arg(short, long)]
        namespace: Option<String>,
    },
    /// Roll out a version (the stable one again is an instant rollback).
    SetVersion {
        app: String,
        version: String,
        #[arg(short, long)]
        namespace: Option<String>,
    },
    /// What would happen: the operator's state machine under a simulated clock.
    Simulate {
        /// A MessengerApp manifest (its version is what runs today).
        #[arg(short = 'f', long)]
        file: std::path::PathBuf,
        #[arg(long)]
        to_version: String,
        /// Canary step index whose analysis fails.
        #[arg(long)]
        fail_analysis_at_step: Option<i32>,
        /// A component of the new slot that never becomes Available.
        #[arg(long)]
        unready: Option<String>,
        /// The new slot's migration Jobs fail (with `spec.migrations.enabled`).
        #[arg(long)]
        fail_migration: bool,
        #[arg(short, long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Output {
    Text,
    Json,
}

/// A readable view of an app's rollout.
pub fn render_status(app: &MessengerApp) -> String {
    let mut out = String::new();
    let name = app.metadata.name.clone().unwrap_or_default();
    let Some(status) = &app.status else {
        let _ = writeln!(out, "{name}: no status yet (is the operator running?)");
        return out;
    };
    let phase = status.phase.map(|p| p.as_str()).unwrap_or("-");
    let stable = status.active_slot.unwrap_or_default();
    let _ = writeln!(out, "Name:     {name}");
    let _ = writeln!(out, "Phase:    {phase}");
    let _ = writeln!(out, "Strategy: {:?}", app.spec.strategy.type_);
    let _ = writeln!(
        out,
        "Stable:   {stable} ({})",
        status.stable_version.as_deref().unwrap_or("-")
    );
    if let Some(rollout) = &status.rollout {
        let _ = writeln!(
            out,
            "Rollout:  {} into {} (revision {}), step {}, weight {}",
            rollout.version,
            rollout.candidate,
            rollout.revision,
            rollout.step.as_deref().unwrap_or("-"),
            rollout.weight
        );
        let a = &rollout.analysis;
        let _ = writeln!(
            out,
            "Analysis: {} successful, {} failed, {} inconclusive",
            a.successful, a.failed, a.inconclusive
        );
        if let Some(reason) = &rollout.abort_reason {
            let _ = writeln!(out, "Aborted:  {reason} (all traffic on {stable})");
        }
    }
    // A command whose value the operator has not acknowledged: not carried out yet (a
    // promote waits until the rollout can act on it).
    let pending: Vec<&str> = pending_commands(app, status)
        .into_iter()
        .map(|(name, _)| name.trim_start_matches("messenger.dev/"))
        .collect();
    if !pending.is_empty() {
        let _ = writeln!(
            out,
            "Pending:  {} (not carried out yet)",
            pending.join(", ")
        );
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<6}  {:<9}  {:<16}  {:>6}  {:>8}  REVISION",
        "SLOT", "ROLE", "VERSION", "WEIGHT", "READY"
    );
    for slot in [Slot::Blue, Slot::Green] {
        let Some(record) = status.slots.iter().find(|s| s.name == slot) else {
            continue;
        };
        let (ready, desired) = status
            .components
            .iter()
            .filter(|c| c.slot == slot)
            .fold((0, 0), |(r, d), c| {
                (r + c.ready_replicas, d + c.desired_replicas)
            });
        let role = if record.scaled_down {
            "ScaledDown".to_owned()
        } else {
            format!("{:?}", record.role)
        };
        let _ = writeln!(
            out,
            "{:<6}  {:<9}  {:<16}  {:>6}  {:>8}  {}",
            slot.as_str(),
            role,
            record.version,
            record.weight,
            format!("{ready}/{desired}"),
            record.template_hash
        );
    }
    for record in &status.slots {
        if let Some(migrations) = record.migrations {
            let _ = writeln!(out, "Migrations of {}: {migrations:?}", record.name);
        }
    }
    out
}

fn api(client: &Client, namespace: Option<String>) -> Api<MessengerApp> {
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), &ns),
        None => Api::default_namespaced(client.clone()),
    }
}

async fn merge(api: &Api<MessengerApp>, app: &str, patch: serde_json::Value) -> CliResult {
    api.patch(app, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

/// A command annotation: a fresh value, so the operator sees a new request.
fn command_patch(annotation: &str) -> serde_json::Value {
    let token = k8s_openapi::jiff::Timestamp::now().to_string();
    serde_json::json!({"metadata": {"annotations": {annotation: token}}})
}

/// Runs one command, printing its result.
pub async fn run(cli: Cli) -> CliResult {
    let Top::Rollout { command } = cli.command;
    if let RolloutCommand::Simulate {
        file,
        to_version,
        fail_analysis_at_step,
        unready,
        fail_migration,
        output,
    } = command
    {
        let text =
            std::fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?;
        let app: MessengerApp =
            serde_yaml::from_str(&text).map_err(|e| format!("{}: {e}", file.display()))?;
        let unready = match unready {
            None => None,
            Some(name) => Some(Component::from_name(&name).ok_or_else(|| {
                format!("--unready {name}: not one of gateway, auth, users, friends, chat")
            })?),
        };
        let timeline = simulate(&Scenario {
            app,
            to_version,
            fail_analysis_at_step,
            unready,
            fail_migration,
            ready_after_seconds: DEFAULT_READY_AFTER_SECONDS,
            promote_after_seconds: DEFAULT_PROMOTE_AFTER_SECONDS,
        });
        match output {
            Output::Text => print!("{}", render_text(&timeline)),
            Output::Json => println!("{}", serde_json::to_string_pretty(&timeline)?),
        }
        return Ok(());
    }
    let client = Client::try_default().await?;
    match command {
        RolloutCommand::Status {
            app,
            namespace,
            watch,
        } => {
            let api = api(&client, namespace);
            loop {
                let current = api.get(&app).await?;
                print!("{}", render_status(&current));
                if !watch {
                    break;
                }
                println!();
                tokio::time::sleep(std::time::Duration::from_secs(2)).await;
            }
        }
        RolloutCommand::Promote {
            app,
            namespace,
            full,
        } => {
            let annotation = if full {
                ANNOTATION_PROMOTE_FULL
            } else {
                ANNOTATION_PROMOTE
            };
            merge(&api(&client, namespace), &app, command_patch(annotation)).await?;
            println!(
                "{app}: promote{} requested",
                if full { " --full" } else { "" }
            );
        }
        RolloutCommand::Abort { app, namespace } => {
            merge(
                &api(&client, namespace),
                &app,
                command_patch(ANNOTATION_ABORT),
            )
            .await?;
            println!("{app}: abort requested");
        }
        RolloutCommand::Retry { app, namespace } => {
            merge(
                &api(&client, namespace),
                &app,
                command_patch(ANNOTATION_RETRY),
            )
            .await?;
            println!("{app}: retry requested");
        }
        RolloutCommand::Pause { app, namespace } => {
            merge(
                &api(&client, namespace),
                &app,
                serde_json::json!({"spec": {"paused": true}}),
            )
            .await?;
            println!("{app}: paused");
        }
        RolloutCommand::Resume { app, namespace } => {
            merge(
                &api(&client, namespace),
                &app,
                serde_json::json!({"spec": {"paused": null}}),
            )
            .await?;
            println!("{app}: resumed");
        }
        RolloutCommand::SetVersion {
            app,
            version,
            namespace,
        } => {
            merge(
                &api(&client, namespace),
                &app,
                serde_json::json!({"spec": {"version": version}}),
            )
            .await?;
            println!("{app}: version set to {version}");
        }
        RolloutCommand::Simulate { .. } => unreachable!("handled above"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollout::{Observed, next_state};

    #[test]
    fn status_view_shows_slots_versions_weights_and_the_step() {
        let spec = serde_json::json!({"version": "1.0.0", "strategy": {"type": "Canary", "canary": {"steps": [{"setWeight": 25}, {"pause": {}}]}}});
        let mut app = MessengerApp::new("demo", serde_json::from_value(spec).unwrap());
        let t = |s| {
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::from_second(s).unwrap(),
            )
        };
        app.status = Some(next_state(&app, &Observed::default(), &t(1)).status);
        app.spec.version = "2.0.0".into();
        let status = next_state(&app, &Observed::default(), &t(2)).status;
        let green = status.slots[1].template_hash.clone();
        app.status = Some(status);
        let mut observed = Observed::default();
        observed.slots.insert(
            Slot::Green,
            crate::rollout::SlotObservation {
                deployments: 5,
                revision: Some(green),
                available: 5,
                deadline_exceeded: false,
            },
        );
        app.status = Some(next_state(&app, &observed, &t(3)).status);
        let view = render_status(&app);
        assert!(!view.contains("Pending"), "{view}");
        app.metadata.annotations = Some(
            [(ANNOTATION_PROMOTE.to_owned(), "t1".to_owned())]
                .into_iter()
                .collect(),
        );
        let view = render_status(&app);
        assert!(
            view.contains("Pending:  promote (not carried out yet)"),
            "{view}"
        );
        assert!(view.contains("Stable:   blue (1.0.0)"), "{view}");
        assert!(view.contains("2.0.0 into green"), "{view}");
        assert!(view.contains("step 1/2, weight 25"), "{view}");
        let rows: Vec<&str> = view
            .lines()
            .filter(|l| l.starts_with("blue") || l.starts_with("green"))
            .collect();
        assert!(
            rows[0].contains("Stable") && rows[0].contains("75"),
            "{view}"
        );
        assert!(
            rows[1].contains("Candidate") && rows[1].contains("25"),
            "{view}"
        );
    }
}
