//! What the keeper may do with a next hop, given the neighbour entry the kernel already has for it
//! (pure: the ownership rules, unit-tested).
//!
//! lb owns only the entries it created (`NLM_F_EXCL`: they did not exist before) and, when it adopted
//! an earlier `lb run`'s pins, the managed entries marked with lb's protocol number. Any other entry
//! is never changed or deleted: a permanent or `noarp` one an operator made, a managed or
//! extern-learned one another daemon keeps. A plain kernel-learned (dynamic) entry is not changed
//! either; lb only marks it used (`NTF_USE`), as a packet to it would, so the kernel revalidates it
//! and a changed MAC is learned. If the kernel later drops it, lb creates its own.

use std::net::IpAddr;

use super::rtnl::LB_NEIGH_PROTOCOL;

const NUD_NOARP: u16 = 0x40;
const NUD_PERMANENT: u16 = 0x80;

/// A next hop: the gateway (or the backend itself when directly connected) and the interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NextHop {
    pub addr: IpAddr,
    pub ifindex: u32,
}

/// A neighbour entry as the kernel reports it (`RTM_GETNEIGH`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Neighbour {
    pub hop: NextHop,
    /// `NUD_*` bits.
    pub state: u16,
    /// `NTF_EXT_MANAGED`: the kernel keeps it resolved.
    pub managed: bool,
    /// `NTF_EXT_LEARNED`.
    pub ext_learned: bool,
    /// `NDA_PROTOCOL` (0: none).
    pub protocol: u8,
    pub lladdr: Option<Vec<u8>>,
}

impl Neighbour {
    /// Made by an `lb run` (managed, lb's protocol number).
    pub fn is_lbs(&self) -> bool {
        self.managed && self.protocol == LB_NEIGH_PROTOCOL
    }

    /// Configured by someone (operator or daemon) rather than learned by the kernel.
    pub fn is_configured(&self) -> bool {
        self.state & (NUD_PERMANENT | NUD_NOARP) != 0
            || self.managed
            || self.ext_learned
            || self.protocol != 0
    }

    /// The state as `ip neigh` prints it.
    pub fn state_name(&self) -> &'static str {
        match self.state {
            0x00 => "NONE",
            0x01 => "INCOMPLETE",
            0x02 => "REACHABLE",
            0x04 => "STALE",
            0x08 => "DELAY",
            0x10 => "PROBE",
            0x20 => "FAILED",
            NUD_NOARP => "NOARP",
            NUD_PERMANENT => "PERMANENT",
            _ => "MIXED",
        }
    }
}

/// What to do for one wanted next hop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// No entry: create a managed one, lb's from then on.
    Create,
    /// An earlier `lb run`'s entry on pins this daemon adopted: lb's from then on, unchanged.
    Adopt,
    /// A kernel-learned entry: mark it used so the kernel revalidates it; never lb's.
    Touch,
    /// Someone else's entry: leave it exactly as it is.
    Leave,
}

/// The action for a next hop that lb does not own yet, given the kernel's entry for it.
pub fn decide(existing: Option<&Neighbour>, adopt_lbs: bool) -> Action {
    match existing {
        None => Action::Create,
        Some(n) if n.is_lbs() && adopt_lbs => Action::Adopt,
        Some(n) if n.is_configured() => Action::Leave,
        Some(_) => Action::Touch,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(state: u16) -> Neighbour {
        Neighbour {
            hop: NextHop {
                addr: IpAddr::from([198, 18, 3, 1]),
                ifindex: 2,
            },
            state,
            managed: false,
            ext_learned: false,
            protocol: 0,
            lladdr: None,
        }
    }

    #[test]
    fn lb_creates_only_where_there_is_no_entry() {
        assert_eq!(decide(None, false), Action::Create);
        assert_eq!(decide(None, true), Action::Create);
    }

    #[test]
    fn operator_entries_are_left_alone_even_when_adopting() {
        for adopt in [false, true] {
            assert_eq!(decide(Some(&entry(NUD_PERMANENT)), adopt), Action::Leave);
            assert_eq!(decide(Some(&entry(NUD_NOARP)), adopt), Action::Leave);
            let other_daemon = Neighbour {
                managed: true,
                ..entry(0x02)
            };
            assert_eq!(decide(Some(&other_daemon), adopt), Action::Leave);
            let evpn = Neighbour {
                ext_learned: true,
                ..entry(0x04)
            };
            assert_eq!(decide(Some(&evpn), adopt), Action::Leave);
            let tagged = Neighbour {
                protocol: 186,
                managed: true,
                ..entry(0x02)
            };
            assert_eq!(decide(Some(&tagged), adopt), Action::Leave);
        }
    }

    #[test]
    fn an_earlier_lbs_entries_are_adopted_only_with_its_pins() {
        let earlier = Neighbour {
            managed: true,
            ext_learned: true,
            protocol: LB_NEIGH_PROTOCOL,
            ..entry(0x02)
        };
        assert!(earlier.is_lbs());
        assert_eq!(decide(Some(&earlier), true), Action::Adopt);
        assert_eq!(decide(Some(&earlier), false), Action::Leave);
        // lb's number on an unmanaged entry is not lb's doing.
        let unmanaged = Neighbour {
            managed: false,
            ..earlier
        };
        assert_eq!(decide(Some(&unmanaged), true), Action::Leave);
    }

    #[test]
    fn kernel_learned_entries_are_touched_not_taken() {
        for state in [0x01, 0x02, 0x04, 0x08, 0x10, 0x20] {
            assert_eq!(
                decide(Some(&entry(state)), true),
                Action::Touch,
                "{state:#x}"
            );
        }
    }
}
