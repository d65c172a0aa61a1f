//! Leader election on a `coordination.k8s.io/v1` Lease, the way client-go does it: writes
//! use the Lease's resourceVersion (optimistic concurrency), expiry is judged by when *this*
//! process last saw the Lease change (no trust in other nodes' clocks), and a leader that
//! cannot renew within `renew_deadline` (shorter than the lease) steps down before anyone
//! else may take over.
//!
//! Written here rather than taken from a crate because the crates at hand keep reporting
//! leadership while renewals fail, and the operator must stop writing at once.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::{Api, Client};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::error::{Error, Result};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseConfig {
    pub name: String,
    pub namespace: String,
    /// Unique per process, e.g. the pod name.
    pub identity: String,
    /// How long a lease is valid after its last renewal.
    pub lease_duration: Duration,
    /// A leader that has not renewed for this long steps down; must be < `lease_duration`.
    pub renew_deadline: Duration,
    /// Pause between attempts to acquire or renew.
    pub retry_period: Duration,
}

impl LeaseConfig {
    pub fn new(
        name: impl Into<String>,
        namespace: impl Into<String>,
        identity: impl Into<String>,
    ) -> Self {
        LeaseConfig {
            name: name.into(),
            namespace: namespace.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }

    /// Durations scaled from the lease duration in the usual 15 / 10 / 2 proportion.
    pub fn with_lease_duration(mut self, lease_duration: Duration) -> Self {
        self.lease_duration = lease_duration;
        self.renew_deadline = lease_duration.mul_f64(2.0 / 3.0);
        self.retry_period = lease_duration.mul_f64(2.0 / 15.0);
        self
    }
}

/// What this process should do with the Lease as last read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// No Lease yet: create it holding it.
    Create,
    /// We hold it: renew.
    Renew,
    /// Free or expired: take it over.
    Acquire,
    /// Someone else holds a live lease.
    Follow { holder: String },
}

/// The holder and renew time last seen, and when this process saw them change.
#[derive(Clone, Debug, PartialEq)]
pub struct Observation {
    pub holder: Option<String>,
    pub renew_time: Option<MicroTime>,
    pub seen_at: Instant,
}

impl Observation {
    /// Records a read of the Lease; the clock restarts only when holder or renew time moved.
    pub fn update(
        previous: Option<Observation>,
        spec: Option<&LeaseSpec>,
        now: Instant,
    ) -> Observation {
        let holder = spec
            .and_then(|s| s.holder_identity.clone())
            .filter(|h| !h.is_empty());
        let renew_time = spec.and_then(|s| s.renew_time.clone());
        match previous {
            Some(p) if p.holder == holder && p.renew_time == renew_time => p,
            _ => Observation {
                holder,
                renew_time,
                seen_at: now,
            },
        }
    }
}

/// Pure decision from the last read of the Lease.
pub fn decide(
    lease: Option<&LeaseSpec>,
    observation: &Observation,
    identity: &str,
    default_duration: Duration,
    now: Instant,
) -> Decision {
    let Some(spec) = lease else {
        return Decision::Create;
    };
    match &observation.holder {
        None => Decision::Acquire,
        Some(holder) if holder == identity => Decision::Renew,
        Some(holder) => {
            let duration = spec
                .lease_duration_seconds
                .and_then(|s| u64::try_from(s).ok())
                .map(Duration::from_secs)
                .unwrap_or(default_duration);
            if now.duration_since(observation.seen_at) > duration {
                Decision::Acquire
            } else {
                Decision::Follow {
                    holder: holder.clone(),
                }
            }
        }
    }
}

/// Runs leader election until `shutdown` resolves, publishing `true` while this process
/// leads. On shutdown a held lease is released so a follower takes over at once.
pub struct LeaderElector {
    api: Api<Lease>,
    config: LeaseConfig,
    observation: Option<Observation>,
    last_renewal: Option<Instant>,
}

impl LeaderElector {
    pub fn new(client: Client, config: LeaseConfig) -> Self {
        LeaderElector {
            api: Api::namespaced(client, &config.namespace),
            config,
            observation: None,
            last_renewal: None,
        }
    }

    pub async fn run(
        mut self,
        leading: watch::Sender<bool>,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        loop {
            let now = Instant::now();
            // A hung request must not hold leadership: a leader gets only what is left of its
            // renew deadline, so it stops writing before a follower can acquire.
            let bound = if *leading.borrow() {
                let since = self.last_renewal.map(|at| at.elapsed()).unwrap_or_default();
                self.config.renew_deadline.saturating_sub(since)
            } else {
                self.config.renew_deadline
            };
            let attempt = tokio::time::timeout(bound, self.try_acquire_or_renew(now)).await;
            let attempt = attempt.unwrap_or_else(|_| {
                Err(Error::LeaderElection(format!(
                    "lease request took longer than {bound:?}"
                )))
            });
            let leads = match attempt {
                Ok(held) => {
                    if held {
                        self.last_renewal = Some(now);
                    }
                    held
                }
                Err(error) => {
                    warn!(%error, "leader election: could not read or write the lease");
                    // Keep leading only while the last renewal is recent enough that nobody
                    // else can have taken the lease.
                    *leading.borrow()
                        && self
                            .last_renewal
                            .is_some_and(|at| at.elapsed() < self.config.renew_deadline)
                }
            };
            if *leading.borrow() != leads {
                if leads {
                    info!(identity = %self.config.identity, lease = %self.config.name, "became leader");
                } else {
                    warn!(identity = %self.config.identity, lease = %self.config.name, "lost leadership");
                }
            }
            leading.send_if_modified(|current| std::mem::replace(current, leads) != leads);

            // A leader must not sleep past its renew deadline.
            let pause = if leads {
                let since = self.last_renewal.map(|at| at.elapsed()).unwrap_or_default();
                self.config
                    .retry_period
                    .min(self.config.renew_deadline.saturating_sub(since))
            } else {
                self.config.retry_period
            };
            tokio::select! {
                _ = &mut shutdown => break,
                _ = tokio::time::sleep(pause) => {}
            }
            // Check the deadline as soon as we wake, before the next (maybe slow) request.
            if *leading.borrow()
                && self
                    .last_renewal
                    .is_none_or(|at| at.elapsed() >= self.config.renew_deadline)
            {
                warn!(identity = %self.config.identity, "renew deadline passed; stepping down");
                leading.send_replace(false);
            }
        }
        if *leading.borrow() {
            leading.send_replace(false);
            if let Err(error) = self.release().await {
                warn!(%error, "could not release the lease");
            }
        }
    }

    /// One round: read the Lease and create, renew or take it over as `decide` says.
    /// Returns whether this process holds the lease afterwards.
    pub async fn try_acquire_or_renew(&mut self, now: Instant) -> Result<bool> {
        let current = self.api.get_opt(&self.config.name).await?;
        let spec = current.as_ref().and_then(|l| l.spec.as_ref());
        let observation = Observation::update(self.observation.take(), spec, now);
        let lease_spec = current.as_ref().map(|_| spec.cloned().unwrap_or_default());
        let decision = decide(
            lease_spec.as_ref(),
            &observation,
            &self.config.identity,
            self.config.lease_duration,
            now,
        );
        self.observation = Some(observation);
        let wall = MicroTime(Timestamp::now());
        let seconds =
            i32::try_from(self.config.lease_duration.as_secs().max(1)).unwrap_or(i32::MAX);
        match decision {
            Decision::Follow { .. } => Ok(false),
            Decision::Create => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.config.name.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(LeaseSpec {
                        holder_identity: Some(self.config.identity.clone()),
                        lease_duration_seconds: Some(seconds),
                        acquire_time: Some(wall.clone()),
                        renew_time: Some(wall),
                        lease_transitions: Some(0),
                        ..LeaseSpec::default()
                    }),
                };
                match self.api.create(&PostParams::default(), &lease).await {
                    Ok(_) => Ok(true),
                    Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
                    Err(e) => Err(e.into()),
                }
            }
            Decision::Renew | Decision::Acquire => {
                let mut lease =
                    current.ok_or_else(|| Error::LeaderElection("lease vanished".to_owned()))?;
                let mut spec = lease.spec.take().unwrap_or_default();
                if decision == Decision::Acquire {
                    spec.acquire_time = Some(wall.clone());
                    spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
                }
                spec.holder_identity = Some(self.config.identity.clone());
                spec.lease_duration_seconds = Some(seconds);
                spec.renew_time = Some(wall);
                lease.spec = Some(spec);
                // `replace` carries the resourceVersion we read: a concurrent writer makes it fail.
                match self
                    .api
                    .replace(&self.config.name, &PostParams::default(), &lease)
                    .await
                {
                    Ok(_) => Ok(true),
                    Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
                    Err(e) => Err(e.into()),
                }
            }
        }
    }

    /// Gives the lease up (empty holder) if this process still holds it.
    pub async fn release(&self) -> Result<()> {
        let Some(mut lease) = self.api.get_opt(&self.config.name).await? else {
            return Ok(());
        };
        let Some(spec) = lease.spec.as_mut() else {
            return Ok(());
        };
        if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        match self
            .api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) | Err(kube::Error::Api(_)) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    use http::{Method, Request, Response, StatusCode};
    use kube::client::Body;

    use super::*;

    fn respond(status: StatusCode, body: &serde_json::Value) -> Response<Body> {
        let mut response = Response::new(Body::from(serde_json::to_vec(body).unwrap()));
        *response.status_mut() = status;
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            "application/json".parse().unwrap(),
        );
        response
    }

    /// A one-Lease API server that works until `down` is set, then answers 500 to everything:
    /// the case of a leader cut off from the API server, which a real server cannot produce.
    fn lease_api(down: Arc<AtomicBool>) -> Client {
        lease_api_with(down, Arc::new(AtomicBool::new(false)))
    }

    /// Like `lease_api`; while `hang` is set every request waits forever, as one whose TCP
    /// connection silently died would until the client's read timeout.
    fn lease_api_with(down: Arc<AtomicBool>, hang: Arc<AtomicBool>) -> Client {
        let stored: Arc<Mutex<Option<serde_json::Value>>> = Arc::default();
        let service = tower::service_fn(move |request: Request<Body>| {
            let (down, stored, hang) = (down.clone(), stored.clone(), hang.clone());
            async move {
                if hang.load(Ordering::SeqCst) {
                    std::future::pending::<()>().await;
                }
                let method = request.method().clone();
                let body = request
                    .into_body()
                    .collect_bytes()
                    .await
                    .unwrap_or_default();
                if down.load(Ordering::SeqCst) {
                    let status = serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 500, "reason": "InternalError", "message": "unavailable"});
                    return Ok::<_, std::convert::Infallible>(respond(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        &status,
                    ));
                }
                let mut stored = stored.lock().unwrap();
                Ok(match method {
                    Method::GET => match stored.as_ref() {
                        Some(lease) => respond(StatusCode::OK, lease),
                        None => respond(
                            StatusCode::NOT_FOUND,
                            &serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404, "reason": "NotFound", "message": "not found"}),
                        ),
                    },
                    _ => {
                        let mut lease: serde_json::Value = serde_json::from_slice(&body).unwrap();
                        let version = stored
                            .as_ref()
                            .and_then(|l| {
                                l["metadata"]["resourceVersion"]
                                    .as_str()?
                                    .parse::<u64>()
                                    .ok()
                            })
                            .unwrap_or(0);
                        lease["metadata"]["resourceVersion"] = (version + 1).to_string().into();
                        *stored = Some(lease.clone());
                        respond(StatusCode::OK, &lease)
                    }
                })
            }
        });
        Client::new(service, "default")
    }

    #[tokio::test]
    async fn leader_cut_off_from_the_api_steps_down_before_the_lease_expires() {
        let down = Arc::new(AtomicBool::new(false));
        let config =
            LeaseConfig::new("lease", "default", "me").with_lease_duration(Duration::from_secs(3));
        let (tx, mut rx) = watch::channel(false);
        let elector = tokio::spawn(
            LeaderElector::new(lease_api(down.clone()), config.clone())
                .run(tx, std::future::pending()),
        );
        tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|l| *l))
            .await
            .expect("leads")
            .unwrap();

        down.store(true, Ordering::SeqCst);
        let cut_at = Instant::now();
        tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|l| !*l))
            .await
            .expect("steps down")
            .unwrap();
        let after = cut_at.elapsed();
        elector.abort();
        // It may keep leading only while nobody else can hold the lease.
        assert!(
            after <= config.renew_deadline + Duration::from_millis(500),
            "stepped down after {after:?}"
        );
        assert!(
            after < config.lease_duration,
            "still leading when the lease could expire: {after:?}"
        );
    }

    #[tokio::test]
    async fn leader_whose_renewal_hangs_steps_down_before_the_lease_expires() {
        let hang = Arc::new(AtomicBool::new(false));
        let config =
            LeaseConfig::new("lease", "default", "me").with_lease_duration(Duration::from_secs(3));
        let (tx, mut rx) = watch::channel(false);
        let client = lease_api_with(Arc::new(AtomicBool::new(false)), hang.clone());
        let elector = tokio::spawn(
            LeaderElector::new(client, config.clone()).run(tx, std::future::pending()),
        );
        tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|l| *l))
            .await
            .expect("leads")
            .unwrap();

        hang.store(true, Ordering::SeqCst);
        let hung_at = Instant::now();
        tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|l| !*l))
            .await
            .expect("steps down while its request hangs")
            .unwrap();
        let after = hung_at.elapsed();
        elector.abort();
        assert!(
            after <= config.renew_deadline + Duration::from_millis(500),
            "stepped down after {after:?}; a follower may acquire after {:?}",
            config.lease_duration
        );
    }

    fn spec(holder: Option<&str>, duration: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: holder.map(str::to_owned),
            lease_duration_seconds: Some(duration),
            renew_time: Some(MicroTime(Timestamp::from_second(1_000).unwrap())),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn decisions() {
        let t0 = Instant::now();
        let later = |s: u64| t0 + Duration::from_secs(s);
        let d = Duration::from_secs(15);
        let cases: Vec<(&str, Option<LeaseSpec>, Instant, Decision)> = vec![
            ("no lease", None, t0, Decision::Create),
            (
                "own lease",
                Some(spec(Some("me"), 15)),
                later(1),
                Decision::Renew,
            ),
            (
                "own lease even if old",
                Some(spec(Some("me"), 15)),
                later(100),
                Decision::Renew,
            ),
            ("free lease", Some(spec(None, 15)), t0, Decision::Acquire),
            (
                "empty holder",
                Some(spec(Some(""), 15)),
                t0,
                Decision::Acquire,
            ),
            (
                "live foreign lease",
                Some(spec(Some("other"), 15)),
                later(10),
                Decision::Follow {
                    holder: "other".into(),
                },
            ),
            (
                "expired foreign lease",
                Some(spec(Some("other"), 15)),
                later(16),
                Decision::Acquire,
            ),
            (
                "lease's own duration counts",
                Some(spec(Some("other"), 3)),
                later(4),
                Decision::Acquire,
            ),
        ];
        for (case, lease, now, expected) in cases {
            let observation = Observation::update(None, lease.as_ref(), t0);
            assert_eq!(
                decide(lease.as_ref(), &observation, "me", d, now),
                expected,
                "{case}"
            );
        }
    }

    #[test]
    fn expiry_clock_restarts_only_when_the_lease_moves() {
        let t0 = Instant::now();
        let first = Observation::update(None, Some(&spec(Some("other"), 15)), t0);
        let same = Observation::update(
            Some(first.clone()),
            Some(&spec(Some("other"), 15)),
            t0 + Duration::from_secs(9),
        );
        assert_eq!(same.seen_at, t0, "an unchanged lease keeps ageing");
        let mut renewed = spec(Some("other"), 15);
        renewed.renew_time = Some(MicroTime(Timestamp::from_second(1_005).unwrap()));
        let moved = Observation::update(Some(same), Some(&renewed), t0 + Duration::from_secs(10));
        assert_eq!(
            moved.seen_at,
            t0 + Duration::from_secs(10),
            "a renewal restarts the clock"
        );
    }
}
