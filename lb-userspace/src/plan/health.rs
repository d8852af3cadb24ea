//! What the health checks mean for one service: which backends leave its table, and panic mode.

use std::collections::BTreeSet;
use std::net::SocketAddr;

use crate::health::HealthView;
use crate::model::ServiceSpec;

/// Which of a service's backends its health checks took out, as applied.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceHealth {
    /// Backends flagged down: out of the table, their established flows are moved.
    pub down: BTreeSet<SocketAddr>,
    /// Fewer than `panic_threshold` percent of the backends that take new flows are healthy, so
    /// all of them stay in the table (none is flagged down).
    pub panic: bool,
}

impl ServiceHealth {
    /// What `health` means for `spec`, panic threshold included (pure; unit-tested).
    pub fn of(spec: &ServiceSpec, health: &HealthView) -> ServiceHealth {
        // Unchecked backends are never down (and all healthy is never panic): at fleet size this
        // is asked of every service on every change.
        let Some(check) = spec.health_check.as_ref() else {
            return ServiceHealth::default();
        };
        let check = Some(check);
        let down: BTreeSet<SocketAddr> = spec
            .backends
            .keys()
            .copied()
            .filter(|addr| health.is_down(*addr, check))
            .collect();
        let eligible = spec
            .backends
            .values()
            .filter(|b| b.takes_new_flows())
            .count();
        let healthy = spec
            .backends
            .values()
            .filter(|b| b.takes_new_flows() && !down.contains(&b.addr))
            .count();
        let threshold = usize::from(spec.panic_threshold);
        if threshold > 0 && eligible > 0 && healthy * 100 < threshold * eligible {
            ServiceHealth {
                down: BTreeSet::new(),
                panic: true,
            }
        } else {
            ServiceHealth { down, panic: false }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{BackendSpec, BackendState, HealthCheckSpec};
    use crate::plan::tests::{addr, down};

    fn service(backends: u8, panic_threshold: u8) -> ServiceSpec {
        let mut s = ServiceSpec::new("web", SocketAddr::from(([198, 18, 100, 1], 80)));
        s.health_check = Some(HealthCheckSpec::default());
        s.panic_threshold = panic_threshold;
        for i in 0..backends {
            s = s.with_backend(BackendSpec::new(addr(i)));
        }
        s
    }

    #[test]
    fn down_backends_leave_the_table() {
        let s = service(4, 0);
        let h = ServiceHealth::of(&s, &down(&s, &[1, 2]));
        assert!(!h.panic);
        assert_eq!(h.down, [addr(1), addr(2)].into_iter().collect());
    }

    #[test]
    fn unchecked_services_ignore_health() {
        let mut s = service(2, 0);
        let view = down(&s, &[0, 1]);
        s.health_check = None;
        assert_eq!(ServiceHealth::of(&s, &view), ServiceHealth::default());
    }

    #[test]
    fn panic_mode_keeps_every_backend_below_the_threshold() {
        let s = service(4, 50);
        // 2 of 4 healthy is 50 %: not below the threshold.
        assert!(!ServiceHealth::of(&s, &down(&s, &[0, 1])).panic);
        // 1 of 4 healthy is 25 %: panic, nothing flagged down.
        let h = ServiceHealth::of(&s, &down(&s, &[0, 1, 2]));
        assert!(h.panic);
        assert!(h.down.is_empty());
    }

    #[test]
    fn draining_backends_do_not_count_toward_the_panic_share() {
        let mut s = service(4, 50);
        for i in [2, 3] {
            if let Some(b) = s.backends.get_mut(&addr(i)) {
                b.state = BackendState::Draining;
            }
        }
        // Of the two that take new flows, one is healthy: 50 %, no panic.
        assert!(!ServiceHealth::of(&s, &down(&s, &[0])).panic);
        assert!(ServiceHealth::of(&s, &down(&s, &[0, 1])).panic);
    }
}
