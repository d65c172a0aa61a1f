//! Table-driven transitions of the rollout state machine, and walks through whole rollouts
//! under a simulated clock and readiness.

use std::collections::BTreeMap;

use super::*;
use crate::crd::{MessengerAppSpec, Phase};

/// A named edit of a spec.
type Edit<'a> = (&'a str, &'a dyn Fn(&mut MessengerAppSpec));

/// One canary step of the walk: second, candidate ready?, promote token, weights
/// (blue, green), step index, paused.
type WalkCase<'a> = (i64, bool, Option<&'a str>, (i32, i32), i32, bool);

/// One measurement: second, requests and errors scraped, verdict, counts (successful,
/// failed, inconclusive), abort reason.
type MeasureCase<'a> = (
    i64,
    f64,
    f64,
    Option<Verdict>,
    (i32, i32, i32),
    Option<&'a str>,
);

fn app(spec: serde_json::Value) -> MessengerApp {
    let spec: MessengerAppSpec = serde_json::from_value(spec).unwrap();
    let mut app = MessengerApp::new("demo", spec);
    app.metadata.namespace = Some("ns".into());
    app.metadata.uid = Some("uid".into());
    app
}

fn at(second: i64) -> Time {
    Time(Timestamp::from_second(1_700_000_000 + second).unwrap())
}

/// One app whose state is carried from decision to decision, as the controller does.
struct Run {
    app: MessengerApp,
    observed: Observed,
}

impl Run {
    fn new(spec: serde_json::Value) -> Run {
        Run {
            app: app(spec),
            observed: Observed::default(),
        }
    }

    fn step(&mut self, second: i64) -> Decision {
        let decision = next_state(&self.app, &self.observed, &at(second));
        self.app.status = Some(decision.status.clone());
        decision
    }

    /// Every Deployment of `slot` runs the slot's recorded revision and is Available.
    fn ready(&mut self, slot: Slot) {
        let status = self.app.status.as_ref().unwrap();
        let revision = status
            .slots
            .iter()
            .find(|s| s.name == slot)
            .unwrap()
            .template_hash
            .clone();
        self.observed.slots.insert(
            slot,
            SlotObservation {
                deployments: 5,
                revision: Some(revision),
                available: 5,
                deadline_exceeded: false,
            },
        );
    }

    fn unready(&mut self, slot: Slot) {
        if let Some(seen) = self.observed.slots.get_mut(&slot) {
            seen.available = 3;
        }
    }

    fn set_version(&mut self, version: &str) {
        self.app.spec.version = version.to_owned();
    }

    fn command(&mut self, annotation: &str, value: &str) {
        self.app
            .metadata
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(annotation.to_owned(), value.to_owned());
    }

    fn status(&self) -> &MessengerAppStatus {
        self.app.status.as_ref().unwrap()
    }

    fn weights(&self) -> (i32, i32) {
        let weight = |slot| {
            self.status()
                .slots
                .iter()
                .find(|s| s.name == slot)
                .map_or(0, |s| s.weight)
        };
        (weight(Slot::Blue), weight(Slot::Green))
    }

    fn slot(&self, slot: Slot) -> &SlotStatus {
        self.status().slots.iter().find(|s| s.name == slot).unwrap()
    }
}

/// A steady app on blue at 1.0.0, as the first reconciles leave it.
fn steady(spec: serde_json::Value) -> Run {
    let mut run = Run::new(spec);
    let first = run.step(0);
    assert_eq!(first.actions, vec![], "a new app just records its slot");
    run.ready(Slot::Blue);
    run.step(1);
    run
}

fn blue_green(extra: serde_json::Value) -> serde_json::Value {
    serde_json::json!({"version": "1.0.0", "strategy": {"type": "BlueGreen", "blueGreen": extra}})
}

fn canary_spec() -> serde_json::Value {
    serde_json::json!({"version": "1.0.0", "strategy": {"type": "Canary", "canary": {"steps": [
        {"setWeight": 20},
        {"pause": {"durationSeconds": 60}},
        {"setWeight": 50},
        {"pause": {}},
        {"setWeight": 80}
    ]}}})
}

#[test]
fn revision_covers_every_input_and_nothing_else() {
    let base = app(serde_json::json!({"version": "1.0.0"}));
    let hash = |f: &dyn Fn(&mut MessengerAppSpec)| {
        let mut spec = base.spec.clone();
        f(&mut spec);
        revision(&SlotTemplate::of(&spec))
    };
    let original = hash(&|_| {});
    let changes: [Edit; 6] = [
        ("version", &|s| s.version = "1.0.1".into()),
        ("registry", &|s| s.image.registry = "other".into()),
        ("replicas", &|s| s.components.chat.replicas = 3),
        ("config", &|s| {
            s.config.insert("AUTH_TOKEN_TTL".into(), "60".into());
        }),
        ("log level", &|s| s.log_level = "debug".into()),
        ("dependencies", &|s| {
            s.dependencies.redis = Some(crate::crd::SecretKeyRef {
                name: "r".into(),
                key: "u".into(),
            })
        }),
    ];
    for (what, change) in changes {
        assert_ne!(hash(change), original, "{what} must change the revision");
    }
    let unchanged: [Edit; 2] = [
        ("paused", &|s| s.paused = true),
        ("strategy", &|s| s.strategy.type_ = StrategyType::Canary),
    ];
    for (what, change) in unchanged {
        assert_eq!(hash(change), original, "{what} is not a slot input");
    }
    assert_eq!(hash(&|_| {}), original, "same inputs, same revision");
}

#[test]
fn blue_green_switches_when_the_new_slot_is_available_and_scales_the_old_one_down_later() {
    let mut run = steady(blue_green(serde_json::json!({})));
    let blue_template = run.slot(Slot::Blue).template.clone();
    run.set_version("2.0.0");
    let started = run.step(10);
    assert!(matches!(
        started.actions[..],
        [RolloutAction::Started {
            candidate: Slot::Green,
            ..
        }]
    ));
    assert_eq!(run.weights(), (100, 0));
    assert_eq!(run.status().active_slot, Some(Slot::Blue));
    assert!(started.requeue_after.unwrap() <= Duration::from_secs(600));

    // Not Available yet: nothing moves.
    let waiting = run.step(20);
    assert_eq!(waiting.actions, vec![]);
    assert_eq!(run.weights(), (100, 0));

    run.ready(Slot::Green);
    let promoted = run.step(30);
    assert_eq!(
        promoted.actions,
        vec![RolloutAction::Promoted {
            stable: Slot::Green
        }]
    );
    assert_eq!(run.weights(), (0, 100));
    assert_eq!(run.status().active_slot, Some(Slot::Green));
    assert_eq!(run.status().stable_version.as_deref(), Some("2.0.0"));
    assert_eq!(run.slot(Slot::Blue).role, SlotRole::Previous);
    assert_eq!(
        run.slot(Slot::Blue).template,
        blue_template,
        "kept for switch-back"
    );
    assert_eq!(promoted.requeue_after, Some(Duration::from_secs(30)));

    let early = run.step(59);
    assert!(!run.slot(Slot::Blue).scaled_down);
    assert_eq!(early.requeue_after, Some(Duration::from_secs(1)));
    let late = run.step(60);
    assert_eq!(late.actions, vec![RolloutAction::ScaledDown(Slot::Blue)]);
    assert!(run.slot(Slot::Blue).scaled_down);
    let quiet = run.step(1000);
    assert_eq!(quiet.actions, vec![], "nothing left to do");
    assert_eq!(quiet.requeue_after, None);
}

#[test]
fn blue_green_waits_for_promote_when_auto_promotion_is_off() {
    let mut run = steady(blue_green(serde_json::json!({"autoPromote": false})));
    run.set_version("2.0.0");
    run.step(10);
    run.ready(Slot::Green);
    let waiting = run.step(20);
    assert!(waiting.paused, "waits for a person");
    assert_eq!(run.weights(), (100, 0));
    run.command(ANNOTATION_PROMOTE, "t1");
    let promoted = run.step(30);
    assert_eq!(
        promoted.actions,
        vec![
            RolloutAction::Promoted {
                stable: Slot::Green
            },
            RolloutAction::Acknowledged(format!("{ANNOTATION_PROMOTE}=t1"))
        ]
    );
    assert_eq!(run.status().acknowledged[ANNOTATION_PROMOTE], "t1");
    // The same annotation value is not a second command.
    run.set_version("3.0.0");
    run.step(40);
    run.ready(Slot::Blue);
    let again = run.step(50);
    assert!(again.paused, "t1 was already carried out");
    assert_eq!(run.status().active_slot, Some(Slot::Green));
}

#[test]
fn a_promote_given_before_the_candidate_is_ready_waits_for_it() {
    let mut run = steady(blue_green(serde_json::json!({"autoPromote": false})));
    run.set_version("2.0.0");
    run.step(10);
    run.command(ANNOTATION_PROMOTE, "early");
    let held = run.step(20);
    assert_eq!(
        run.weights(),
        (100, 0),
        "no switch to a slot that is not ready"
    );
    assert!(
        !run.status().acknowledged.contains_key(ANNOTATION_PROMOTE),
        "the promote is still pending"
    );
    assert!(
        !held
            .actions
            .iter()
            .any(|a| matches!(a, RolloutAction::Acknowledged(_))),
        "{:?}",
        held.actions
    );
    run.ready(Slot::Green);
    let promoted = run.step(30);
    assert_eq!(
        promoted.actions,
        vec![
            RolloutAction::Promoted {
                stable: Slot::Green
            },
            RolloutAction::Acknowledged(format!("{ANNOTATION_PROMOTE}=early")),
        ]
    );
    assert_eq!(run.status().acknowledged[ANNOTATION_PROMOTE], "early");
}

#[test]
fn a_promote_held_by_spec_paused_is_carried_out_on_resume() {
    let mut run = steady(blue_green(serde_json::json!({"autoPromote": false})));
    run.set_version("2.0.0");
    run.step(10);
    run.ready(Slot::Green);
    run.app.spec.paused = true;
    run.command(ANNOTATION_PROMOTE, "p1");
    run.step(20);
    assert_eq!(
        run.status().active_slot,
        Some(Slot::Blue),
        "paused holds it"
    );
    run.app.spec.paused = false;
    run.step(30);
    assert_eq!(run.status().active_slot, Some(Slot::Green));
    assert_eq!(run.status().acknowledged[ANNOTATION_PROMOTE], "p1");
}

#[test]
fn a_canary_promote_given_during_a_weight_step_skips_the_next_pause() {
    let mut run = steady(canary_spec());
    run.set_version("2.0.0");
    run.step(10);
    run.ready(Slot::Green);
    run.command(ANNOTATION_PROMOTE, "skip");
    run.step(11);
    assert_eq!(
        run.weights(),
        (80, 20),
        "the weight step itself is carried out"
    );
    assert!(!run.status().acknowledged.contains_key(ANNOTATION_PROMOTE));
    run.step(12);
    let rollout = run.status().rollout.clone().unwrap();
    assert_eq!(rollout.step_index, 2, "the 60 s pause was skipped");
    assert_eq!(run.status().acknowledged[ANNOTATION_PROMOTE], "skip");
    run.step(13);
    run.step(14);
    assert!(
        run.step(15).paused,
        "the indefinite pause waits for a second promote"
    );
}

#[test]
fn blue_green_auto_promotion_after_a_delay() {
    let mut run = steady(blue_green(
        serde_json::json!({"autoPromoteAfterSeconds": 60}),
    ));
    run.set_version("2.0.0");
    run.step(10);
    run.ready(Slot::Green);
    let first = run.step(20);
    assert_eq!(first.requeue_after, Some(Duration::from_secs(60)));
    run.step(79);
    assert_eq!(run.status().active_slot, Some(Slot::Blue));
    run.step(80);
    assert_eq!(run.status().active_slot, Some(Slot::Green));
}

#[test]
fn canary_walks_the_steps_with_exactly_the_named_weights() {
    let mut run = steady(canary_spec());
    run.set_version("2.0.0");
    run.step(10);
    assert_eq!(run.weights(), (100, 0));
    let cases: &[WalkCase] = &[
        (11, false, None, (100, 0), 0, false),
        (12, true, None, (80, 20), 1, false),
        (13, true, None, (80, 20), 1, false),
        (71, true, None, (80, 20), 1, false),
        (72, true, None, (80, 20), 2, false),
        (73, true, None, (50, 50), 3, false),
        (74, true, None, (50, 50), 3, true),
        (500, true, None, (50, 50), 3, true),
        (501, true, Some("go"), (50, 50), 4, false),
        (502, true, None, (20, 80), 5, false),
    ];
    for (second, ready, promote, weights, index, paused) in cases {
        if *ready {
            run.ready(Slot::Green);
        }
        if let Some(token) = promote {
            run.command(ANNOTATION_PROMOTE, token);
        }
        let decision = run.step(*second);
        assert_eq!(run.weights(), *weights, "at {second}");
        assert_eq!(
            run.status().rollout.as_ref().unwrap().step_index,
            *index,
            "at {second}"
        );
        assert_eq!(decision.paused, *paused, "at {second}");
        assert_eq!(run.status().active_slot, Some(Slot::Blue), "at {second}");
    }
    let done = run.step(503);
    assert_eq!(
        done.actions,
        vec![RolloutAction::Promoted {
            stable: Slot::Green
        }]
    );
    assert_eq!(run.weights(), (0, 100));
    assert!(run.status().rollout.is_none());
}

#[test]
fn promote_full_skips_the_remaining_steps() {
    let mut run = steady(canary_spec());
    run.set_version("2.0.0");
    run.step(10);
    run.ready(Slot::Green);
    run.step(11);
    assert_eq!(run.weights(), (80, 20));
    run.command(ANNOTATION_PROMOTE_FULL, "now");
    run.step(12);
    assert_eq!(run.weights(), (0, 100));
    assert_eq!(run.status().active_slot, Some(Slot::Green));
}

#[test]
fn abort_returns_all_traffic_to_stable_and_holds_until_retry_or_a_new_spec() {
    let mut run = steady(canary_spec());
    run.set_version("2.0.0");
    run.step(10);
    run.ready(Slot::Green);
    run.step(11);
    assert_eq!(run.weights(), (80, 20));
    run.command(ANNOTATION_ABORT, "a1");
    let aborted = run.step(12);
    assert_eq!(
        aborted.actions,
        vec![
            RolloutAction::Aborted("AbortedByUser".into()),
            RolloutAction::Acknowledged(format!("{ANNOTATION_ABORT}=a1"))
        ]
    );
    assert_eq!(run.weights(), (100, 0));
    let rollout = run.status().rollout.clone().unwrap();
    assert_eq!(rollout.abort_reason.as_deref(), Some("AbortedByUser"));
    assert!(!run.slot(Slot::Green).scaled_down);
    // Nothing moves while aborted, however long.
    run.step(41);
    assert_eq!(run.weights(), (100, 0));
    assert!(!run.slot(Slot::Green).scaled_down);
    let down = run.step(42);
    assert_eq!(down.actions, vec![RolloutAction::ScaledDown(Slot::Green)]);
    run.step(1000);
    assert_eq!(run.weights(), (100, 0));
    assert_eq!(
        run.status()
            .rollout
            .as_ref()
            .unwrap()
            .abort_reason
            .as_deref(),
        Some("AbortedByUser")
    );

    run.command(ANNOTATION_RETRY, "r1");
    let retried = run.step(1001);
    assert_eq!(
        retried.actions,
        vec![
            RolloutAction::Retried,
            RolloutAction::Acknowledged(format!("{ANNOTATION_RETRY}=r1"))
        ]
    );
    let rollout = run.status().rollout.clone().unwrap();
    assert_eq!((rollout.step_index, rollout.weight), (0, 0));
    assert_eq!(rollout.abort_reason, None);
    assert!(!run.slot(Slot::Green).scaled_down, "scaled up again");
}

#[test]
fn a_candidate_that_never_becomes_available_aborts_at_the_progress_deadline() {
    let mut run = steady(
        serde_json::json!({"version": "1.0.0", "strategy": {"progressDeadlineSeconds": 120}}),
    );
    run.set_version("2.0.0");
    run.step(10);
    let waiting = run.step(100);
    assert_eq!(waiting.requeue_after, Some(Duration::from_secs(30)));
    let aborted = run.step(130);
    assert_eq!(
        aborted.actions,
        vec![RolloutAction::Aborted("ProgressDeadlineExceeded".into())]
    );
    assert_eq!(run.status().active_slot, Some(Slot::Blue));
}

#[test]
fn a_failed_analysis_aborts() {
    let mut run = steady(
        serde_json::json!({"version": "1.0.0", "strategy": {"type": "Canary", "canary": {"steps": [
            {"setWeight": 10}, {"analysis": {"maxErrorRate": 0.01}}, {"setWeight": 50}
        ]}}}),
    );
    run.set_version("2.0.0");
    run.step(10);
    run.ready(Slot::Green);
    run.step(11);
    let waiting = run.step(12);
    assert_eq!(waiting.actions, vec![], "no verdict yet: wait");
    run.observed.analysis = Some(Verdict::Failed);
    let aborted = run.step(13);
    assert_eq!(
        aborted.actions,
        vec![
            RolloutAction::Analysis(Verdict::Failed),
            RolloutAction::Aborted("AnalysisFailed".into())
        ]
    );
    assert_eq!(run.weights(), (100, 0));
    assert_eq!(run.status().rollout.as_ref().unwrap().analysis.failed, 1);
}

#[test]
fn setting_the_version_back_is_an_instant_rollback() {
    let mut run = steady(canary_spec());
    run.set_version("2.0.0");
    run.step(10);
    run.ready(Slot::Green);
    run.step(11);
    assert_eq!(run.weights(), (80, 20));
    run.set_version("1.0.0");
    let back = run.step(12);
    assert_eq!(back.actions, vec![RolloutAction::RolledBack]);
    assert_eq!(run.weights(), (100, 0));
    assert!(run.status().rollout.is_none());
    assert_eq!(run.slot(Slot::Green).role, SlotRole::Previous);
}

#[test]
fn a_new_revision_mid_rollout_starts_over_from_zero_weight() {
    let mut run = steady(canary_spec());
    run.set_version("2.0.0");
    run.step(10);
    run.ready(Slot::Green);
    run.step(11);
    run.set_version("2.0.1");
    let restarted = run.step(12);
    assert!(matches!(
        restarted.actions[..],
        [RolloutAction::Restarted { .. }]
    ));
    assert_eq!(run.weights(), (100, 0));
    assert_eq!(run.slot(Slot::Green).version, "2.0.1");
    // The green Deployments still run 2.0.0: not ready at the new revision.
    run.step(13);
    assert_eq!(run.weights(), (100, 0));
}

#[test]
fn a_lost_active_slot_is_recovered_from_the_entry_service() {
    let mut run = steady(blue_green(serde_json::json!({})));
    run.set_version("2.0.0");
    run.step(10);
    run.ready(Slot::Green);
    run.step(11);
    assert_eq!(run.status().active_slot, Some(Slot::Green));
    // Status wiped; the entry Service still selects green.
    run.app.status = None;
    run.observed.entry_slot = Some(Slot::Green);
    let recovered = run.step(12);
    assert!(
        recovered
            .actions
            .contains(&RolloutAction::RecoveredActiveSlot(Slot::Green)),
        "{:?}",
        recovered.actions
    );
    assert_eq!(run.status().active_slot, Some(Slot::Green));
    assert!(run.status().rollout.is_none(), "green runs the spec");
    assert_eq!(run.weights(), (0, 100));
}

#[test]
fn an_unrecorded_stable_slot_running_something_else_is_left_alone() {
    let mut run = Run::new(serde_json::json!({"version": "2.0.0"}));
    run.observed.entry_slot = Some(Slot::Blue);
    run.observed.slots.insert(
        Slot::Blue,
        SlotObservation {
            deployments: 5,
            revision: Some("0123456789".into()),
            available: 5,
            deadline_exceeded: false,
        },
    );
    let decision = run.step(0);
    let blue = run.slot(Slot::Blue);
    assert_eq!(
        (blue.template.is_none(), blue.template_hash.as_str()),
        (true, "0123456789"),
        "not re-rendered from the spec"
    );
    assert!(decision.actions.iter().any(|a| matches!(
        a,
        RolloutAction::Started {
            candidate: Slot::Green,
            ..
        }
    )));
    assert_eq!(run.weights(), (100, 0));
}

#[test]
fn the_stable_slot_never_changes_during_a_rollout() {
    let mut run = steady(canary_spec());
    let blue = run.slot(Slot::Blue).clone();
    run.set_version("2.0.0");
    run.step(10);
    run.ready(Slot::Green);
    for second in 11..80 {
        if second == 40 {
            run.unready(Slot::Green);
        }
        if second == 45 {
            run.ready(Slot::Green);
        }
        run.step(second);
        let now = run.slot(Slot::Blue);
        assert_eq!(
            (&now.template, &now.template_hash, now.role),
            (&blue.template, &blue.template_hash, SlotRole::Stable),
            "at {second}"
        );
        let (b, g) = run.weights();
        assert_eq!(b + g, 100);
        assert!([0, 20, 50].contains(&g), "weight {g} is not a step's");
    }
}

#[test]
fn pausing_holds_the_rollout() {
    let mut run = steady(canary_spec());
    run.set_version("2.0.0");
    run.step(10);
    run.ready(Slot::Green);
    run.app.spec.paused = true;
    let paused = run.step(11);
    assert!(paused.paused);
    assert_eq!(run.weights(), (100, 0));
    run.app.spec.paused = false;
    run.step(12);
    assert_eq!(run.weights(), (80, 20));
}

#[test]
fn same_inputs_same_outputs() {
    let mut run = steady(canary_spec());
    run.set_version("2.0.0");
    run.step(2);
    run.ready(Slot::Green);
    let a = next_state(&run.app, &run.observed, &at(5));
    let b = next_state(&run.app, &run.observed, &at(5));
    assert_eq!(a, b);
}

#[test]
fn status_from_a_newer_operator_still_decodes() {
    let status: MessengerAppStatus = serde_json::from_value(serde_json::json!({
        "phase": "Exploding",
        "activeSlot": "blue",
        "slots": [{"name": "blue", "version": "1", "templateHash": "x", "role": "Shadow", "futureField": 1}],
        "somethingNew": {"a": 1}
    }))
    .unwrap();
    assert_eq!(status.phase, Some(Phase::Unknown));
    assert_eq!(status.slots[0].role, SlotRole::Unknown);
    let old: MessengerAppStatus =
        serde_json::from_value(serde_json::json!({"phase": "Ready"})).unwrap();
    assert_eq!(
        old.phase,
        Some(Phase::Healthy),
        "the phase older operators wrote"
    );
}

/// Random event sequences (readiness flaps, pauses, promotes, aborts, retries, analysis
/// verdicts, restarts, spec changes mid-rollout, a lost activeSlot) against the invariants
/// every state must keep. Seeded, so a failure names a reproducible sequence.
#[test]
fn invariants_hold_over_random_event_sequences() {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    let step_weights = [20, 50, 80];
    let allowed: Vec<i32> = [0, 100]
        .into_iter()
        .chain(step_weights)
        .chain(step_weights.map(|w| 100 - w))
        .collect();
    let mut seen = BTreeMap::<&str, usize>::new();
    for seed in 0..200u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let spec = if seed % 2 == 0 {
            canary_spec()
        } else {
            blue_green(serde_json::json!({"autoPromote": seed % 4 == 1}))
        };
        // Every third app migrates through Jobs, whose outcomes are events too.
        let migrating = seed % 3 == 0;
        let mut run = if migrating {
            steady_migrating(spec)
        } else {
            steady(spec)
        };
        let mut now = 10;
        let mut token = 0;
        let mut history = Vec::new();
        for _ in 0..60 {
            now += rng.random_range(0..120);
            token += 1;
            let event = rng.random_range(0..13);
            history.push(event);
            match event {
                0 | 1 => run.set_version(["2.0.0", "3.0.0", "1.0.0"][rng.random_range(0..3)]),
                2 | 3 => {
                    let candidate = run.status().rollout.as_ref().map(|r| r.candidate);
                    if let Some(slot) = candidate {
                        run.ready(slot);
                        if migrating {
                            run.migration_jobs(slot, JobState::Succeeded);
                        }
                    }
                }
                12 => {
                    if let Some(slot) = run.status().rollout.as_ref().map(|r| r.candidate)
                        && migrating
                    {
                        run.migration_jobs(slot, JobState::Failed);
                    }
                }
                4 => {
                    if let Some(slot) = run.status().rollout.as_ref().map(|r| r.candidate) {
                        run.unready(slot);
                    }
                }
                5 => run.command(ANNOTATION_PROMOTE, &token.to_string()),
                6 => run.command(ANNOTATION_PROMOTE_FULL, &token.to_string()),
                7 => run.command(ANNOTATION_ABORT, &token.to_string()),
                8 => run.command(ANNOTATION_RETRY, &token.to_string()),
                9 => run.app.spec.paused = !run.app.spec.paused,
                10 => {
                    run.observed.analysis = [
                        None,
                        Some(Verdict::Successful),
                        Some(Verdict::Failed),
                        Some(Verdict::Inconclusive),
                    ][rng.random_range(0..4)]
                }
                _ => {
                    // Status loses activeSlot; the entry Service still selects the live slot.
                    run.observed.entry_slot = run.status().active_slot;
                    if let Some(status) = run.app.status.as_mut() {
                        status.active_slot = None;
                    }
                }
            }
            let before = run.status().clone();
            let live = before
                .active_slot
                .or(run.observed.entry_slot)
                .unwrap_or_default();
            let stable_before = before
                .slots
                .iter()
                .find(|s| s.name == live)
                .map(|s| (s.template.clone(), s.template_hash.clone()));
            let decision = next_state(&run.app, &run.observed, &at(now));
            let again = next_state(&run.app, &run.observed, &at(now));
            let context = format!("seed {seed}, events {history:?}");
            assert_eq!(decision, again, "same inputs, same outputs: {context}");
            let status = &decision.status;
            let total: i32 = status.slots.iter().map(|s| s.weight).sum();
            assert_eq!(total, 100, "weights add up: {context}");
            for slot in &status.slots {
                assert!(
                    allowed.contains(&slot.weight),
                    "weight {} is not one the steps name: {context}",
                    slot.weight
                );
                assert!(
                    slot.weight == 0
                        || matches!(slot.migrations, None | Some(MigrationPhase::Succeeded)),
                    "traffic only reaches a slot whose migrations succeeded: {context}"
                );
            }
            let promoted = decision
                .actions
                .iter()
                .any(|a| matches!(a, RolloutAction::Promoted { .. }));
            if !promoted {
                assert_eq!(
                    status.active_slot,
                    Some(live),
                    "only a promotion moves the live slot: {context}"
                );
                let stable_after = status
                    .slots
                    .iter()
                    .find(|s| s.name == live)
                    .map(|s| (s.template.clone(), s.template_hash.clone()));
                if stable_before.is_some() {
                    assert_eq!(
                        stable_after, stable_before,
                        "the stable slot's inputs never change during a rollout: {context}"
                    );
                }
            }
            if let Some(rollout) = &status.rollout {
                if rollout.abort_reason.is_some() {
                    assert_eq!(
                        rollout.weight, 0,
                        "abort means all traffic on stable: {context}"
                    );
                }
                let candidate_ready = run
                    .observed
                    .slot(rollout.candidate)
                    .ready_at(&rollout.revision);
                if rollout.abort_reason.is_none() && !decision.paused && candidate_ready {
                    assert!(
                        decision.requeue_after.is_some(),
                        "a moving rollout always knows when to look again: {context}"
                    );
                }
            }
            for action in &decision.actions {
                let kind = match action {
                    RolloutAction::Promoted { .. } => "promoted",
                    RolloutAction::Aborted(_) => "aborted",
                    RolloutAction::SetWeight(_) => "weight",
                    RolloutAction::RolledBack => "rolled back",
                    RolloutAction::Restarted { .. } => "restarted",
                    RolloutAction::Retried => "retried",
                    RolloutAction::RecoveredActiveSlot(_) => "recovered",
                    RolloutAction::MigrationFailed { .. } => "migration failed",
                    _ => continue,
                };
                *seen.entry(kind).or_default() += 1;
            }
            run.app.status = Some(decision.status.clone());
            run.observed.entry_slot = decision.status.active_slot;
        }
    }
    // The sequences must reach every kind of transition, or the invariants prove little.
    for kind in [
        "promoted",
        "aborted",
        "weight",
        "rolled back",
        "restarted",
        "retried",
        "recovered",
        "migration failed",
    ] {
        assert!(seen.get(kind).copied().unwrap_or(0) > 5, "{kind}: {seen:?}");
    }
}

#[test]
fn analysis_measures_the_candidate_gateways_over_an_interval() {
    use crate::analysis::MetricsSample;
    let mut run = steady(
        serde_json::json!({"version": "1.0.0", "strategy": {"type": "Canary", "canary": {"steps": [
            {"setWeight": 10},
            {"analysis": {"maxErrorRate": 0.05, "intervalSeconds": 60, "minRequests": 10, "failureLimit": 2, "inconclusiveLimit": 2}},
            {"setWeight": 50}
        ]}}}),
    );
    run.set_version("2.0.0");
    run.step(10);
    run.ready(Slot::Green);
    run.step(11);
    assert_eq!(run.weights(), (90, 10));
    let sample = |requests: f64, errors: f64| {
        Some(MetricsSample {
            requests,
            errors,
            buckets: Vec::new(),
        })
    };
    let cases: &[MeasureCase] = &[
        (12, 100.0, 0.0, None, (0, 0, 0), None),
        (40, 150.0, 0.0, None, (0, 0, 0), None),
        (72, 105.0, 0.0, Some(Verdict::Inconclusive), (0, 0, 1), None),
        (132, 205.0, 50.0, Some(Verdict::Failed), (0, 1, 1), None),
        (192, 305.0, 51.0, Some(Verdict::Successful), (1, 1, 1), None),
    ];
    for (second, requests, errors, verdict, counts, aborted) in cases {
        run.observed.gateway_metrics = sample(*requests, *errors);
        let decision = run.step(*second);
        let analysed: Vec<Verdict> = decision
            .actions
            .iter()
            .filter_map(|a| match a {
                RolloutAction::Analysis(v) => Some(*v),
                _ => None,
            })
            .collect();
        assert_eq!(analysed.first().copied(), *verdict, "at {second}");
        let rollout = run.status().rollout.clone().unwrap();
        let a = &rollout.analysis;
        assert_eq!(
            (a.successful, a.failed, a.inconclusive),
            *counts,
            "at {second}"
        );
        assert_eq!(rollout.abort_reason.as_deref(), *aborted, "at {second}");
    }
    run.step(193);
    assert_eq!(run.weights(), (50, 50), "a successful analysis moves on");
}

#[test]
fn reaching_the_failure_limit_aborts() {
    use crate::analysis::MetricsSample;
    let mut run = steady(
        serde_json::json!({"version": "1.0.0", "strategy": {"type": "Canary", "canary": {"steps": [
            {"setWeight": 10},
            {"analysis": {"maxErrorRate": 0.01, "intervalSeconds": 30, "minRequests": 1}}
        ]}}}),
    );
    run.set_version("2.0.0");
    run.step(10);
    run.ready(Slot::Green);
    run.step(11);
    for (second, requests, errors) in [(12, 10.0, 0.0), (42, 110.0, 10.0)] {
        run.observed.gateway_metrics = Some(MetricsSample {
            requests,
            errors,
            buckets: Vec::new(),
        });
        run.step(second);
    }
    let rollout = run.status().rollout.clone().unwrap();
    assert_eq!(rollout.abort_reason.as_deref(), Some("AnalysisFailed"));
    assert_eq!(run.weights(), (100, 0));
}

#[test]
fn background_analysis_aborts_a_canary_during_a_pause() {
    use crate::analysis::MetricsSample;
    let mut run = steady(
        serde_json::json!({"version": "1.0.0", "strategy": {"type": "Canary", "canary": {
            "analysis": {"maxErrorRate": 0.05, "intervalSeconds": 30, "minRequests": 10},
            "steps": [{"setWeight": 10}, {"pause": {}}, {"setWeight": 50}]
        }}}),
    );
    run.set_version("2.0.0");
    run.step(10);
    run.ready(Slot::Green);
    let sample = |requests: f64, errors: f64| {
        Some(MetricsSample {
            requests,
            errors,
            buckets: Vec::new(),
        })
    };
    run.observed.gateway_metrics = sample(0.0, 0.0);
    run.step(11);
    assert_eq!(run.weights(), (90, 10));
    assert!(
        run.status()
            .rollout
            .as_ref()
            .unwrap()
            .background_baseline
            .is_none(),
        "no measurement before the candidate carries traffic"
    );
    let paused = run.step(12);
    assert!(paused.paused);
    assert!(
        run.status()
            .rollout
            .as_ref()
            .unwrap()
            .background_baseline
            .is_some()
    );
    run.observed.gateway_metrics = sample(100.0, 1.0);
    run.step(42);
    assert_eq!(
        run.status().rollout.as_ref().unwrap().analysis.successful,
        1
    );
    run.observed.gateway_metrics = sample(200.0, 31.0);
    let aborted = run.step(72);
    assert!(
        aborted
            .actions
            .contains(&RolloutAction::Aborted("BackgroundAnalysisFailed".into())),
        "{:?}",
        aborted.actions
    );
    assert_eq!(run.weights(), (100, 0));
}

impl Run {
    /// Every migration Job of `slot` at its recorded revision is in `state`.
    fn migration_jobs(&mut self, slot: Slot, state: JobState) {
        let revision = self.slot(slot).template_hash.clone();
        for component in migrating_components() {
            let name = migration_job_name(&self.app, component, slot, &revision);
            self.observed.jobs.insert(name, state);
        }
    }
}

fn with_migrations(mut spec: serde_json::Value) -> serde_json::Value {
    spec["migrations"] = serde_json::json!({"enabled": true});
    spec
}

/// A steady migrating app: blue at 1.0.0, migrated and Available.
fn steady_migrating(spec: serde_json::Value) -> Run {
    let mut run = Run::new(with_migrations(spec));
    run.step(0);
    run.migration_jobs(Slot::Blue, JobState::Succeeded);
    run.step(1);
    run.ready(Slot::Blue);
    run.step(2);
    run
}

#[test]
fn the_first_slot_starts_only_after_its_migration_jobs_succeeded() {
    let mut run = Run::new(with_migrations(canary_spec()));
    let cases: &[(i64, Option<JobState>, MigrationPhase, Vec<RolloutAction>)] = &[
        (0, None, MigrationPhase::Pending, vec![]),
        (5, Some(JobState::Running), MigrationPhase::Pending, vec![]),
        (
            9,
            Some(JobState::Succeeded),
            MigrationPhase::Succeeded,
            vec![RolloutAction::MigrationsSucceeded(Slot::Blue)],
        ),
        // Final: Jobs deleted later (or by hand) do not stop a migrated slot.
        (10, None, MigrationPhase::Succeeded, vec![]),
    ];
    for (second, jobs, phase, actions) in cases {
        run.observed.jobs.clear();
        if let Some(state) = jobs {
            run.migration_jobs(Slot::Blue, *state);
        }
        let decision = run.step(*second);
        assert_eq!(decision.actions, *actions, "t={second}");
        assert_eq!(run.slot(Slot::Blue).migrations, Some(*phase), "t={second}");
        assert!(run.status().rollout.is_none(), "t={second}");
    }
}

#[test]
fn a_failed_first_migration_holds_the_slot_until_retry_runs_it_again() {
    let mut run = Run::new(with_migrations(blue_green(serde_json::json!({}))));
    run.step(0);
    run.migration_jobs(Slot::Blue, JobState::Failed);
    let failed = run.step(5);
    assert!(matches!(
        failed.actions.as_slice(),
        [RolloutAction::MigrationFailed { slot: Slot::Blue, job }] if job.starts_with("demo-auth-blue-")
    ));
    assert_eq!(
        run.slot(Slot::Blue).migrations,
        Some(MigrationPhase::Failed)
    );
    run.step(100);
    assert_eq!(
        run.slot(Slot::Blue).migrations,
        Some(MigrationPhase::Failed),
        "final"
    );
    run.command(ANNOTATION_RETRY, "r1");
    let retried = run.step(101);
    assert_eq!(
        retried.actions,
        vec![
            RolloutAction::Retried,
            RolloutAction::Acknowledged(format!("{ANNOTATION_RETRY}=r1"))
        ]
    );
    assert_eq!(
        run.slot(Slot::Blue).migrations,
        Some(MigrationPhase::Pending)
    );
}

#[test]
fn a_rollout_gates_on_its_migrations_and_a_failed_one_aborts_before_any_traffic_moves() {
    for (strategy, spec) in [
        ("BlueGreen", blue_green(serde_json::json!({}))),
        ("Canary", canary_spec()),
    ] {
        for outcome in [JobState::Succeeded, JobState::Failed] {
            let case = format!("{strategy}, Jobs {outcome:?}");
            let mut run = steady_migrating(spec.clone());
            run.set_version("2.0.0");
            run.step(10);
            assert_eq!(
                run.slot(Slot::Green).migrations,
                Some(MigrationPhase::Pending),
                "{case}"
            );
            // Even Deployments that look Available (left from an earlier rollout at the
            // same revision) move nothing before the migrations are done.
            run.ready(Slot::Green);
            run.migration_jobs(Slot::Green, JobState::Running);
            let waiting = run.step(11);
            assert_eq!(waiting.actions, vec![], "{case}");
            assert_eq!(run.weights(), (100, 0), "{case}");
            assert_eq!(run.status().active_slot, Some(Slot::Blue), "{case}");

            run.migration_jobs(Slot::Green, outcome);
            let decided = run.step(12);
            match outcome {
                JobState::Failed => {
                    assert!(
                        matches!(
                            decided.actions.as_slice(),
                            [
                                RolloutAction::MigrationFailed { slot: Slot::Green, .. },
                                RolloutAction::Aborted(reason),
                            ] if reason == "MigrationFailed"
                        ),
                        "{case}: {:?}",
                        decided.actions
                    );
                    assert_eq!(run.weights(), (100, 0), "{case}");
                    assert_eq!(run.status().active_slot, Some(Slot::Blue), "{case}");
                    assert_eq!(
                        run.status()
                            .rollout
                            .as_ref()
                            .and_then(|r| r.abort_reason.as_deref()),
                        Some("MigrationFailed"),
                        "{case}"
                    );
                    // Stays aborted; retry runs the migrations again.
                    run.step(13);
                    assert_eq!(run.weights(), (100, 0), "{case}");
                    run.command(ANNOTATION_RETRY, "r1");
                    let retried = run.step(14);
                    assert_eq!(
                        retried.actions,
                        vec![
                            RolloutAction::Retried,
                            RolloutAction::Acknowledged(format!("{ANNOTATION_RETRY}=r1"))
                        ],
                        "{case}"
                    );
                    assert_eq!(
                        run.slot(Slot::Green).migrations,
                        Some(MigrationPhase::Pending),
                        "{case}"
                    );
                }
                _ => {
                    assert_eq!(
                        decided.actions.first(),
                        Some(&RolloutAction::MigrationsSucceeded(Slot::Green)),
                        "{case}"
                    );
                    let moved = if strategy == "BlueGreen" {
                        (0, 100)
                    } else {
                        (80, 20)
                    };
                    assert_eq!(run.weights(), moved, "{case}");
                }
            }
        }
    }
}

#[test]
fn a_new_revision_mid_rollout_waits_for_its_own_migrations() {
    let mut run = steady_migrating(canary_spec());
    run.set_version("2.0.0");
    run.step(10);
    run.migration_jobs(Slot::Green, JobState::Succeeded);
    run.step(11);
    assert_eq!(
        run.slot(Slot::Green).migrations,
        Some(MigrationPhase::Succeeded)
    );
    run.set_version("2.0.1");
    run.step(12);
    assert_eq!(
        run.slot(Slot::Green).migrations,
        Some(MigrationPhase::Pending),
        "the old revision's Jobs say nothing about the new one"
    );
    run.ready(Slot::Green);
    run.step(13);
    assert_eq!(run.weights(), (100, 0));
}

#[test]
fn a_retry_deletes_the_failed_jobs_and_creates_them_again() {
    use crate::builders::{ApiCapabilities, build_children_for};
    use crate::controller::plan_migration_jobs;
    let mut run = steady_migrating(blue_green(serde_json::json!({})));
    run.set_version("2.0.0");
    run.step(10);
    let children = build_children_for(&run.app, run.status(), ApiCapabilities::ALL);
    let names = |jobs: Vec<&k8s_openapi::api::batch::v1::Job>| -> Vec<String> {
        jobs.iter().map(|j| j.name_any()).collect()
    };
    let (delete, create) = plan_migration_jobs(&children.jobs, run.status(), &run.observed.jobs);
    assert!(delete.is_empty());
    let green: Vec<String> = migrating_components()
        .map(|c| {
            migration_job_name(
                &run.app,
                c,
                Slot::Green,
                &run.slot(Slot::Green).template_hash,
            )
        })
        .collect();
    assert_eq!(
        names(create),
        green,
        "blue's Jobs exist, green's are created"
    );

    run.migration_jobs(Slot::Green, JobState::Failed);
    run.step(11);
    let (delete, create) = plan_migration_jobs(&children.jobs, run.status(), &run.observed.jobs);
    assert!(
        delete.is_empty() && create.is_empty(),
        "a failed Job is kept for its logs"
    );
    run.command(ANNOTATION_RETRY, "r1");
    run.step(12);
    let (delete, create) = plan_migration_jobs(&children.jobs, run.status(), &run.observed.jobs);
    assert_eq!(names(delete), green);
    assert_eq!(names(create), green);
}

fn scaled_canary_spec() -> serde_json::Value {
    serde_json::json!({"version": "1.0.0",
    "components": {"gateway": {"replicas": 4}, "chat": {"replicas": 2}},
    "ingress": {"host": "messenger.local", "className": "nginx"},
    "strategy": {"type": "Canary", "canary": {"steps": [
        {"setCanaryScale": {"replicas": 1}},
        {"setWeight": 10},
        {"setCanaryScale": {"matchTrafficWeight": true}},
        {"setWeight": 50},
        {"pause": {}}
    ]}}})
}

/// Pods per component of `slot` as the builders render `run`'s status.
fn pods(run: &Run, slot: Slot) -> Vec<i32> {
    let children = crate::builders::build_children_for(
        &run.app,
        run.status(),
        crate::builders::ApiCapabilities::ALL,
    );
    crate::component::Component::ALL
        .into_iter()
        .map(|c| {
            let name = crate::builders::workload_name(&run.app, c, slot);
            children
                .deployments
                .iter()
                .find(|d| d.metadata.name.as_deref() == Some(name.as_str()))
                .and_then(|d| d.spec.replicas)
                .unwrap_or(-1)
        })
        .collect()
}

#[test]
fn set_canary_scale_sizes_the_candidate_and_it_is_full_again_before_it_takes_all_traffic() {
    let mut run = steady(scaled_canary_spec());
    run.set_version("2.0.0");
    run.step(10);
    // (second, weights, candidate pods per component: gateway, auth, users, friends, chat,
    // step index, action)
    type Case = (i64, (i32, i32), [i32; 5], i32, Option<RolloutAction>);
    let cases: &[Case] = &[
        (
            11,
            (100, 0),
            [1, 1, 1, 1, 1],
            1,
            Some(RolloutAction::SetCanaryScale(crate::crd::SetCanaryScale {
                replicas: Some(1),
                ..Default::default()
            })),
        ),
        (
            12,
            (90, 10),
            [1, 1, 1, 1, 1],
            2,
            Some(RolloutAction::SetWeight(10)),
        ),
        (13, (90, 10), [1, 1, 1, 1, 1], 3, None),
        (
            14,
            (50, 50),
            [2, 1, 1, 1, 1],
            4,
            Some(RolloutAction::SetWeight(50)),
        ),
    ];
    for (second, weights, expected, index, action) in cases {
        run.ready(Slot::Green);
        let decision = run.step(*second);
        assert_eq!(run.weights(), *weights, "at {second}");
        assert_eq!(pods(&run, Slot::Green), expected.to_vec(), "at {second}");
        assert_eq!(
            pods(&run, Slot::Blue),
            vec![4, 1, 1, 1, 2],
            "stable untouched at {second}"
        );
        assert_eq!(
            run.status().rollout.as_ref().unwrap().step_index,
            *index,
            "at {second}"
        );
        if let Some(action) = action {
            assert!(
                decision.actions.contains(action),
                "at {second}: {:?}",
                decision.actions
            );
        }
    }
    assert_eq!(
        run.status().rollout.as_ref().unwrap().canary_scale,
        Some(crate::crd::SetCanaryScale {
            match_traffic_weight: Some(true),
            ..Default::default()
        })
    );

    // Promote past the last pause: first back to full size, and only once that is
    // Available does the candidate take all traffic.
    run.command(ANNOTATION_PROMOTE, "go");
    run.step(20);
    let reset = run.step(21);
    assert_eq!(reset.actions, vec![RolloutAction::CanaryScaleReset]);
    assert_eq!(pods(&run, Slot::Green), vec![4, 1, 1, 1, 2]);
    assert_eq!(run.weights(), (50, 50), "no switch while scaling up");
    run.unready(Slot::Green);
    run.step(22);
    assert_eq!(run.weights(), (50, 50), "still scaling up");
    run.ready(Slot::Green);
    let done = run.step(23);
    assert_eq!(
        done.actions,
        vec![RolloutAction::Promoted {
            stable: Slot::Green
        }]
    );
    assert_eq!(run.weights(), (0, 100));
    assert_eq!(pods(&run, Slot::Green), vec![4, 1, 1, 1, 2]);
}

#[test]
fn promote_full_of_a_scaled_canary_scales_up_before_switching() {
    let mut run = steady(scaled_canary_spec());
    run.set_version("2.0.0");
    run.step(10);
    run.ready(Slot::Green);
    run.step(11);
    run.step(12);
    assert_eq!(run.weights(), (90, 10));
    run.command(ANNOTATION_PROMOTE_FULL, "now");
    let reset = run.step(13);
    assert_eq!(
        reset.actions,
        vec![RolloutAction::CanaryScaleReset],
        "promote --full waits for the full candidate"
    );
    assert_eq!(run.weights(), (90, 10));
    assert_eq!(run.status().active_slot, Some(Slot::Blue));
    let done = run.step(14);
    assert_eq!(
        done.actions,
        vec![
            RolloutAction::Promoted {
                stable: Slot::Green
            },
            RolloutAction::Acknowledged(format!("{ANNOTATION_PROMOTE_FULL}=now"))
        ]
    );
    assert_eq!(run.weights(), (0, 100));
}

#[test]
fn prometheus_windows_are_judged_once_an_interval_and_silence_is_inconclusive() {
    use crate::analysis::MetricsSample;
    let mut run = steady(
        serde_json::json!({"version": "1.0.0", "strategy": {"type": "Canary", "canary": {
        "prometheus": {"url": "http://prometheus:9090"},
        "steps": [
            {"setWeight": 10},
            {"analysis": {"maxErrorRate": 0.05, "intervalSeconds": 60, "minRequests": 10, "failureLimit": 2, "inconclusiveLimit": 2}},
            {"setWeight": 50}
        ]}}}),
    );
    run.set_version("2.0.0");
    run.step(10);
    run.ready(Slot::Green);
    run.step(11);
    assert_eq!(wants_gateway_metrics(&run.app), Some((Slot::Green, 60)));
    run.observed.metrics_window = true;
    // What Prometheus counted over the interval (no answer: None), not running totals.
    let window = |requests: f64, errors: f64| {
        Some(MetricsSample {
            requests,
            errors,
            buckets: Vec::new(),
        })
    };
    // (second, what Prometheus answers, verdict, counts: successful, failed, inconclusive)
    type WindowCase = (i64, Option<MetricsSample>, Option<Verdict>, (i32, i32, i32));
    let cases: &[WindowCase] = &[
        // The step's start only times the first window.
        (12, window(500.0, 0.0), None, (0, 0, 0)),
        (40, window(500.0, 0.0), None, (0, 0, 0)),
        (72, None, Some(Verdict::Inconclusive), (0, 0, 1)),
        (132, window(100.0, 20.0), Some(Verdict::Failed), (0, 1, 1)),
        (150, window(100.0, 0.0), None, (0, 1, 1)),
        (
            192,
            window(100.0, 1.0),
            Some(Verdict::Successful),
            (1, 1, 1),
        ),
    ];
    for (second, metrics, verdict, counts) in cases {
        run.observed.gateway_metrics = metrics.clone();
        let decision = run.step(*second);
        let analysed = decision.actions.iter().find_map(|a| match a {
            RolloutAction::Analysis(v) => Some(*v),
            _ => None,
        });
        assert_eq!(analysed, *verdict, "at {second}");
        let rollout = run.status().rollout.clone().unwrap();
        let a = &rollout.analysis;
        assert_eq!(
            (a.successful, a.failed, a.inconclusive),
            *counts,
            "at {second}"
        );
    }
    run.step(193);
    assert_eq!(run.weights(), (50, 50));
}
