//! The paths measured side by side.

use super::lab::BACKENDS;

/// One way from the client to the backends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Mode {
    /// The router routes the VIP to one backend: no load balancer at all (the ceiling).
    Direct,
    /// The router spreads the VIP over every backend itself (ECMP, L4 hash): no load balancer,
    /// the ceiling of the three-backend modes (`direct` has one backend, like `floor`).
    DirectEcmp,
    /// Router → LB (`lb_floor`: parse + IPIP + `XDP_TX`) → router → one backend (decap): what the
    /// topology itself costs.
    Floor,
    /// `lb run` following ZooKeeper, round robin over every backend.
    LbRr,
    /// `lb run` following ZooKeeper, Maglev over every backend.
    LbMaglev,
    /// `lb run` following ZooKeeper, round robin over backend 0 alone: the path and backend of
    /// `floor`, so its ratio to `floor` is the balancer's cost without that of three nginx.
    LbRr1Backend,
    /// nftables DNAT (`numgen inc mod 3`) + masquerade in the LB namespace.
    Nftables,
    /// HAProxy `mode tcp`, round robin, in the LB namespace.
    Haproxy,
}

impl Mode {
    /// Every mode, in the order of each round.
    pub const ALL: [Mode; 8] = [
        Mode::Direct,
        Mode::DirectEcmp,
        Mode::Floor,
        Mode::LbRr,
        Mode::LbMaglev,
        Mode::LbRr1Backend,
        Mode::Nftables,
        Mode::Haproxy,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Mode::Direct => "direct",
            Mode::DirectEcmp => "direct ecmp",
            Mode::Floor => "floor",
            Mode::LbRr => "lb rr",
            Mode::LbMaglev => "lb maglev",
            Mode::LbRr1Backend => "lb rr 1 backend",
            Mode::Nftables => "nftables",
            Mode::Haproxy => "haproxy",
        }
    }

    /// The `lb` scheduler of an `lb` mode.
    pub const fn lb_scheduler(self) -> Option<&'static str> {
        match self {
            Mode::LbRr | Mode::LbRr1Backend => Some("rr"),
            Mode::LbMaglev => Some("maglev"),
            _ => None,
        }
    }

    /// How many backends the mode sends to: backend 0 alone, or every backend of the lab.
    pub const fn backends(self) -> usize {
        match self {
            Mode::Direct | Mode::Floor | Mode::LbRr1Backend => 1,
            _ => BACKENDS,
        }
    }

    /// Whether the mode spreads connections over every backend (the others use backend 0 only).
    pub const fn spreads(self) -> bool {
        self.backends() > 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_direct_floor_and_lb_rr_1_backend_use_backend_0_alone() {
        let one: Vec<Mode> = Mode::ALL.into_iter().filter(|m| !m.spreads()).collect();
        assert_eq!(one, [Mode::Direct, Mode::Floor, Mode::LbRr1Backend]);
        assert_eq!(Mode::LbRr1Backend.lb_scheduler(), Mode::LbRr.lb_scheduler());
    }
}
