//! The paths measured side by side.

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
    /// `lb run` following ZooKeeper, round robin.
    LbRr,
    /// `lb run` following ZooKeeper, Maglev.
    LbMaglev,
    /// nftables DNAT (`numgen inc mod 3`) + masquerade in the LB namespace.
    Nftables,
    /// HAProxy `mode tcp`, round robin, in the LB namespace.
    Haproxy,
}

impl Mode {
    /// Every mode, in the order of each round.
    pub const ALL: [Mode; 7] = [
        Mode::Direct,
        Mode::DirectEcmp,
        Mode::Floor,
        Mode::LbRr,
        Mode::LbMaglev,
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
            Mode::Nftables => "nftables",
            Mode::Haproxy => "haproxy",
        }
    }

    /// The `lb` scheduler of an `lb` mode.
    pub const fn lb_scheduler(self) -> Option<&'static str> {
        match self {
            Mode::LbRr => Some("rr"),
            Mode::LbMaglev => Some("maglev"),
            _ => None,
        }
    }

    /// Whether the mode spreads connections over every backend (the others use backend 0 only).
    pub const fn spreads(self) -> bool {
        !matches!(self, Mode::Direct | Mode::Floor)
    }
}
