//! What-if: the rollout state machine under a simulated clock, readiness and analysis, as
//! `kubectl messenger rollout simulate` prints it. Nothing here talks to a cluster; the same
//! `next_state` the controller runs decides every step.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use serde::Serialize;

use crate::builders::{canary_scale_of, canary_scaled_replicas};
use crate::builders::{migrating_components, migration_job_name};
use crate::component::Component;
use crate::crd::{
    MessengerApp, MessengerAppStatus, MigrationPhase, SetCanaryScale, Slot, SlotStatus,
};
use crate::rollout::{
    ANNOTATION_PROMOTE, Decision, JobState, Observed, RolloutAction, SlotObservation, Verdict,
    next_state,
};

/// Seconds until the simulated rollout's next event, for a table a person reads.
pub const DEFAULT_READY_AFTER_SECONDS: i64 = 30;
pub const DEFAULT_PROMOTE_AFTER_SECONDS: i64 = 60;
/// Seconds the migration Jobs of a slot take (`spec.migrations.enabled`).
pub const MIGRATION_SECONDS: i64 = 10;

/// The conditions of one simulated rollout.
#[derive(Clone, Debug)]
pub struct Scenario {
    /// The app as it runs now (its spec is the stable version).
    pub app: MessengerApp,
    pub to_version: String,
    /// Canary step index (0-based, as in `status.rollout.stepIndex`) whose analysis fails.
    pub fail_analysis_at_step: Option<i32>,
    /// A component of the new slot that never becomes Available.
    pub unready: Option<Component>,
    /// The new slot's migration Jobs fail (with `spec.migrations.enabled`).
    pub fail_migration: bool,
    /// Seconds the new slot needs to become Available.
    pub ready_after_seconds: i64,
    /// Seconds a person takes to `promote` a rollout that waits for one.
    pub promote_after_seconds: i64,
}

/// One line of the timeline.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Moment {
    pub at_seconds: i64,
    pub phase: String,
    pub stable: Slot,
    pub step: Option<String>,
    /// Traffic percent per slot.
    pub weights: BTreeMap<Slot, i32>,
    /// Pods per slot (all five components).
    pub replicas: BTreeMap<Slot, i32>,
    pub actions: Vec<String>,
}

const EPOCH: i64 = 1_700_000_000;
/// A rollout that has not settled in a day is reported as stuck.
const HORIZON_SECONDS: i64 = 24 * 3600;

fn time(second: i64) -> Time {
    Time(Timestamp::from_second(EPOCH + second).unwrap_or(Timestamp::UNIX_EPOCH))
}

/// Pods of all five components of `record`'s slot, as the builders render them.
fn replicas(status: &MessengerAppStatus, record: &SlotStatus) -> i32 {
    let migrated = matches!(record.migrations, None | Some(MigrationPhase::Succeeded));
    if record.scaled_down || !migrated {
        return 0;
    }
    let scale = canary_scale_of(status, record.name);
    record.template.as_ref().map_or(0, |t| {
        Component::ALL
            .into_iter()
            .map(|c| {
                let full = match c {
                    Component::Gateway => t.components.gateway.replicas,
                    Component::Auth => t.components.auth.replicas,
                    Component::Users => t.components.users.replicas,
                    Component::Friends => t.components.friends.replicas,
                    Component::Chat => t.components.chat.replicas,
                };
                scale.map_or(full, |(scale, weight)| {
                    canary_scaled_replicas(scale, full, weight)
                })
            })
            .sum()
    })
}

/// `replicas 2`, `weight 25%`, `matching the traffic weight`.
pub fn describe_scale(scale: &SetCanaryScale) -> String {
    match (scale.replicas, scale.weight) {
        (Some(replicas), _) => format!("replicas {replicas}"),
        (None, Some(weight)) => format!("weight {weight}%"),
        (None, None) => "matching the traffic weight".to_owned(),
    }
}

fn describe(action: &RolloutAction) -> String {
    match action {
        RolloutAction::RecoveredActiveSlot(slot) => format!("recovered active slot {slot}"),
        RolloutAction::AdoptedStableRevision(rev) => format!("adopted revision {rev}"),
        RolloutAction::Started { candidate, .. } => format!("start rollout into {candidate}"),
        RolloutAction::Restarted { .. } => "restart rollout".to_owned(),
        RolloutAction::SetWeight(w) => format!("set weight {w}"),
        RolloutAction::SetCanaryScale(scale) => {
            format!("set canary scale: {}", describe_scale(scale))
        }
        RolloutAction::CanaryScaleReset => "scale candidate back to full".to_owned(),
        RolloutAction::Paused(why) => format!("paused ({why})"),
        RolloutAction::Promoted { stable } => format!("promote: {stable} is stable"),
        RolloutAction::Aborted(reason) => format!("abort: {reason}"),
        RolloutAction::Retried => "retry".to_owned(),
        RolloutAction::RolledBack => "roll back".to_owned(),
        RolloutAction::ScaledDown(slot) => format!("scale {slot} to zero"),
        RolloutAction::Acknowledged(c) => format!("acknowledged {c}"),
        RolloutAction::Ignored(why) => format!("ignored: {why}"),
        RolloutAction::Analysis(verdict) => format!("analysis {verdict:?}"),
        RolloutAction::MigrationsSucceeded(slot) => format!("migrations of {slot} succeeded"),
        RolloutAction::MigrationFailed { slot, job } => {
            format!("migration of {slot} failed ({job})")
        }
    }
}

fn phase(decision: &Decision) -> &'static str {
    match &decision.status.rollout {
        Some(r) if r.abort_reason.is_some() => "Degraded",
        _ if decision.paused => "Paused",
        Some(_) => "Progressing",
        None => "Healthy",
    }
}

/// Runs the scenario until the rollout settles (promoted and old slot scaled down, or
/// aborted and the failed slot scaled down) and returns what happened, moment by moment.
pub fn simulate(scenario: &Scenario) -> Vec<Moment> {
    let mut app = scenario.app.clone();
    app.metadata.annotations.get_or_insert_with(BTreeMap::new);
    let mut observed = Observed::default();
    // The stable slot as it runs today (its migrations, if any, long done).
    let mut first = next_state(&app, &observed, &time(0));
    for record in &mut first.status.slots {
        if record.migrations.is_some() {
            record.migrations = Some(MigrationPhase::Succeeded);
        }
    }
    app.status = Some(first.status);
    let stable = app
        .status
        .as_ref()
        .and_then(|s| s.active_slot)
        .unwrap_or_default();
    let stable_revision = app
        .status
        .as_ref()
        .and_then(|s| s.slots.first())
        .map(|s| s.template_hash.clone());
    observed.entry_slot = Some(stable);
    app.spec.version = scenario.to_version.clone();

    let mut timeline = Vec::new();
    let mut now = 0;
    // When each slot's Deployments were (re)rendered at a revision; the stable slot has
    // been running for long.
    let mut rendered: BTreeMap<Slot, (String, i64)> = BTreeMap::new();
    if let Some(revision) = stable_revision {
        rendered.insert(stable, (revision, -HORIZON_SECONDS));
    }
    let mut waiting_since: Option<i64> = None;
    let mut promotes = 0;
    // When each slot's migration Jobs (by revision) were created.
    let mut migrating: BTreeMap<(Slot, String), i64> = BTreeMap::new();
    while now <= HORIZON_SECONDS {
        // Simulated Jobs: they finish `MIGRATION_SECONDS` after they were created, failing
        // for the new slot when asked to.
        observed.jobs.clear();
        for ((slot, revision), since) in &migrating {
            let state = if now - since < MIGRATION_SECONDS {
                JobState::Running
            } else if *slot != stable && scenario.fail_migration {
                JobState::Failed
            } else {
                JobState::Succeeded
            };
            for component in migrating_components() {
                let name = migration_job_name(&app, component, *slot, revision);
                observed.jobs.insert(name, state);
            }
        }
        // Simulated cluster: a slot becomes Available `ready_after` seconds after it was
        // rendered at its revision, except the unready component.
        for (slot, (revision, since)) in &rendered {
            let available = if now - since < scenario.ready_after_seconds {
                0
            } else if *slot != stable && scenario.unready.is_some() {
                4
            } else {
                5
            };
            observed.slots.insert(
                *slot,
                SlotObservation {
                    deployments: 5,
                    revision: Some(revision.clone()),
                    available,
                    deadline_exceeded: false,
                },
            );
        }
        observed.analysis = app
            .status
            .as_ref()
            .and_then(|s| s.rollout.as_ref())
            .map(|r| {
                if Some(r.step_index) == scenario.fail_analysis_at_step {
                    Verdict::Failed
                } else {
                    Verdict::Successful
                }
            });
        let decision = next_state(&app, &observed, &time(now));
        for record in &decision.status.slots {
            if record.migrations == Some(MigrationPhase::Pending) {
                migrating
                    .entry((record.name, record.template_hash.clone()))
                    .or_insert(now);
            }
            // Deployments exist once the slot's migrations (if any) succeeded.
            let migrated = matches!(record.migrations, None | Some(MigrationPhase::Succeeded));
            if record.template.is_none() || !migrated {
                continue;
            }
            let fresh = rendered
                .get(&record.name)
                .is_none_or(|(rev, _)| *rev != record.template_hash);
            if fresh {
                rendered.insert(record.name, (record.template_hash.clone(), now));
            }
        }
        let mut actions: Vec<String> = decision.actions.iter().map(describe).collect();
        // A person promotes a rollout that waits for one.
        if decision.paused {
            let since = *waiting_since.get_or_insert(now);
            if now - since >= scenario.promote_after_seconds {
                promotes += 1;
                app.metadata
                    .annotations
                    .get_or_insert_with(BTreeMap::new)
                    .insert(ANNOTATION_PROMOTE.to_owned(), promotes.to_string());
                actions.push("promote (simulated)".to_owned());
                waiting_since = None;
            }
        } else {
            waiting_since = None;
        }
        let moment = Moment {
            at_seconds: now,
            phase: phase(&decision).to_owned(),
            stable: decision.status.active_slot.unwrap_or_default(),
            step: decision
                .status
                .rollout
                .as_ref()
                .and_then(|r| r.step.clone()),
            weights: decision
                .status
                .slots
                .iter()
                .map(|s| (s.name, s.weight))
                .collect(),
            replicas: decision
                .status
                .slots
                .iter()
                .map(|s| (s.name, replicas(&decision.status, s)))
                .collect(),
            actions,
        };
        let changed = timeline.last().is_none_or(|last: &Moment| {
            (
                &last.phase,
                &last.weights,
                &last.replicas,
                &last.step,
                last.stable,
            ) != (
                &moment.phase,
                &moment.weights,
                &moment.replicas,
                &moment.step,
                moment.stable,
            ) || !moment.actions.is_empty()
        });
        if changed {
            timeline.push(moment);
        }
        app.status = Some(decision.status.clone());
        let promoted = timeline.last().is_some_and(|m: &Moment| {
            m.at_seconds == now && m.actions.iter().any(|a| a == "promote (simulated)")
        });
        let next = if promoted {
            Some(1)
        } else if decision.paused {
            Some(scenario.promote_after_seconds.max(1))
        } else {
            decision.requeue_after.map(|d| d.as_secs().max(1) as i64)
        };
        // Readiness and migrations are the other clocks: wake when one is due.
        let readiness = rendered
            .values()
            .map(|(_, since)| since + scenario.ready_after_seconds - now)
            .chain(
                migrating
                    .values()
                    .map(|since| since + MIGRATION_SECONDS - now),
            )
            .filter(|d| *d > 0)
            .min();
        match next.into_iter().chain(readiness).min() {
            Some(step) => now += step,
            None => break,
        }
    }
    timeline
}

/// The timeline as a table a person reads.
pub fn render_text(timeline: &[Moment]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:>7}  {:<11}  {:<6}  {:<5}  {:<15}  {:<15}  actions",
        "t(s)", "phase", "stable", "step", "weight b/g", "pods b/g"
    );
    for m in timeline {
        let pair = |map: &BTreeMap<Slot, i32>| {
            format!(
                "{}/{}",
                map.get(&Slot::Blue).copied().unwrap_or(0),
                map.get(&Slot::Green).copied().unwrap_or(0)
            )
        };
        let _ = writeln!(
            out,
            "{:>7}  {:<11}  {:<6}  {:<5}  {:<15}  {:<15}  {}",
            m.at_seconds,
            m.phase,
            m.stable.as_str(),
            m.step.as_deref().unwrap_or("-"),
            pair(&m.weights),
            pair(&m.replicas),
            m.actions.join("; ")
        );
    }
    out
}
