//! Exponential backoff with jitter for reconnecting to ZooKeeper: a fleet of daemons that lost the
//! ensemble together must not come back in lockstep.

use std::hash::{BuildHasher as _, Hasher as _};
use std::time::Duration;

#[derive(Debug)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    current: Duration,
    rng: u64,
}

impl Backoff {
    /// Delays start at `initial` and double up to `max`.
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        // A per-process random seed; no cryptographic quality needed.
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u32(std::process::id());
        Backoff {
            initial,
            max,
            current: initial,
            rng: hasher.finish() | 1,
        }
    }

    /// The next delay: a random point in [d/2, d] for the current step d, then the step doubles.
    pub fn next_delay(&mut self) -> Duration {
        let step = self.current;
        self.current = (self.current * 2).min(self.max);
        let half = step / 2;
        let spread = (step - half).as_micros() as u64;
        let jitter = if spread == 0 {
            0
        } else {
            self.next_random() % (spread + 1)
        };
        half + Duration::from_micros(jitter)
    }

    /// Back to the initial delay (after a successful connect).
    pub fn reset(&mut self) {
        self.current = self.initial;
    }

    /// xorshift64.
    fn next_random(&mut self) -> u64 {
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        x
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap_with_jitter_in_range() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        let mut step = Duration::from_millis(100);
        for _ in 0..20 {
            let d = b.next_delay();
            assert!(
                d >= step / 2 && d <= step,
                "{d:?} not in [{:?}, {step:?}]",
                step / 2
            );
            step = (step * 2).min(Duration::from_secs(10));
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }

    #[test]
    fn jitter_varies() {
        let mut b = Backoff::new(Duration::from_secs(10), Duration::from_secs(10));
        let delays: std::collections::BTreeSet<Duration> =
            (0..10).map(|_| b.next_delay()).collect();
        assert!(delays.len() > 1);
    }
}
