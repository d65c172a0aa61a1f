//! Shutdown signalling: [`Shutdown`], one cloneable token that servers, the outbox relay
//! and consumers watch, cancelled by SIGTERM/SIGINT or by hand.
//!
//! Shutdown has two moments: *draining* starts at the signal (the admin server's `/readyz`
//! answers 503 from then on, so a load balancer or Kubernetes stops sending new requests),
//! and the token is *cancelled* a drain delay later (servers stop accepting and finish
//! in-flight requests). Without a delay both happen at once.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// A cloneable shutdown token. All clones see the same trigger.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    token: CancellationToken,
    draining: CancellationToken,
}

impl Shutdown {
    /// A token that only [`Shutdown::trigger`] cancels.
    pub fn new() -> Self {
        Self::default()
    }

    /// A token cancelled on the first SIGTERM or SIGINT (Ctrl-C). Must be called inside a
    /// Tokio runtime.
    pub fn on_signal() -> Self {
        Self::on_signal_with_delay(Duration::ZERO)
    }

    /// A token that starts draining on the first SIGTERM or SIGINT and is cancelled `delay`
    /// later: long enough for whoever routes traffic here to see `/readyz` fail (or the pod
    /// leave its Service's endpoints) and stop sending new requests. Must be called inside
    /// a Tokio runtime.
    pub fn on_signal_with_delay(delay: Duration) -> Self {
        let shutdown = Self::new();
        let trigger = shutdown.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            trigger.start_draining();
            if !delay.is_zero() {
                tracing::info!(
                    ?delay,
                    "shutdown signal received: not ready any more, still serving"
                );
                tokio::time::sleep(delay).await;
            }
            tracing::info!("draining: no new connections, finishing in-flight requests");
            trigger.trigger();
        });
        shutdown
    }

    /// A token for one part (a service among several in one process): it fires when this
    /// one does, but triggering it — when that part fails and stops its own tasks — never
    /// fires this one, so the rest keeps running.
    pub fn child(&self) -> Self {
        Self {
            token: self.token.child_token(),
            draining: self.draining.child_token(),
        }
    }

    /// Starts shutdown: every waiter of [`Shutdown::cancelled`] wakes up.
    pub fn trigger(&self) {
        self.draining.cancel();
        self.token.cancel();
    }

    /// Starts draining without stopping anything yet: `/readyz` fails from now on.
    pub fn start_draining(&self) {
        self.draining.cancel();
    }

    /// Whether draining has started (a signal came, or shutdown was triggered): the
    /// service should not be sent new work, though it may still be serving.
    pub fn is_draining(&self) -> bool {
        self.draining.is_cancelled()
    }

    /// Whether shutdown has started.
    pub fn is_triggered(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Completes once shutdown has started. Owns a clone of the token, so it can be handed
    /// to `with_graceful_shutdown` and similar APIs that need a `'static` future.
    pub fn cancelled(&self) -> impl Future<Output = ()> + Send + 'static {
        self.token.clone().cancelled_owned()
    }

    /// The underlying token, for APIs that take a `CancellationToken`.
    pub fn token(&self) -> CancellationToken {
        self.token.clone()
    }
}

#[cfg(unix)]
async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            tracing::warn!("cannot install SIGTERM/SIGINT handlers; falling back to Ctrl-C");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(not(unix))]
async fn wait_for_signal() {
    let _ = tokio::signal::ctrl_c().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn trigger_wakes_every_clone() {
        let shutdown = Shutdown::new();
        let waiter = tokio::spawn(shutdown.clone().cancelled());
        assert!(!shutdown.is_triggered());
        shutdown.clone().trigger();
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .expect("waiter woke up")
            .unwrap();
        assert!(shutdown.is_triggered());
    }

    #[tokio::test]
    async fn a_child_follows_its_parent_but_never_stops_it() {
        let parent = Shutdown::new();
        let (first, second) = (parent.child(), parent.child());
        first.trigger();
        assert!(first.is_triggered());
        assert!(
            !parent.is_triggered(),
            "a child stopping must not stop the parent"
        );
        assert!(!second.is_triggered(), "nor its siblings");
        parent.trigger();
        tokio::time::timeout(Duration::from_secs(1), second.cancelled())
            .await
            .expect("the parent's shutdown reaches every child");
    }

    #[tokio::test]
    async fn trigger_also_starts_draining_and_a_child_drains_with_its_parent() {
        let parent = Shutdown::new();
        let child = parent.child();
        assert!(!parent.is_draining() && !child.is_draining());
        parent.trigger();
        assert!(parent.is_draining());
        assert!(child.is_draining(), "a child drains when its parent does");
    }

    #[tokio::test]
    async fn sigterm_triggers_on_signal_tokens() {
        let shutdown = Shutdown::on_signal();
        // Let the spawned task install its handlers.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let status = std::process::Command::new("kill")
            .args(["-TERM", &std::process::id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
        tokio::time::timeout(Duration::from_secs(5), shutdown.cancelled())
            .await
            .expect("SIGTERM cancels the token");
    }

    #[tokio::test]
    async fn with_a_drain_delay_sigterm_starts_draining_before_it_cancels() {
        let shutdown = Shutdown::on_signal_with_delay(Duration::from_secs(600));
        tokio::time::sleep(Duration::from_millis(100)).await;
        let status = std::process::Command::new("kill")
            .args(["-TERM", &std::process::id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
        let draining = async {
            while !shutdown.is_draining() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(5), draining)
            .await
            .expect("SIGTERM starts draining at once");
        assert!(
            !shutdown.is_triggered(),
            "servers keep accepting until the drain delay is over"
        );
    }
}
