//! [`Backoff`]: the one retry schedule of every loop that waits for a dependency to come
//! back (outbox relays, consumers, topic creation): doubling from a first delay up to a
//! cap, reset after a success.

use std::time::Duration;

/// Exponential backoff: each [`Backoff::next_delay`] returns the current delay and doubles
/// it for next time, never beyond the cap; [`Backoff::reset`] starts over after a success.
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    /// Starts at `first`, doubling up to `max` (a `max` below `first` is raised to it).
    pub fn new(first: Duration, max: Duration) -> Self {
        Self {
            first,
            max: max.max(first),
            current: first,
        }
    }

    /// How long to wait before the next attempt; the one after waits twice as long.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.current;
        self.current = self.current.saturating_mul(2).min(self.max);
        delay
    }

    /// Whether a failure since the last [`Backoff::reset`] made the next delay longer than
    /// the first (a loop backing off should not let other wake-ups cut its wait short).
    pub fn is_backing_off(&self) -> bool {
        self.current != self.first
    }

    /// Back to the first delay (call after a success).
    pub fn reset(&mut self) {
        self.current = self.first;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap_and_reset_after_success() {
        let ms = Duration::from_millis;
        let mut backoff = Backoff::new(ms(100), ms(700));
        assert!(!backoff.is_backing_off());
        let delays: Vec<_> = (0..5).map(|_| backoff.next_delay()).collect();
        assert_eq!(delays, [ms(100), ms(200), ms(400), ms(700), ms(700)]);
        assert!(backoff.is_backing_off());
        backoff.reset();
        assert!(!backoff.is_backing_off());
        assert_eq!(backoff.next_delay(), ms(100));
    }

    #[test]
    fn a_cap_below_the_first_delay_is_the_first_delay() {
        let mut backoff = Backoff::new(Duration::from_secs(2), Duration::from_secs(1));
        assert_eq!(backoff.next_delay(), Duration::from_secs(2));
        assert_eq!(backoff.next_delay(), Duration::from_secs(2));
    }
}
