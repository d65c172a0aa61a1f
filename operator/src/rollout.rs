//! The rollout state machine: from (spec, status, observed children, clock) to the next
//! status and the actions it implies. Pure — no API calls, no clock reads — so every
//! transition is table-tested and a restarted operator continues exactly where the status
//! says. BlueGreen and Canary are two traffic policies over the same states.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::ResourceExt;
use sha2::{Digest, Sha256};

use crate::analysis::{DEFAULT_INTERVAL_SECONDS, MetricsSample, judge};
use crate::builders::{migrating_components, migration_job_name};
use crate::crd::{
    AnalysisBaseline, CanaryStep, MessengerApp, MessengerAppStatus, MigrationPhase, RolloutStatus,
    Slot, SlotRole, SlotStatus, SlotTemplate, StrategyType,
};

pub const DEFAULT_PROGRESS_DEADLINE_SECONDS: i64 = 600;
pub const DEFAULT_SCALE_DOWN_DELAY_SECONDS: i64 = 30;
pub const DEFAULT_ABORT_SCALE_DOWN_DELAY_SECONDS: i64 = 30;
/// Annotation whose changed value asks for one action (any new value, e.g. a timestamp).
pub const ANNOTATION_PROMOTE: &str = "messenger.dev/promote";
pub const ANNOTATION_PROMOTE_FULL: &str = "messenger.dev/promote-full";
pub const ANNOTATION_ABORT: &str = "messenger.dev/abort";
pub const ANNOTATION_RETRY: &str = "messenger.dev/retry";
pub const COMMANDS: [&str; 4] = [
    ANNOTATION_PROMOTE,
    ANNOTATION_PROMOTE_FULL,
    ANNOTATION_ABORT,
    ANNOTATION_RETRY,
];
/// After a `setWeight` the next step waits for the router to carry the weight (the
/// controller writes traffic objects after the status), then goes on.
const NEXT_STEP_SOON: Duration = Duration::from_secs(1);

/// Revision of a slot: a hash over every input it is rendered from, in canonical JSON.
pub fn revision(template: &SlotTemplate) -> String {
    let json = serde_json::to_value(template).unwrap_or_default();
    let text = crate::sorted_json(json).to_string();
    hex::encode(&Sha256::digest(text.as_bytes())[..5])
}

/// What the controller saw of one slot's Deployments.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SlotObservation {
    /// Deployments of this slot that exist.
    pub deployments: usize,
    /// The revision all of them are stamped with; `None` when absent or they disagree.
    pub revision: Option<String>,
    /// Deployments Available at their current generation with every replica updated.
    pub available: usize,
    /// A Deployment reports `ProgressDeadlineExceeded`.
    pub deadline_exceeded: bool,
}

impl SlotObservation {
    /// All five components run `revision` and are Available.
    pub fn ready_at(&self, revision: &str) -> bool {
        self.deployments == 5 && self.available == 5 && self.revision.as_deref() == Some(revision)
    }
}

/// Where a Job is, from its conditions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobState {
    Running,
    Succeeded,
    Failed,
}

/// The verdict of the analysis run for the current step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Successful,
    Failed,
    Inconclusive,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Observed {
    pub slots: BTreeMap<Slot, SlotObservation>,
    /// The slot the entry Service selects, which serves users whatever the status says.
    pub entry_slot: Option<Slot>,
    /// A verdict given from outside (the simulator); otherwise it is measured from
    /// `gateway_metrics`.
    pub analysis: Option<Verdict>,
    /// The candidate gateways' counters now, scraped while an analysis step runs.
    pub gateway_metrics: Option<MetricsSample>,
    /// `gateway_metrics` is what Prometheus counted over the last analysis interval rather
    /// than cumulative counters; `None` then means Prometheus did not answer.
    pub metrics_window: bool,
    /// The app's Jobs by name.
    pub jobs: BTreeMap<String, JobState>,
}

impl Observed {
    pub fn slot(&self, slot: Slot) -> SlotObservation {
        self.slots.get(&slot).cloned().unwrap_or_default()
    }
}

/// What a transition did, for Events, metrics and the simulator's timeline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RolloutAction {
    /// `activeSlot` was missing; the entry Service said which slot serves.
    RecoveredActiveSlot(Slot),
    /// The stable slot's inputs were not recorded (an app from before revisions); the
    /// running spec was adopted as its revision.
    AdoptedStableRevision(String),
    Started {
        candidate: Slot,
        revision: String,
    },
    Restarted {
        revision: String,
    },
    SetWeight(i32),
    /// A `setCanaryScale` step: the candidate slot's pods per component from now on.
    SetCanaryScale(crate::crd::SetCanaryScale),
    /// Before the candidate takes all traffic it runs its full replicas again.
    CanaryScaleReset,
    Paused(String),
    Promoted {
        stable: Slot,
    },
    Aborted(String),
    Retried,
    RolledBack,
    ScaledDown(Slot),
    /// An analysis step measured a verdict.
    Analysis(Verdict),
    /// Every migration Job of the slot completed; its Deployments start.
    MigrationsSucceeded(Slot),
    /// A migration Job of the slot failed; the slot never starts.
    MigrationFailed {
        slot: Slot,
        job: String,
    },
    Acknowledged(String),
    Ignored(String),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    pub status: MessengerAppStatus,
    pub actions: Vec<RolloutAction>,
    /// When time alone (a pause, a delay, a deadline) changes the state next.
    pub requeue_after: Option<Duration>,
    /// The rollout waits for a person (`promote`, `resume`, `retry`).
    pub paused: bool,
}

/// Commands given through annotations that the status has not acknowledged yet.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Commands {
    pub promote: bool,
    pub promote_full: bool,
    pub abort: bool,
    pub retry: bool,
}

/// The command annotations whose value the status has not acknowledged yet.
pub fn pending_commands<'a>(
    app: &'a MessengerApp,
    status: &MessengerAppStatus,
) -> Vec<(&'static str, &'a String)> {
    COMMANDS
        .into_iter()
        .filter_map(|name| Some((name, app.annotations().get(name)?)))
        .filter(|(name, value)| status.acknowledged.get(*name) != Some(*value))
        .collect()
}

fn commands_of(pending: &[(&str, &String)]) -> Commands {
    let mut commands = Commands::default();
    for (name, _) in pending {
        match *name {
            ANNOTATION_PROMOTE => commands.promote = true,
            ANNOTATION_PROMOTE_FULL => commands.promote_full = true,
            ANNOTATION_ABORT => commands.abort = true,
            _ => commands.retry = true,
        }
    }
    commands
}

/// Records the commands as carried out (or refused), except a promote the rollout could not
/// act on yet: it stays pending until the candidate can be promoted, rather than being
/// used up while something else holds the rollout.
fn acknowledge(step: &mut Step, pending: &[(&str, &String)]) {
    for (name, value) in pending {
        let promote = matches!(*name, ANNOTATION_PROMOTE | ANNOTATION_PROMOTE_FULL);
        if promote && step.promote_held {
            continue;
        }
        step.status
            .acknowledged
            .insert((*name).to_owned(), (*value).clone());
        step.actions
            .push(RolloutAction::Acknowledged(format!("{name}={value}")));
    }
}

fn after(time: &Time, seconds: i64) -> Timestamp {
    time.0
        .checked_add(SignedDuration::from_secs(seconds))
        .unwrap_or(Timestamp::MAX)
}

fn until(now: &Time, at: Timestamp) -> Duration {
    let left = at.duration_since(now.0);
    Duration::try_from(left).unwrap_or(Duration::ZERO)
}

fn slot_mut(status: &mut MessengerAppStatus, slot: Slot) -> Option<&mut SlotStatus> {
    status.slots.iter_mut().find(|s| s.name == slot)
}

fn slot_ref(status: &MessengerAppStatus, slot: Slot) -> Option<&SlotStatus> {
    status.slots.iter().find(|s| s.name == slot)
}

fn record_slot(
    status: &mut MessengerAppStatus,
    slot: Slot,
    template: Option<SlotTemplate>,
    hash: String,
    role: SlotRole,
) {
    let version = template
        .as_ref()
        .map(|t| t.version.clone())
        .unwrap_or_default();
    let migrations = template
        .as_ref()
        .filter(|t| t.migrations.enabled)
        .map(|_| MigrationPhase::Pending);
    let record = SlotStatus {
        name: slot,
        version,
        template_hash: hash,
        role,
        template,
        weight: 0,
        scale_down_at: None,
        scaled_down: false,
        migrations,
    };
    match slot_mut(status, slot) {
        Some(existing) => *existing = record,
        None => {
            status.slots.push(record);
            status.slots.sort_by_key(|s| s.name);
        }
    }
}

struct Settings {
    strategy: StrategyType,
    steps: Vec<CanaryStep>,
    /// `strategy.canary.analysis`: measured during the whole canary once it has traffic.
    background: Option<crate::crd::CanaryAnalysis>,
    auto_promote: bool,
    auto_promote_after: i64,
    scale_down_delay: i64,
    abort_scale_down_delay: i64,
    progress_deadline: i64,
    paused: bool,
}

impl Settings {
    fn of(app: &MessengerApp) -> Settings {
        let strategy = &app.spec.strategy;
        let blue_green = strategy.blue_green.clone().unwrap_or_default();
        let canary = strategy.canary.clone().unwrap_or_default();
        let scale_down_delay = match strategy.type_ {
            StrategyType::BlueGreen => blue_green.scale_down_delay_seconds,
            StrategyType::Canary => canary.scale_down_delay_seconds,
        };
        Settings {
            strategy: strategy.type_,
            steps: canary.steps,
            background: canary.analysis,
            auto_promote: blue_green.auto_promote.unwrap_or(true),
            auto_promote_after: blue_green.auto_promote_after_seconds.unwrap_or(0),
            scale_down_delay: scale_down_delay.unwrap_or(DEFAULT_SCALE_DOWN_DELAY_SECONDS),
            abort_scale_down_delay: strategy
                .abort_scale_down_delay_seconds
                .unwrap_or(DEFAULT_ABORT_SCALE_DOWN_DELAY_SECONDS),
            progress_deadline: strategy
                .progress_deadline_seconds
                .unwrap_or(DEFAULT_PROGRESS_DEADLINE_SECONDS),
            paused: app.spec.paused,
        }
    }
}

/// Accumulates the outcome of one decision.
struct Step {
    status: MessengerAppStatus,
    actions: Vec<RolloutAction>,
    requeue: Option<Duration>,
    paused: bool,
    /// A promote was given but the rollout cannot act on it yet (candidate not ready,
    /// migrations running, `spec.paused`, a step that is not a pause or analysis).
    promote_held: bool,
}

impl Step {
    fn wake_in(&mut self, after: Duration) {
        self.requeue = Some(self.requeue.map_or(after, |r| r.min(after)));
    }
}

/// The next status of `app` given what was observed at `now`.
pub fn next_state(app: &MessengerApp, observed: &Observed, now: &Time) -> Decision {
    let settings = Settings::of(app);
    let mut step = Step {
        status: app.status.clone().unwrap_or_default(),
        actions: Vec::new(),
        requeue: None,
        paused: false,
        promote_held: false,
    };
    let pending = pending_commands(app, &step.status);
    let commands = commands_of(&pending);
    let spec_template = SlotTemplate::of(&app.spec);
    let spec_revision = revision(&spec_template);

    // Which slot serves: the recorded one, else what the entry Service selects (status
    // wiped or restored from a backup), else blue for a new app.
    let stable = match step.status.active_slot {
        Some(slot) => slot,
        None => {
            let slot = observed.entry_slot.unwrap_or_default();
            if observed.entry_slot.is_some() {
                step.actions.push(RolloutAction::RecoveredActiveSlot(slot));
            }
            step.status.active_slot = Some(slot);
            slot
        }
    };
    let recorded = slot_ref(&step.status, stable).is_some_and(|s| s.template.is_some());
    if !recorded {
        // Inputs of the serving slot are unknown. If what runs there is unstamped (an
        // older operator) or carries the spec's revision, the spec is what runs. Otherwise
        // keep its observed revision and leave it untouched: the spec becomes a rollout.
        let running = observed.slot(stable).revision;
        match running {
            Some(hash) if hash != spec_revision => {
                record_slot(&mut step.status, stable, None, hash, SlotRole::Stable);
            }
            _ => {
                record_slot(
                    &mut step.status,
                    stable,
                    Some(spec_template.clone()),
                    spec_revision.clone(),
                    SlotRole::Stable,
                );
                if running.is_some()
                    && let Some(record) = slot_mut(&mut step.status, stable)
                    && record.migrations.is_some()
                {
                    // Its pods already run: whatever they needed was migrated.
                    record.migrations = Some(MigrationPhase::Succeeded);
                }
                if step.status.slots.len() > 1 || running.is_some() {
                    step.actions
                        .push(RolloutAction::AdoptedStableRevision(spec_revision.clone()));
                }
            }
        }
    }
    let stable_revision = slot_ref(&step.status, stable)
        .map(|s| s.template_hash.clone())
        .unwrap_or_default();
    observe_migrations(app, &mut step, observed);

    match step.status.rollout.clone() {
        None if spec_revision == stable_revision => {
            let failed = slot_ref(&step.status, stable)
                .is_some_and(|s| s.migrations == Some(MigrationPhase::Failed));
            if failed && commands.retry {
                // The first slot's migrations failed: run them again.
                if let Some(record) = slot_mut(&mut step.status, stable) {
                    record.migrations = Some(MigrationPhase::Pending);
                }
                step.actions.push(RolloutAction::Retried);
            } else if commands != Commands::default() {
                step.actions
                    .push(RolloutAction::Ignored("no rollout in progress".to_owned()));
            }
        }
        None => start(&mut step, stable, spec_template, spec_revision, now),
        Some(_) if spec_revision == stable_revision => {
            // The spec went back to what serves: instant rollback, traffic stays/returns.
            let candidate = stable.other();
            step.status.rollout = None;
            retire(&mut step, candidate, settings.abort_scale_down_delay, now);
            step.actions.push(RolloutAction::RolledBack);
        }
        Some(rollout) if rollout.revision != spec_revision => {
            // A new revision mid-rollout: traffic back to stable, the candidate slot is
            // re-rendered from the new inputs and the steps start over.
            start(&mut step, stable, spec_template, spec_revision.clone(), now);
            step.actions
                .retain(|a| !matches!(a, RolloutAction::Started { .. }));
            step.actions.push(RolloutAction::Restarted {
                revision: spec_revision,
            });
        }
        Some(rollout) if rollout.abort_reason.is_some() => {
            if commands.retry {
                start(&mut step, stable, spec_template, spec_revision, now);
                step.actions
                    .retain(|a| !matches!(a, RolloutAction::Started { .. }));
                step.actions.push(RolloutAction::Retried);
            } else {
                let aborted_at = rollout.aborted_at.clone().unwrap_or_else(|| now.clone());
                scale_down_when_due(
                    &mut step,
                    rollout.candidate,
                    after(&aborted_at, settings.abort_scale_down_delay),
                    now,
                );
            }
        }
        Some(rollout) => progress(&mut step, &settings, commands, observed, rollout, now),
    }

    // A slot that no longer serves is scaled down once its delay is over.
    for slot in [Slot::Blue, Slot::Green] {
        let due = slot_ref(&step.status, slot)
            .filter(|s| s.role == SlotRole::Previous && !s.scaled_down)
            .and_then(|s| s.scale_down_at.clone());
        if let Some(at) = due {
            scale_down_when_due(&mut step, slot, at.0, now);
        }
    }
    acknowledge(&mut step, &pending);
    set_weights(&mut step.status);
    let stable = step.status.active_slot.unwrap_or_default();
    step.status.stable_version = slot_ref(&step.status, stable)
        .map(|s| s.version.clone())
        .filter(|v| !v.is_empty());
    Decision {
        status: step.status,
        actions: step.actions,
        requeue_after: step.requeue,
        paused: step.paused,
    }
}

/// Moves each slot whose migration Jobs are pending to `Succeeded` once all of them
/// completed, or to `Failed` once one failed. Both are final for the slot's revision
/// (`retry` or a new revision starts over).
fn observe_migrations(app: &MessengerApp, step: &mut Step, observed: &Observed) {
    for record in &mut step.status.slots {
        if record.migrations != Some(MigrationPhase::Pending) {
            continue;
        }
        let states: Vec<(String, Option<JobState>)> = migrating_components()
            .map(|c| {
                let name = migration_job_name(app, c, record.name, &record.template_hash);
                let state = observed.jobs.get(&name).copied();
                (name, state)
            })
            .collect();
        if let Some((job, _)) = states
            .iter()
            .find(|(_, state)| *state == Some(JobState::Failed))
        {
            record.migrations = Some(MigrationPhase::Failed);
            step.actions.push(RolloutAction::MigrationFailed {
                slot: record.name,
                job: job.clone(),
            });
        } else if states
            .iter()
            .all(|(_, state)| *state == Some(JobState::Succeeded))
        {
            record.migrations = Some(MigrationPhase::Succeeded);
            step.actions
                .push(RolloutAction::MigrationsSucceeded(record.name));
        }
    }
}

/// A slot whose pods may run: it migrates at start-up, or its migration Jobs succeeded.
fn migrated(status: &MessengerAppStatus, slot: Slot) -> bool {
    slot_ref(status, slot)
        .is_some_and(|s| matches!(s.migrations, None | Some(MigrationPhase::Succeeded)))
}

fn start(step: &mut Step, stable: Slot, template: SlotTemplate, revision: String, now: &Time) {
    let candidate = stable.other();
    let version = template.version.clone();
    record_slot(
        &mut step.status,
        candidate,
        Some(template),
        revision.clone(),
        SlotRole::Candidate,
    );
    step.status.rollout = Some(RolloutStatus {
        candidate,
        revision: revision.clone(),
        version,
        started_at: now.clone(),
        step_index: 0,
        step: None,
        step_started_at: Some(now.clone()),
        weight: 0,
        available_at: None,
        abort_reason: None,
        aborted_at: None,
        analysis: Default::default(),
        analysis_baseline: None,
        background_baseline: None,
        canary_scale: None,
    });
    step.actions.push(RolloutAction::Started {
        candidate,
        revision,
    });
    step.wake_in(NEXT_STEP_SOON);
}

/// `slot` stops serving and is scaled down after `delay` seconds.
fn retire(step: &mut Step, slot: Slot, delay: i64, now: &Time) {
    if let Some(record) = slot_mut(&mut step.status, slot) {
        record.role = SlotRole::Previous;
        record.weight = 0;
        record.scaled_down = false;
        record.scale_down_at = Some(Time(after(now, delay)));
    }
    step.wake_in(until(now, after(now, delay)));
}

fn scale_down_when_due(step: &mut Step, slot: Slot, at: Timestamp, now: &Time) {
    let Some(record) = slot_mut(&mut step.status, slot) else {
        return;
    };
    if record.scaled_down {
        return;
    }
    if now.0 >= at {
        record.scaled_down = true;
        step.actions.push(RolloutAction::ScaledDown(slot));
    } else {
        step.wake_in(until(now, at));
    }
}

fn abort(step: &mut Step, settings: &Settings, reason: String, now: &Time) {
    if let Some(rollout) = step.status.rollout.as_mut() {
        rollout.weight = 0;
        rollout.abort_reason = Some(reason.clone());
        rollout.aborted_at = Some(now.clone());
    }
    step.wake_in(Duration::from_secs(
        settings.abort_scale_down_delay.max(0) as u64
    ));
    step.actions.push(RolloutAction::Aborted(reason));
}

/// The candidate becomes stable; the old slot is kept for the scale-down delay.
fn complete(step: &mut Step, settings: &Settings, candidate: Slot, now: &Time) {
    let old = candidate.other();
    if let Some(record) = slot_mut(&mut step.status, candidate) {
        record.role = SlotRole::Stable;
        record.scaled_down = false;
        record.scale_down_at = None;
    }
    retire(step, old, settings.scale_down_delay, now);
    step.status.active_slot = Some(candidate);
    step.status.rollout = None;
    step.actions
        .push(RolloutAction::Promoted { stable: candidate });
}

fn progress(
    step: &mut Step,
    settings: &Settings,
    commands: Commands,
    observed: &Observed,
    mut rollout: RolloutStatus,
    now: &Time,
) {
    let candidate = rollout.candidate;
    if commands.abort {
        abort(step, settings, "AbortedByUser".to_owned(), now);
        return;
    }
    let migration_failed = slot_ref(&step.status, candidate)
        .is_some_and(|s| s.migrations == Some(MigrationPhase::Failed));
    if migration_failed {
        // Before any traffic moved: the candidate never got pods, let alone weight.
        abort(step, settings, "MigrationFailed".to_owned(), now);
        return;
    }
    let seen = observed.slot(candidate);
    if !migrated(&step.status, candidate) || !seen.ready_at(&rollout.revision) {
        let deadline = after(&rollout.started_at, settings.progress_deadline);
        if rollout.available_at.is_none() && (now.0 >= deadline || seen.deadline_exceeded) {
            abort(step, settings, "ProgressDeadlineExceeded".to_owned(), now);
            return;
        }
        if rollout.available_at.is_none() {
            step.wake_in(until(now, deadline));
        }
        step.promote_held = true;
        // Readiness flapped after the candidate came up: hold the current step.
        step.status.rollout = Some(rollout);
        return;
    }
    let available_at = rollout
        .available_at
        .get_or_insert_with(|| now.clone())
        .clone();
    if background_analysis_due(settings, &rollout) {
        let thresholds = settings.background.clone().unwrap_or_default();
        let verdict = observed.analysis.or_else(|| {
            measure_with(
                step,
                &mut rollout,
                &thresholds,
                observed,
                now,
                Baseline::Background,
            )
        });
        if let Some(verdict) = verdict {
            step.actions.push(RolloutAction::Analysis(verdict));
            match verdict {
                Verdict::Successful => rollout.analysis.successful += 1,
                // Little traffic at a small weight is normal: background analysis only
                // aborts on failures.
                Verdict::Inconclusive => rollout.analysis.inconclusive += 1,
                Verdict::Failed => {
                    rollout.analysis.failed += 1;
                    if rollout.analysis.failed >= thresholds.failure_limit.unwrap_or(1) {
                        step.status.rollout = Some(rollout);
                        abort(step, settings, "BackgroundAnalysisFailed".to_owned(), now);
                        return;
                    }
                }
            }
        }
    }
    if settings.paused {
        step.paused = true;
        step.promote_held = true;
        step.actions
            .push(RolloutAction::Paused("spec.paused".to_owned()));
        step.status.rollout = Some(rollout);
        return;
    }
    match settings.strategy {
        StrategyType::BlueGreen => {
            let auto_at = after(&available_at, settings.auto_promote_after);
            let auto = settings.auto_promote && now.0 >= auto_at;
            if commands.promote || commands.promote_full || auto {
                complete(step, settings, candidate, now);
                return;
            }
            if settings.auto_promote {
                step.wake_in(until(now, auto_at));
            } else {
                step.paused = true;
            }
            step.status.rollout = Some(rollout);
        }
        StrategyType::Canary => {
            let steps = &settings.steps;
            if commands.promote_full {
                // The remaining steps are skipped; the end below completes the rollout.
                rollout.step_index = i32::try_from(steps.len()).unwrap_or(i32::MAX);
            }
            let index = usize::try_from(rollout.step_index).unwrap_or(0);
            let mut advance = false;
            match steps.get(index) {
                None if rollout.canary_scale.is_some() => {
                    // A scaled-down candidate would take all traffic: back to its full
                    // replicas first; the readiness gate above waits for them.
                    rollout.canary_scale = None;
                    step.promote_held = true;
                    step.actions.push(RolloutAction::CanaryScaleReset);
                    step.wake_in(NEXT_STEP_SOON);
                    rollout.step = Some(format!("{}/{}", steps.len(), steps.len()));
                    step.status.rollout = Some(rollout);
                    return;
                }
                None => {
                    complete(step, settings, candidate, now);
                    return;
                }
                Some(current) => {
                    let started = rollout
                        .step_started_at
                        .clone()
                        .unwrap_or_else(|| now.clone());
                    if let Some(weight) = current.set_weight {
                        rollout.weight = weight;
                        step.actions.push(RolloutAction::SetWeight(weight));
                        advance = true;
                        // A promote skips a pause or an analysis, not this step.
                        step.promote_held = true;
                    } else if let Some(scale) = &current.set_canary_scale {
                        rollout.canary_scale = Some(scale.clone());
                        step.actions
                            .push(RolloutAction::SetCanaryScale(scale.clone()));
                        advance = true;
                        step.promote_held = true;
                    } else if let Some(pause) = &current.pause {
                        match pause.duration_seconds {
                            _ if commands.promote => advance = true,
                            Some(seconds) => {
                                let end = after(&started, seconds);
                                if now.0 >= end {
                                    advance = true;
                                } else {
                                    step.wake_in(until(now, end));
                                }
                            }
                            None => step.paused = true,
                        }
                    } else if let Some(thresholds) = &current.analysis {
                        if commands.promote {
                            advance = true;
                        } else {
                            let verdict = observed
                                .analysis
                                .or_else(|| measure(step, &mut rollout, thresholds, observed, now));
                            if let Some(verdict) = verdict {
                                step.actions.push(RolloutAction::Analysis(verdict));
                            }
                            let failure_limit = thresholds.failure_limit.unwrap_or(1);
                            let inconclusive_limit = thresholds.inconclusive_limit.unwrap_or(5);
                            match verdict {
                                Some(Verdict::Successful) => {
                                    rollout.analysis.successful += 1;
                                    advance = true;
                                }
                                Some(Verdict::Failed) => {
                                    rollout.analysis.failed += 1;
                                    if rollout.analysis.failed >= failure_limit {
                                        step.status.rollout = Some(rollout);
                                        abort(step, settings, "AnalysisFailed".to_owned(), now);
                                        return;
                                    }
                                }
                                Some(Verdict::Inconclusive) => {
                                    rollout.analysis.inconclusive += 1;
                                    if rollout.analysis.inconclusive >= inconclusive_limit {
                                        step.status.rollout = Some(rollout);
                                        abort(
                                            step,
                                            settings,
                                            "AnalysisInconclusive".to_owned(),
                                            now,
                                        );
                                        return;
                                    }
                                }
                                None => {}
                            }
                        }
                    }
                }
            }
            if advance {
                rollout.analysis_baseline = None;
                // The next step (or completion after the last) comes on the next
                // reconcile, once the router carries what this one wrote.
                rollout.step_index += 1;
                rollout.step_started_at = Some(now.clone());
                step.wake_in(NEXT_STEP_SOON);
            }
            rollout.step = Some(format!("{}/{}", rollout.step_index, steps.len()));
            step.status.rollout = Some(rollout);
        }
    }
}

/// The candidate slot whose gateways the next decision wants measured, and the interval
/// of the analysis: a canary rollout (not aborted) standing at an analysis step, or whose
/// candidate carries traffic under a background analysis.
pub fn wants_gateway_metrics(app: &MessengerApp) -> Option<(Slot, i64)> {
    if app.spec.strategy.type_ != StrategyType::Canary {
        return None;
    }
    let rollout = app
        .status
        .as_ref()?
        .rollout
        .as_ref()
        .filter(|r| r.abort_reason.is_none())?;
    let canary = app.spec.strategy.canary.as_ref()?;
    let index = usize::try_from(rollout.step_index).ok()?;
    let step = canary.steps.get(index).and_then(|s| s.analysis.as_ref());
    let background = canary.analysis.as_ref().filter(|_| rollout.weight > 0);
    let thresholds = step.or(background)?;
    let interval = thresholds
        .interval_seconds
        .unwrap_or(DEFAULT_INTERVAL_SECONDS);
    Some((rollout.candidate, interval))
}

/// One analysis measurement: the first scrape of a step becomes the baseline; once the
/// interval has passed, the next scrape is judged against it and becomes the new baseline.
/// The background analysis runs in a canary whose candidate carries traffic, except while
/// an analysis step measures (one scrape cannot serve two baselines).
fn background_analysis_due(settings: &Settings, rollout: &RolloutStatus) -> bool {
    let at_analysis_step = usize::try_from(rollout.step_index)
        .ok()
        .and_then(|i| settings.steps.get(i))
        .is_some_and(|s| s.analysis.is_some());
    settings.strategy == StrategyType::Canary
        && settings.background.is_some()
        && rollout.weight > 0
        && !at_analysis_step
}

/// Which baseline a measurement uses.
#[derive(Clone, Copy)]
enum Baseline {
    Step,
    Background,
}

fn measure(
    step: &mut Step,
    rollout: &mut RolloutStatus,
    thresholds: &crate::crd::CanaryAnalysis,
    observed: &Observed,
    now: &Time,
) -> Option<Verdict> {
    measure_with(step, rollout, thresholds, observed, now, Baseline::Step)
}

fn measure_with(
    step: &mut Step,
    rollout: &mut RolloutStatus,
    thresholds: &crate::crd::CanaryAnalysis,
    observed: &Observed,
    now: &Time,
    which: Baseline,
) -> Option<Verdict> {
    let slot = match which {
        Baseline::Step => &mut rollout.analysis_baseline,
        Baseline::Background => &mut rollout.background_baseline,
    };
    let interval = thresholds
        .interval_seconds
        .unwrap_or(DEFAULT_INTERVAL_SECONDS);
    if observed.metrics_window {
        // Prometheus answers for the interval itself: the baseline only times the
        // measurements, one interval apart from the start of the step.
        let due = slot.as_ref().map(|b| after(&b.taken_at, interval));
        if due.is_some_and(|due| now.0 < due) {
            step.wake_in(until(now, due.unwrap_or(now.0)));
            return None;
        }
        *slot = Some(AnalysisBaseline {
            taken_at: now.clone(),
            sample: MetricsSample::default(),
        });
        step.wake_in(Duration::from_secs(interval as u64));
        return due.map(|_| match &observed.gateway_metrics {
            Some(window) => judge(&MetricsSample::default(), window, thresholds),
            // A Prometheus that does not answer gives no verdict, and counts toward the
            // inconclusive limit so a wrong URL cannot hold a rollout forever.
            None => Verdict::Inconclusive,
        });
    }
    let Some(current) = &observed.gateway_metrics else {
        // Nothing scraped (no pods answering yet): look again soon.
        step.wake_in(Duration::from_secs(interval.clamp(1, 10) as u64));
        return None;
    };
    let fresh = AnalysisBaseline {
        taken_at: now.clone(),
        sample: current.clone(),
    };
    let Some(baseline) = slot.clone() else {
        *slot = Some(fresh);
        step.wake_in(Duration::from_secs(interval as u64));
        return None;
    };
    let due = after(&baseline.taken_at, interval);
    if now.0 < due {
        step.wake_in(until(now, due));
        return None;
    }
    *slot = Some(fresh);
    step.wake_in(Duration::from_secs(interval as u64));
    Some(judge(&baseline.sample, current, thresholds))
}

/// Weights per slot follow the rollout: the candidate carries the rollout's weight, the
/// stable slot the rest, any other slot nothing.
fn set_weights(status: &mut MessengerAppStatus) {
    let stable = status.active_slot.unwrap_or_default();
    let candidate_weight = status
        .rollout
        .as_ref()
        .map(|r| (r.candidate, r.weight))
        .filter(|(slot, _)| *slot != stable);
    for record in &mut status.slots {
        record.weight = if record.name == stable {
            100 - candidate_weight.map_or(0, |(_, w)| w)
        } else {
            candidate_weight
                .filter(|(slot, _)| *slot == record.name)
                .map_or(0, |(_, w)| w)
        };
    }
}

#[cfg(test)]
#[path = "rollout_tests.rs"]
mod tests;
