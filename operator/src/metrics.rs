//! Prometheus metrics of the controller: reconcile runs, failures, duration and the phase of
//! every app.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::crd::Phase;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub error: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    pub namespace: String,
    pub name: String,
    pub phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AppLabels {
    pub namespace: String,
    pub name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AbortLabels {
    pub reason: String,
}

#[derive(Clone)]
pub struct Metrics {
    pub reconciles: Counter,
    pub failures: Family<ErrorLabels, Counter>,
    pub duration: Histogram,
    pub app_phase: Family<PhaseLabels, Gauge>,
    pub leader: Gauge,
    /// Share of traffic on the candidate slot of each app's rollout (0 without one).
    pub rollout_weight: Family<AppLabels, Gauge>,
    /// Canary step index of each app's rollout.
    pub rollout_step: Family<AppLabels, Gauge>,
    /// Seconds from the start of a rollout to its promotion.
    pub rollout_duration: Histogram,
    pub rollout_aborts: Family<AbortLabels, Counter>,
    /// (namespace, name) of every app with phase series, so deleted ones can be dropped.
    known_apps: Arc<Mutex<BTreeSet<(String, String)>>>,
}

impl Metrics {
    /// Creates the metrics and registers them under `messenger_operator_*`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Metrics {
            reconciles: Counter::default(),
            failures: Family::default(),
            duration: Histogram::new([
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            app_phase: Family::default(),
            leader: Gauge::default(),
            rollout_weight: Family::default(),
            rollout_step: Family::default(),
            rollout_duration: Histogram::new([
                30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, 7200.0,
            ]),
            rollout_aborts: Family::default(),
            known_apps: Arc::default(),
        };
        let registry = registry.sub_registry_with_prefix("messenger_operator");
        registry.register("reconciles", "Reconcile runs", metrics.reconciles.clone());
        registry.register(
            "reconcile_errors",
            "Reconcile runs that failed, by error kind",
            metrics.failures.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Duration of one reconcile",
            metrics.duration.clone(),
        );
        registry.register(
            "app_phase",
            "1 for the current phase of each MessengerApp, 0 for the others",
            metrics.app_phase.clone(),
        );
        registry.register(
            "leader",
            "1 while this instance holds the leader lease",
            metrics.leader.clone(),
        );
        registry.register(
            "rollout_weight",
            "Percent of traffic on the candidate slot",
            metrics.rollout_weight.clone(),
        );
        registry.register(
            "rollout_step",
            "Current canary step index",
            metrics.rollout_step.clone(),
        );
        registry.register(
            "rollout_duration_seconds",
            "From the start of a rollout to its promotion",
            metrics.rollout_duration.clone(),
        );
        registry.register(
            "rollout_aborts",
            "Aborted rollouts by reason",
            metrics.rollout_aborts.clone(),
        );
        metrics
    }

    /// Rollout gauges of one app after a decision.
    pub fn set_rollout(&self, namespace: &str, name: &str, weight: i32, step: i32) {
        let labels = AppLabels {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        };
        self.rollout_weight
            .get_or_create(&labels)
            .set(i64::from(weight));
        self.rollout_step
            .get_or_create(&labels)
            .set(i64::from(step));
    }

    pub fn observe(&self, elapsed: Duration, error: Option<&'static str>) {
        self.reconciles.inc();
        self.duration.observe(elapsed.as_secs_f64());
        if let Some(error) = error {
            self.failures
                .get_or_create(&ErrorLabels {
                    error: error.to_owned(),
                })
                .inc();
        }
    }

    /// Drops the phase series of an app that no longer exists.
    pub fn forget_app(&self, namespace: &str, name: &str) {
        self.known_apps
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&(namespace.to_owned(), name.to_owned()));
        for candidate in Phase::ALL {
            self.app_phase.remove(&PhaseLabels {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                phase: candidate.as_str().to_owned(),
            });
        }
        let labels = AppLabels {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        };
        self.rollout_weight.remove(&labels);
        self.rollout_step.remove(&labels);
    }

    /// Drops the phase series of every app for which `exists` says no.
    pub fn forget_missing(&self, exists: impl Fn(&str, &str) -> bool) {
        let known: Vec<(String, String)> = self
            .known_apps
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect();
        for (namespace, name) in known {
            if !exists(&namespace, &name) {
                self.forget_app(&namespace, &name);
            }
        }
    }

    pub fn set_phase(&self, namespace: &str, name: &str, phase: Phase) {
        self.known_apps
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((namespace.to_owned(), name.to_owned()));
        for candidate in Phase::ALL {
            let labels = PhaseLabels {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                phase: candidate.as_str().to_owned(),
            };
            self.app_phase
                .get_or_create(&labels)
                .set(i64::from(candidate == phase));
        }
    }
}
