//! `rollout simulate` for the samples: the timelines are committed, so a change to the state
//! machine shows in review as a change of what users would live through. Regenerate with
//! `UPDATE_SNAPSHOTS=1`.

use messenger_operator::component::Component;
use messenger_operator::crd::{MessengerApp, Slot};
use messenger_operator::simulate::{
    DEFAULT_PROMOTE_AFTER_SECONDS, DEFAULT_READY_AFTER_SECONDS, Moment, Scenario, render_text,
    simulate,
};

fn sample(file: &str) -> MessengerApp {
    let path = format!("{}/../config/samples/{file}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn scenario(file: &str) -> Scenario {
    Scenario {
        app: sample(file),
        to_version: "0.2.0".into(),
        fail_analysis_at_step: None,
        unready: None,
        fail_migration: false,
        ready_after_seconds: DEFAULT_READY_AFTER_SECONDS,
        promote_after_seconds: DEFAULT_PROMOTE_AFTER_SECONDS,
    }
}

fn green(m: &Moment) -> i32 {
    m.weights.get(&Slot::Green).copied().unwrap_or(0)
}

#[test]
fn sample_timelines_are_as_committed() {
    for (file, snapshot) in [
        ("messengerapp_blue_green.yaml", "simulate_blue_green.txt"),
        ("messengerapp_canary.yaml", "simulate_canary.txt"),
        (
            "messengerapp_canary_gateway_api.yaml",
            "simulate_canary_gateway_api.txt",
        ),
    ] {
        let text = render_text(&simulate(&scenario(file)));
        let path = format!("{}/tests/snapshots/{snapshot}", env!("CARGO_MANIFEST_DIR"));
        if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
            std::fs::write(&path, &text).unwrap();
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == text,
            "{path} differs from the simulation of {file}; review and rerun with UPDATE_SNAPSHOTS=1:\n{text}"
        );
    }
}

#[test]
fn canary_sample_walks_its_weights_and_ends_on_the_new_slot() {
    let timeline = simulate(&scenario("messengerapp_canary.yaml"));
    let mut weights: Vec<i32> = timeline.iter().map(green).collect();
    weights.dedup();
    assert_eq!(weights, [0, 10, 30, 60, 100]);
    let last = timeline.last().unwrap();
    assert_eq!((last.stable, last.phase.as_str()), (Slot::Green, "Healthy"));
    assert_eq!(
        last.replicas.get(&Slot::Blue),
        Some(&0),
        "the old slot is scaled down at the end"
    );
}

#[test]
fn a_failed_analysis_sends_all_traffic_back_and_scales_the_candidate_down() {
    let mut failing = scenario("messengerapp_canary_gateway_api.yaml");
    failing.fail_analysis_at_step = Some(2);
    let timeline = simulate(&failing);
    let abort = timeline
        .iter()
        .position(|m| m.actions.iter().any(|a| a == "abort: AnalysisFailed"))
        .expect("the analysis at step 2 aborts");
    assert!(timeline[..abort].iter().any(|m| green(m) == 10));
    for m in &timeline[abort..] {
        assert_eq!(green(m), 0, "at {}", m.at_seconds);
        assert_eq!(m.stable, Slot::Blue);
        assert_eq!(m.phase, "Degraded");
    }
    assert_eq!(
        timeline.last().unwrap().replicas.get(&Slot::Green),
        Some(&0)
    );
}

#[test]
fn a_component_that_never_becomes_available_aborts_at_the_progress_deadline() {
    let mut stuck = scenario("messengerapp_blue_green.yaml");
    stuck.unready = Some(Component::Chat);
    let timeline = simulate(&stuck);
    let abort = timeline
        .iter()
        .find(|m| {
            m.actions
                .iter()
                .any(|a| a == "abort: ProgressDeadlineExceeded")
        })
        .expect("aborted");
    assert_eq!(abort.at_seconds, 600);
    assert!(
        timeline
            .iter()
            .all(|m| green(m) == 0 && m.stable == Slot::Blue)
    );
}

#[test]
fn a_failed_migration_aborts_before_the_new_slot_has_pods_or_traffic() {
    let mut failing = scenario("messengerapp_canary.yaml");
    failing.fail_migration = true;
    let timeline = simulate(&failing);
    let abort = timeline
        .iter()
        .find(|m| m.actions.iter().any(|a| a == "abort: MigrationFailed"))
        .expect("the failed migration aborts");
    assert!(
        abort
            .actions
            .iter()
            .any(|a| a.starts_with("migration of green failed (messenger-canary-nginx-auth-green-")),
        "{:?}",
        abort.actions
    );
    for m in &timeline {
        assert_eq!(green(m), 0, "at {}", m.at_seconds);
        assert_eq!(
            m.replicas.get(&Slot::Green),
            Some(&0),
            "at {}",
            m.at_seconds
        );
        assert_eq!(m.stable, Slot::Blue);
    }
    assert_eq!(timeline.last().unwrap().phase, "Degraded");
}

#[test]
fn set_canary_scale_shows_in_the_pods_of_each_moment() {
    let mut app = sample("messengerapp_canary.yaml");
    app.spec.components.gateway.replicas = 4;
    let canary = app.spec.strategy.canary.as_mut().unwrap();
    canary.steps = serde_json::from_value(serde_json::json!([
        {"setCanaryScale": {"replicas": 1}},
        {"setWeight": 10},
        {"setCanaryScale": {"matchTrafficWeight": true}},
        {"setWeight": 50},
        {"pause": {"durationSeconds": 30}}
    ]))
    .unwrap();
    let timeline = simulate(&Scenario {
        app,
        ..scenario("messengerapp_canary.yaml")
    });
    let pods_at = |weight: i32| {
        timeline
            .iter()
            .find(|m| green(m) == weight)
            .and_then(|m| m.replicas.get(&Slot::Green).copied())
    };
    // One pod per component at 10%; half the gateways (2 of 4) and one of each other at 50%.
    assert_eq!(pods_at(10), Some(5));
    assert_eq!(pods_at(50), Some(6));
    let reset = timeline
        .iter()
        .position(|m| {
            m.actions
                .iter()
                .any(|a| a == "scale candidate back to full")
        })
        .expect("scaled back before the switch");
    let promoted = timeline
        .iter()
        .position(|m| m.actions.iter().any(|a| a == "promote: green is stable"))
        .expect("promoted");
    assert!(reset < promoted);
    assert_eq!(timeline[reset].replicas.get(&Slot::Green), Some(&8));
    assert_eq!(timeline[reset].stable, Slot::Blue);
}
