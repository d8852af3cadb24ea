//! The rise/fall state machine of one checked backend (keepalived's and HAProxy's semantics): an up
//! backend goes down after `fall` failed probes in a row, a down one comes back after `rise`
//! passed probes in a row. Pure, so the thresholds are tested without a network.

/// What a backend's health checks concluded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Health {
    Up,
    Down,
}

impl Health {
    pub const fn name(self) -> &'static str {
        match self {
            Health::Up => "up",
            Health::Down => "down",
        }
    }
}

/// Consecutive results of one backend's probes.
#[derive(Clone, Debug)]
pub struct Tracker {
    rise: u32,
    fall: u32,
    state: Health,
    /// Results in a row that disagree with `state`.
    streak: u32,
}

impl Tracker {
    /// A tracker that starts `Up`: a backend is trusted until its checks say otherwise, so starting
    /// the daemon or adding a service never empties a table (it takes `fall` intervals to go down).
    pub fn new(rise: u32, fall: u32) -> Tracker {
        Tracker {
            rise: rise.max(1),
            fall: fall.max(1),
            state: Health::Up,
            streak: 0,
        }
    }

    /// A tracker that starts in `state`: a daemon restarting with the last known health (a
    /// backend that was down stays down until `rise` probes pass).
    pub fn starting(rise: u32, fall: u32, state: Health) -> Tracker {
        Tracker {
            state,
            ..Tracker::new(rise, fall)
        }
    }

    pub fn state(&self) -> Health {
        self.state
    }

    /// Records one probe result; returns the new state when this result changed it.
    pub fn record(&mut self, passed: bool) -> Option<Health> {
        let agrees = matches!(
            (self.state, passed),
            (Health::Up, true) | (Health::Down, false)
        );
        if agrees {
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        let (needed, next) = match self.state {
            Health::Up => (self.fall, Health::Down),
            Health::Down => (self.rise, Health::Up),
        };
        if self.streak >= needed {
            self.state = next;
            self.streak = 0;
            Some(next)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(t: &mut Tracker, results: &[bool]) -> Vec<Option<Health>> {
        results.iter().map(|r| t.record(*r)).collect()
    }

    #[test]
    fn goes_down_after_fall_failures_in_a_row() {
        let mut t = Tracker::new(2, 3);
        assert_eq!(t.state(), Health::Up);
        assert_eq!(feed(&mut t, &[false, false]), vec![None, None]);
        assert_eq!(t.record(false), Some(Health::Down));
        assert_eq!(t.state(), Health::Down);
        // Further failures change nothing.
        assert_eq!(t.record(false), None);
    }

    #[test]
    fn a_pass_in_between_resets_the_failure_count() {
        let mut t = Tracker::new(2, 3);
        assert_eq!(
            feed(&mut t, &[false, false, true, false, false]),
            vec![None; 5]
        );
        assert_eq!(t.state(), Health::Up);
        assert_eq!(t.record(false), Some(Health::Down));
    }

    #[test]
    fn a_restored_down_backend_needs_rise_passes() {
        let mut t = Tracker::starting(2, 3, Health::Down);
        assert_eq!(t.state(), Health::Down);
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(true), None);
        assert_eq!(t.record(true), Some(Health::Up));
    }

    #[test]
    fn comes_back_after_rise_passes_in_a_row() {
        let mut t = Tracker::new(2, 1);
        assert_eq!(t.record(false), Some(Health::Down));
        assert_eq!(feed(&mut t, &[true, false, true]), vec![None, None, None]);
        assert_eq!(t.record(true), Some(Health::Up));
        assert_eq!(t.state(), Health::Up);
    }

    #[test]
    fn zero_thresholds_act_as_one() {
        let mut t = Tracker::new(0, 0);
        assert_eq!(t.record(false), Some(Health::Down));
        assert_eq!(t.record(true), Some(Health::Up));
    }
}
