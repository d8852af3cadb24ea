//! Bounded polling for conditions that become true asynchronously (a daemon reloading, a server
//! starting, a watch delivering): waits no longer than needed and never forever. Every wait in the
//! tests, the demo and the lab is one of these: bounded in time and in the number of polls, and a
//! timeout says what was awaited and the last value seen.
//!
//! ```text
//! let id = Eventually::new("the daemon applied the service", APPLY)
//!     .poll(|| backend_id(&maps, addr).ok_or("no such backend"))?;
//! let node = Eventually::new("the node", WAIT).poll_async(|| async { node(&zk, &path).await.ok_or("absent") }).await?;
//! ```

use std::fmt::Debug;
use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::bail;

/// How often a condition is re-checked unless [`Eventually::every`] says otherwise.
pub const POLL_INTERVAL: Duration = Duration::from_millis(20);
/// The shortest interval: a poll never spins.
const MIN_INTERVAL: Duration = Duration::from_micros(50);

/// A bounded wait: what is awaited, for how long, how often it is checked.
#[derive(Clone, Debug)]
pub struct Eventually {
    what: String,
    timeout: Duration,
    interval: Duration,
}

impl Eventually {
    /// Waits at most `timeout` for `what` (named in the error), checking every [`POLL_INTERVAL`].
    pub fn new(what: impl Into<String>, timeout: Duration) -> Eventually {
        Eventually {
            what: what.into(),
            timeout,
            interval: POLL_INTERVAL,
        }
    }

    /// Checks every `interval` (at least 50 µs) instead.
    pub fn every(mut self, interval: Duration) -> Eventually {
        self.interval = interval.max(MIN_INTERVAL);
        self
    }

    /// The most polls one wait makes: one per interval of the timeout, and a last one.
    pub fn max_polls(&self) -> u64 {
        let per = self.interval.as_nanos().max(1);
        u64::try_from(self.timeout.as_nanos() / per)
            .unwrap_or(u64::MAX)
            .saturating_add(2)
    }

    /// Calls `probe` until it returns `Ok` (its value is returned), the timeout passes or the polls
    /// run out; an `Err` is the value seen so far, quoted in the timeout error.
    pub fn poll<T, E: Debug>(&self, mut probe: impl FnMut() -> Result<T, E>) -> anyhow::Result<T> {
        let started = Instant::now();
        let mut polls = 0;
        loop {
            polls += 1;
            let last = match probe() {
                Ok(v) => return Ok(v),
                Err(last) => last,
            };
            if let Some(elapsed) = self.give_up(started, polls) {
                return self.timed_out(elapsed, polls, last);
            }
            std::thread::sleep(self.interval);
        }
    }

    /// [`poll`](Self::poll) for an async probe; sleeps on the tokio timer between polls.
    pub async fn poll_async<T, E: Debug, F: Future<Output = Result<T, E>>>(
        &self,
        mut probe: impl FnMut() -> F,
    ) -> anyhow::Result<T> {
        let started = Instant::now();
        let mut polls = 0;
        loop {
            polls += 1;
            let last = match probe().await {
                Ok(v) => return Ok(v),
                Err(last) => last,
            };
            if let Some(elapsed) = self.give_up(started, polls) {
                return self.timed_out(elapsed, polls, last);
            }
            tokio::time::sleep(self.interval).await;
        }
    }

    /// `Some(elapsed)` once the time or the polls are used up.
    fn give_up(&self, started: Instant, polls: u64) -> Option<Duration> {
        let elapsed = started.elapsed();
        (elapsed >= self.timeout || polls >= self.max_polls()).then_some(elapsed)
    }

    fn timed_out<T>(&self, elapsed: Duration, polls: u64, last: impl Debug) -> anyhow::Result<T> {
        bail!(
            "timed out waiting for {} ({polls} polls in {elapsed:.1?}, limit {:?}); last seen: {last:#?}",
            self.what,
            self.timeout
        )
    }
}

/// Polls `cond` until it returns true or `timeout` passes; returns whether it became true.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    Eventually::new("a condition", timeout)
        .poll(|| if cond() { Ok(()) } else { Err(false) })
        .is_ok()
}

/// Polls `f` until it returns `Ok` or `timeout` passes; returns the last error on timeout.
pub fn retry_until<T, E>(timeout: Duration, mut f: impl FnMut() -> Result<T, E>) -> Result<T, E> {
    let mut last = None;
    let got = Eventually::new("a retried call", timeout).poll(|| {
        f().map_err(|e| {
            last = Some(e);
        })
    });
    match (got, last) {
        (Ok(v), _) => Ok(v),
        (Err(_), Some(e)) => Err(e),
        (Err(e), None) => unreachable!("a failed wait saw an error: {e:#}"),
    }
}

/// Asserts that a condition becomes true within a timeout, polling it.
///
/// ```text
/// assert_eventually!(lab.lb_status_json(0)?.flows == 0, Duration::from_secs(5));
/// assert_eventually!(ready(), Duration::from_secs(5), "backend {} never came up", i);
/// ```
#[macro_export]
macro_rules! assert_eventually {
    ($cond:expr, $timeout:expr $(,)?) => {
        assert!(
            $crate::eventually::wait_until($timeout, || $cond),
            "condition `{}` did not become true within {:?}",
            stringify!($cond),
            $timeout
        )
    };
    ($cond:expr, $timeout:expr, $($msg:tt)+) => {
        assert!(
            $crate::eventually::wait_until($timeout, || $cond),
            "condition `{}` did not become true within {:?}: {}",
            stringify!($cond),
            $timeout,
            format!($($msg)+)
        )
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_until_sees_a_late_condition_and_gives_up_on_a_false_one() {
        let mut calls = 0;
        assert!(wait_until(Duration::from_secs(2), || {
            calls += 1;
            calls >= 3
        }));
        assert_eq!(calls, 3);
        let start = Instant::now();
        assert!(!wait_until(Duration::from_millis(100), || false));
        assert!(start.elapsed() >= Duration::from_millis(100));
    }

    #[test]
    fn retry_until_returns_the_last_error() {
        let mut n = 0;
        let r: Result<(), u32> = retry_until(Duration::from_millis(50), || {
            n += 1;
            Err(n)
        });
        assert!(matches!(r, Err(k) if k >= 2));
    }

    #[test]
    fn poll_returns_the_value_or_names_what_and_the_last_value() {
        let mut n = 0;
        let got = Eventually::new("n to reach 3", Duration::from_secs(2)).poll(|| {
            n += 1;
            if n >= 3 { Ok(n * 10) } else { Err(n) }
        });
        assert_eq!(got.unwrap(), 30);
        let err = Eventually::new("the answer", Duration::from_millis(60))
            .poll(|| Err::<(), _>("still 41"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("timed out waiting for the answer"), "{err}");
        assert!(err.contains("last seen: \"still 41\""), "{err}");
    }

    #[test]
    fn polls_are_bounded_in_count_too() {
        let wait =
            Eventually::new("nothing", Duration::from_secs(1)).every(Duration::from_millis(100));
        assert_eq!(wait.max_polls(), 12);
        let mut polls = 0;
        let _ = wait.poll(|| {
            polls += 1;
            Err::<(), _>(polls)
        });
        assert!((2..=12).contains(&polls), "{polls} polls");
        // A zero interval is raised to the minimum, so the bound stays finite.
        let spin = Eventually::new("x", Duration::from_millis(1)).every(Duration::ZERO);
        assert_eq!(spin.max_polls(), 22);
    }

    #[test]
    fn poll_async_waits_on_the_timer() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let mut n = 0;
        let got = runtime.block_on(
            Eventually::new("n to reach 2", Duration::from_secs(2)).poll_async(|| {
                n += 1;
                let n = n;
                async move { if n >= 2 { Ok(n) } else { Err(n) } }
            }),
        );
        assert_eq!(got.unwrap(), 2);
        let err = runtime
            .block_on(
                Eventually::new("never", Duration::from_millis(40))
                    .poll_async(|| async { Err::<(), _>("no") }),
            )
            .unwrap_err();
        assert!(err.to_string().contains("never"), "{err}");
    }

    #[test]
    fn assert_eventually_passes_and_fails() {
        let mut n = 0;
        assert_eventually!(
            {
                n += 1;
                n > 2
            },
            Duration::from_secs(1)
        );
        let failed =
            std::panic::catch_unwind(|| assert_eventually!(false, Duration::from_millis(30)));
        assert!(failed.is_err());
    }
}
