//! Bounded polling for conditions that become true asynchronously (a daemon reloading, a server
//! starting): waits no longer than needed and never forever.

use std::time::{Duration, Instant};

/// How often a condition is re-checked.
pub const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Polls `cond` until it returns true or `timeout` passes; returns whether it became true.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// Polls `f` until it returns `Ok` or `timeout` passes; returns the last error on timeout.
pub fn retry_until<T, E>(timeout: Duration, mut f: impl FnMut() -> Result<T, E>) -> Result<T, E> {
    let deadline = Instant::now() + timeout;
    loop {
        match f() {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => std::thread::sleep(POLL_INTERVAL),
        }
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
