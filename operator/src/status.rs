//! Pure status computation: from the app, the Deployments observed in the cluster and what
//! had to be skipped, to the next `MessengerAppStatus`, plus the transitions worth an Event.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::ResourceExt;

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::Service;

use crate::builders::{LABEL_SLOT, REVISION_ANNOTATION, workload_name};
use crate::component::Component;
use crate::crd::{ComponentStatus, MessengerApp, MessengerAppStatus, MigrationPhase, Phase, Slot};
use crate::rollout::{Decision, JobState, Observed, SlotObservation};
use crate::validate::InvalidSpec;

pub const CONDITION_READY: &str = "Ready";
pub const CONDITION_PROGRESSING: &str = "Progressing";
pub const CONDITION_DEGRADED: &str = "Degraded";
/// Whether every API the spec needs (PodDisruptionBudget v1, HTTPRoute) is served.
pub const CONDITION_APIS_AVAILABLE: &str = "ApisAvailable";

/// Readiness of one component's Deployment as the Deployment controller reports it.
pub fn component_status(
    component: Component,
    slot: Slot,
    deployment: Option<&Deployment>,
) -> ComponentStatus {
    let desired = deployment.and_then(|d| d.spec.replicas).unwrap_or(1);
    let status = deployment.and_then(|d| d.status.as_ref());
    let ready = status.and_then(|s| s.ready_replicas).unwrap_or(0);
    let updated = status.and_then(|s| s.updated_replicas).unwrap_or(0);
    let available_replicas = status.and_then(|s| s.available_replicas).unwrap_or(0);
    // A status written for an older generation says nothing about the current template.
    let current = match (
        deployment.and_then(|d| d.metadata.generation),
        status.and_then(|s| s.observed_generation),
    ) {
        (Some(generation), Some(observed)) => observed >= generation,
        _ => false,
    };
    let available = deployment.is_some()
        && current
        && updated >= desired
        && ready >= desired
        && available_replicas >= desired;
    ComponentStatus {
        name: component.name().to_owned(),
        slot,
        desired_replicas: desired,
        ready_replicas: ready,
        available,
    }
}

/// What one slot's Deployments say, for the state machine.
pub fn observe_slot(app: &MessengerApp, slot: Slot, deployments: &[Deployment]) -> SlotObservation {
    let mut seen = SlotObservation::default();
    let mut revisions = BTreeSet::new();
    for component in Component::ALL {
        let name = workload_name(app, component, slot);
        let Some(deployment) = deployments.iter().find(|d| d.name_any() == name) else {
            continue;
        };
        seen.deployments += 1;
        revisions.insert(
            deployment
                .spec
                .template
                .metadata
                .as_ref()
                .and_then(|m| m.annotations.as_ref())
                .and_then(|a| a.get(REVISION_ANNOTATION))
                .cloned(),
        );
        if component_status(component, slot, Some(deployment)).available {
            seen.available += 1;
        }
        seen.deadline_exceeded |= deployment
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|conditions| {
                conditions.iter().any(|c| {
                    c.type_.as_deref() == Some("Progressing")
                        && c.status.as_deref() == Some("False")
                        && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
                })
            });
    }
    if revisions.len() == 1 {
        seen.revision = revisions.pop_first().flatten();
    }
    seen
}

/// Where a Job is: `Complete` or `Failed` (its conditions), else still running.
pub fn job_state(job: &Job) -> JobState {
    let holds = |type_: &str| {
        job.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|conditions| {
                conditions
                    .iter()
                    .any(|c| c.type_ == type_ && c.status == "True")
            })
    };
    if holds("Failed") {
        JobState::Failed
    } else if holds("Complete") {
        JobState::Succeeded
    } else {
        JobState::Running
    }
}

/// Everything the state machine needs from the children: both slots' Deployments, the
/// app's Jobs and the slot the entry Service selects.
pub fn observe(
    app: &MessengerApp,
    deployments: &[Deployment],
    jobs: &[Job],
    entry: Option<&Service>,
) -> Observed {
    let entry_slot = entry
        .and_then(|s| s.spec.as_ref())
        .and_then(|s| s.selector.as_ref())
        .and_then(|s| s.get(LABEL_SLOT))
        .and_then(|slot| match slot.as_str() {
            "blue" => Some(Slot::Blue),
            "green" => Some(Slot::Green),
            _ => None,
        });
    Observed {
        slots: [Slot::Blue, Slot::Green]
            .into_iter()
            .map(|slot| (slot, observe_slot(app, slot, deployments)))
            .collect(),
        entry_slot,
        analysis: None,
        gateway_metrics: None,
        metrics_window: false,
        jobs: jobs
            .iter()
            .map(|job| (job.name_any(), job_state(job)))
            .collect(),
    }
}

/// The full status after a decision: phase, conditions and per-component readiness of
/// every slot that runs, on top of what the state machine decided.
pub fn compute_status(
    app: &MessengerApp,
    decision: &Decision,
    deployments: &[Deployment],
    skipped: &[String],
    now: &Time,
) -> MessengerAppStatus {
    let mut status = decision.status.clone();
    let slot = status.active_slot.unwrap_or_default();
    let generation = app.metadata.generation;
    let previous = app
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let component_list = |slot: Slot| -> Vec<ComponentStatus> {
        Component::ALL
            .into_iter()
            .map(|component| {
                let name = workload_name(app, component, slot);
                component_status(
                    component,
                    slot,
                    deployments.iter().find(|d| d.name_any() == name),
                )
            })
            .collect()
    };
    let stable_components = component_list(slot);
    let ready_count = stable_components.iter().filter(|c| c.available).count();
    let all_ready = ready_count == stable_components.len();
    let waiting: Vec<&str> = stable_components
        .iter()
        .filter(|c| !c.available)
        .map(|c| c.name.as_str())
        .collect();
    let mut components = stable_components.clone();
    for record in &status.slots {
        if record.name != slot && !record.scaled_down {
            components.extend(component_list(record.name));
        }
    }
    // The first slot of an app whose migrations failed never starts: as bad as an abort.
    let stable_migration_failed = status
        .slots
        .iter()
        .any(|s| s.name == slot && s.migrations == Some(MigrationPhase::Failed));
    let aborted = status
        .rollout
        .as_ref()
        .and_then(|r| r.abort_reason.clone())
        .or_else(|| stable_migration_failed.then(|| "MigrationFailed".to_owned()));

    let mut conditions = Vec::new();
    let mut set = |type_: &str, status: bool, reason: &str, message: String| {
        conditions.push(condition(
            previous, type_, status, reason, message, generation, now,
        ));
    };
    if all_ready {
        set(
            CONDITION_READY,
            true,
            "AllComponentsAvailable",
            format!("all components of slot {slot} are available"),
        );
    } else {
        set(
            CONDITION_READY,
            false,
            "ComponentsNotAvailable",
            format!("waiting for {} in slot {slot}", waiting.join(", ")),
        );
    }
    match (&status.rollout, &aborted) {
        (Some(rollout), None) => set(
            CONDITION_PROGRESSING,
            true,
            if decision.paused {
                "RolloutPaused"
            } else {
                "RollingOut"
            },
            format!(
                "rolling out {} into slot {} (weight {})",
                rollout.version, rollout.candidate, rollout.weight
            ),
        ),
        _ if !all_ready => set(
            CONDITION_PROGRESSING,
            true,
            "ComponentsStarting",
            format!("waiting for {} in slot {slot}", waiting.join(", ")),
        ),
        _ => set(
            CONDITION_PROGRESSING,
            false,
            "Stable",
            format!(
                "slot {slot} runs version {}",
                status.stable_version.clone().unwrap_or_default()
            ),
        ),
    }
    match &aborted {
        Some(reason) => set(
            CONDITION_DEGRADED,
            true,
            reason,
            match &status.rollout {
                Some(rollout) => format!(
                    "rollout of {} aborted ({reason}); all traffic is on slot {slot}; change the spec or retry",
                    rollout.version
                ),
                None => format!(
                    "the migration Jobs of slot {slot} failed, so it never started; see their logs, then change the spec or retry"
                ),
            },
        ),
        None => set(
            CONDITION_DEGRADED,
            false,
            "AsExpected",
            "spec is valid and applied".to_owned(),
        ),
    }
    if skipped.is_empty() {
        set(
            CONDITION_APIS_AVAILABLE,
            true,
            "AllApisServed",
            "every API the spec needs is served".to_owned(),
        );
    } else {
        set(
            CONDITION_APIS_AVAILABLE,
            false,
            "ApisMissing",
            format!("not served by the cluster, skipped: {}", skipped.join(", ")),
        );
    }

    status.phase = Some(if aborted.is_some() {
        Phase::Degraded
    } else if decision.paused {
        Phase::Paused
    } else if status.rollout.is_some() || !all_ready {
        Phase::Progressing
    } else {
        Phase::Healthy
    });
    status.observed_generation = generation;
    status.conditions = conditions;
    status.ready_components = Some(format!("{ready_count}/{}", Component::ALL.len()));
    status.components = components;
    status
}

/// Status for a spec the operator refuses: Degraded with every problem; what was observed
/// before is kept because nothing was changed.
pub fn invalid_status(app: &MessengerApp, invalid: &InvalidSpec, now: &Time) -> MessengerAppStatus {
    degraded_status(app, "InvalidSpec", invalid.to_string(), now)
}

/// Status when the API server rejected what the operator applied (it will not retry until
/// the spec changes).
pub fn degraded_status(
    app: &MessengerApp,
    reason: &str,
    message: String,
    now: &Time,
) -> MessengerAppStatus {
    let previous_status = app.status.clone().unwrap_or_default();
    let previous = previous_status.conditions.as_slice();
    let generation = app.metadata.generation;
    let mut conditions = vec![
        condition(
            previous,
            CONDITION_READY,
            false,
            reason,
            message.clone(),
            generation,
            now,
        ),
        condition(
            previous,
            CONDITION_DEGRADED,
            true,
            reason,
            message,
            generation,
            now,
        ),
    ];
    // Conditions this state says nothing about keep their last value.
    conditions.extend(
        previous
            .iter()
            .filter(|c| c.type_ != CONDITION_READY && c.type_ != CONDITION_DEGRADED)
            .cloned(),
    );
    MessengerAppStatus {
        phase: Some(Phase::Degraded),
        observed_generation: generation,
        conditions,
        active_slot: previous_status.active_slot,
        ..previous_status
    }
}

/// A condition whose `lastTransitionTime` only moves when its status flips, so an unchanged
/// state writes an identical status.
fn condition(
    previous: &[Condition],
    type_: &str,
    status: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: &Time,
) -> Condition {
    let status = if status { "True" } else { "False" }.to_owned();
    let last_transition_time = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| now.clone());
    Condition {
        type_: type_.to_owned(),
        status,
        reason: reason.to_owned(),
        message,
        observed_generation: generation,
        last_transition_time,
    }
}

/// A change between two statuses that deserves a Kubernetes Event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub warning: bool,
    pub reason: String,
    pub note: String,
}

pub fn find_condition<'a>(
    status: Option<&'a MessengerAppStatus>,
    type_: &str,
) -> Option<&'a Condition> {
    status?.conditions.iter().find(|c| c.type_ == type_)
}

/// Events for conditions that flipped (or appeared with a notable value).
pub fn transitions(old: Option<&MessengerAppStatus>, new: &MessengerAppStatus) -> Vec<Transition> {
    let mut out = Vec::new();
    for cond in &new.conditions {
        let before = find_condition(old, &cond.type_);
        let flipped = before
            .map(|b| b.status != cond.status || b.reason != cond.reason)
            .unwrap_or(true);
        if !flipped {
            continue;
        }
        let is_true = cond.status == "True";
        let (warning, reason) = match (cond.type_.as_str(), is_true) {
            (CONDITION_READY, true) => (false, "Ready".to_owned()),
            // "not ready yet" on a fresh app is expected, only losing readiness is news.
            (CONDITION_READY, false) if before.is_some_and(|b| b.status == "True") => {
                (true, "NotReady".to_owned())
            }
            (CONDITION_DEGRADED, true) => (true, cond.reason.clone()),
            (CONDITION_DEGRADED, false) if before.is_some_and(|b| b.status == "True") => {
                (false, "Recovered".to_owned())
            }
            (CONDITION_APIS_AVAILABLE, false) => (true, cond.reason.clone()),
            _ => continue,
        };
        out.push(Transition {
            warning,
            reason,
            note: cond.message.clone(),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::apps::v1::DeploymentStatus;

    use super::*;
    use crate::builders::{ApiCapabilities, build_children};
    use crate::crd::MessengerAppSpec;

    fn app() -> MessengerApp {
        let spec: MessengerAppSpec =
            serde_json::from_value(serde_json::json!({"version": "2.0.0"})).unwrap();
        let mut app = MessengerApp::new("m", spec);
        app.metadata.namespace = Some("ns".into());
        app.metadata.uid = Some("uid".into());
        app.metadata.generation = Some(3);
        app
    }

    fn time(second: i64) -> Time {
        Time(Timestamp::from_second(second).unwrap())
    }

    /// The app's Deployments as the API server would return them, `ready` of them Available.
    fn observed(app: &MessengerApp, ready: usize) -> Vec<Deployment> {
        build_children(app, ApiCapabilities::ALL)
            .deployments
            .into_iter()
            .enumerate()
            .map(|(i, mut d)| {
                d.metadata.generation = Some(1);
                let n = if i < ready { 1 } else { 0 };
                d.status = Some(DeploymentStatus {
                    observed_generation: Some(1),
                    replicas: Some(1),
                    updated_replicas: Some(1),
                    ready_replicas: Some(n),
                    available_replicas: Some(n),
                    ..DeploymentStatus::default()
                });
                d
            })
            .collect()
    }

    use k8s_openapi::jiff::Timestamp;

    /// The status a reconcile writes for `app` with these Deployments.
    fn status_of(
        app: &MessengerApp,
        deployments: &[Deployment],
        skipped: &[String],
        now: &Time,
    ) -> MessengerAppStatus {
        let decision = crate::rollout::next_state(app, &observe(app, deployments, &[], None), now);
        compute_status(app, &decision, deployments, skipped, now)
    }

    #[test]
    fn component_availability() {
        let app = app();
        let base = observed(&app, 1).remove(0);
        let mut stale = base.clone();
        stale.metadata.generation = Some(2);
        let mut scaled = base.clone();
        scaled.spec.replicas = Some(3);
        let cases = [
            ("ready", Some(&base), true, 1),
            ("missing", None, false, 0),
            ("stale status", Some(&stale), false, 1),
            ("scaled up", Some(&scaled), false, 1),
        ];
        for (case, deployment, available, ready) in cases {
            let status = component_status(Component::Gateway, Slot::Blue, deployment);
            assert_eq!(
                (status.available, status.ready_replicas),
                (available, ready),
                "{case}"
            );
        }
    }

    #[test]
    fn readiness_flows_into_phase_conditions_and_counts() {
        let app = app();
        let half = status_of(&app, &observed(&app, 2), &[], &time(100));
        assert_eq!(half.phase, Some(Phase::Progressing));
        assert_eq!(half.ready_components.as_deref(), Some("2/5"));
        assert_eq!(
            find_condition(Some(&half), CONDITION_READY).unwrap().status,
            "False"
        );
        assert!(
            find_condition(Some(&half), CONDITION_READY)
                .unwrap()
                .message
                .contains("users")
        );
        assert_eq!(half.observed_generation, Some(3));
        assert_eq!(half.active_slot, Some(Slot::Blue));
        assert_eq!(half.slots[0].version, "2.0.0");

        let full = status_of(&app, &observed(&app, 5), &[], &time(200));
        assert_eq!(full.phase, Some(Phase::Healthy));
        assert_eq!(full.ready_components.as_deref(), Some("5/5"));
        assert_eq!(
            find_condition(Some(&full), CONDITION_READY).unwrap().status,
            "True"
        );
        assert_eq!(
            find_condition(Some(&full), CONDITION_PROGRESSING)
                .unwrap()
                .status,
            "False"
        );
    }

    #[test]
    fn unchanged_state_gives_identical_status() {
        let mut app = app();
        let first = status_of(&app, &observed(&app, 5), &[], &time(100));
        app.status = Some(first.clone());
        let second = status_of(&app, &observed(&app, 5), &[], &time(500));
        assert_eq!(
            first, second,
            "a later identical reconcile must not rewrite timestamps"
        );
        let degraded = status_of(&app, &observed(&app, 4), &[], &time(600));
        let ready = find_condition(Some(&degraded), CONDITION_READY).unwrap();
        assert_eq!(
            ready.last_transition_time,
            time(600),
            "a flip moves the transition time"
        );
    }

    #[test]
    fn missing_apis_are_reported() {
        let app = app();
        let status = status_of(
            &app,
            &observed(&app, 5),
            &["PodDisruptionBudget/m-chat-blue".into()],
            &time(1),
        );
        let cond = find_condition(Some(&status), CONDITION_APIS_AVAILABLE).unwrap();
        assert_eq!(
            (cond.status.as_str(), cond.reason.as_str()),
            ("False", "ApisMissing")
        );
        assert!(cond.message.contains("PodDisruptionBudget/m-chat-blue"));
        assert_eq!(
            status.phase,
            Some(Phase::Healthy),
            "a missing optional API does not block readiness"
        );
    }

    #[test]
    fn invalid_spec_keeps_what_was_observed() {
        let mut app = app();
        app.status = Some(status_of(&app, &observed(&app, 5), &[], &time(1)));
        let invalid = InvalidSpec {
            problems: vec!["spec.ingress: router gatewayAPI needs gatewayRef".into()],
        };
        let status = invalid_status(&app, &invalid, &time(2));
        assert_eq!(status.phase, Some(Phase::Degraded));
        let degraded = find_condition(Some(&status), CONDITION_DEGRADED).unwrap();
        assert_eq!(
            (degraded.status.as_str(), degraded.reason.as_str()),
            ("True", "InvalidSpec")
        );
        assert!(degraded.message.contains("gatewayRef"));
        assert_eq!(
            find_condition(Some(&status), CONDITION_READY)
                .unwrap()
                .status,
            "False"
        );
        assert_eq!(status.components.len(), 5, "observed components are kept");
    }

    #[test]
    fn transitions_worth_an_event() {
        let mut app = app();
        let progressing = status_of(&app, &observed(&app, 0), &[], &time(1));
        let reasons =
            |old: Option<&MessengerAppStatus>, new: &MessengerAppStatus| -> Vec<(bool, String)> {
                transitions(old, new)
                    .into_iter()
                    .map(|t| (t.warning, t.reason))
                    .collect()
            };
        assert_eq!(
            reasons(None, &progressing),
            vec![],
            "a fresh app starting is not news"
        );
        let ready = status_of(&app, &observed(&app, 5), &[], &time(2));
        assert_eq!(
            reasons(Some(&progressing), &ready),
            vec![(false, "Ready".to_owned())]
        );
        assert_eq!(reasons(Some(&ready), &ready), vec![]);
        let lost = status_of(&app, &observed(&app, 3), &[], &time(3));
        assert_eq!(
            reasons(Some(&ready), &lost),
            vec![(true, "NotReady".to_owned())]
        );
        app.status = Some(ready.clone());
        let invalid = invalid_status(
            &app,
            &InvalidSpec {
                problems: vec!["x".into()],
            },
            &time(4),
        );
        assert!(reasons(Some(&ready), &invalid).contains(&(true, "InvalidSpec".to_owned())));
        let recovered = status_of(&app, &observed(&app, 5), &[], &time(5));
        assert!(reasons(Some(&invalid), &recovered).contains(&(false, "Recovered".to_owned())));
    }
}
