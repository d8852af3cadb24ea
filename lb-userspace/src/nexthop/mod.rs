//! Keeps the next hops toward the backends resolved, so `bpf_fib_lookup` in the XDP program finds their
//! MAC addresses. The operator never types a MAC: for every backend we ask the kernel's routing table for
//! the next hop and install a *managed* neighbour entry for it (Linux ≥ 5.16), which the kernel keeps
//! resolved by itself and which follows MAC changes. Everything goes through one netlink socket
//! (`rtnl`), on a thread of its own (`worker`) so the daemon's runtime never waits for it.
//!
//! Ownership (`policy`): lb removes, on exit (with `--detach-on-exit`) and when no backend needs it
//! any more, only the entries it created or adopted from an earlier `lb run`; any entry that was there
//! before is left exactly as it was.

mod policy;
mod rtnl;
mod worker;

use std::collections::{BTreeSet, HashMap};
use std::io;
use std::net::IpAddr;

use tracing::{debug, info, warn};

pub use policy::{Action, Neighbour, NextHop, decide};
pub use rtnl::{LB_NEIGH_PROTOCOL, RouteError, Rtnl};
pub use worker::NextHopTask;

use crate::netif;

/// Unresolvable backends logged one by one per refresh; the rest are counted.
const WARN_LIMIT: usize = 10;

impl std::fmt::Display for NextHop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} dev {}", self.addr, netif::name(self.ifindex))
    }
}

/// The next hop toward each backend, through one socket (order kept). For `lb` and the tests.
pub fn resolve(dsts: &[IpAddr]) -> io::Result<Vec<Result<NextHop, RouteError>>> {
    Ok(Rtnl::open()?.routes(dsts))
}

/// What one refresh found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RefreshReport {
    /// Distinct next hops the backends need.
    pub wanted: usize,
    /// Backends without a route (logged).
    pub unroutable: usize,
    pub created: Vec<NextHop>,
    pub adopted: Vec<NextHop>,
    /// Kernel-learned entries marked used.
    pub touched: Vec<NextHop>,
    /// Someone else's entries, left alone.
    pub left: Vec<NextHop>,
    /// lb's entries no backend needs any more, removed.
    pub removed: Vec<NextHop>,
}

/// The neighbour entries this daemon owns: those it created, and (`adopt_lbs`) an earlier
/// `lb run`'s on the pins it adopted. It never removes another entry.
pub struct NextHopKeeper {
    rtnl: Rtnl,
    owned: BTreeSet<NextHop>,
    adopt_lbs: bool,
    /// Others' entries already reported (logged once, not every refresh).
    reported: BTreeSet<NextHop>,
}

impl NextHopKeeper {
    /// Opens the netlink socket in the calling thread's network namespace.
    pub fn open(adopt_lbs: bool) -> anyhow::Result<NextHopKeeper> {
        let rtnl = Rtnl::open().map_err(|e| {
            anyhow::anyhow!("cannot open a NETLINK_ROUTE socket for the next hops: {e}: the kernel refused a netlink socket (out of file descriptors or memory?)")
        })?;
        Ok(NextHopKeeper {
            rtnl,
            owned: BTreeSet::new(),
            adopt_lbs,
            reported: BTreeSet::new(),
        })
    }

    /// The entries this keeper owns now.
    pub fn owned(&self) -> impl Iterator<Item = &NextHop> {
        self.owned.iter()
    }

    /// Makes sure every backend's next hop has a neighbour entry the kernel keeps resolved, and
    /// removes lb's entries no backend needs. Problems are logged per next hop: a missing route is
    /// a counted `drop_no_route` in the data plane, not a daemon failure.
    pub fn refresh(&mut self, backends: &[IpAddr]) -> RefreshReport {
        let mut report = RefreshReport::default();
        let dsts: Vec<IpAddr> = backends
            .iter()
            .copied()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let mut wanted = BTreeSet::new();
        for (dst, route) in dsts.iter().zip(self.rtnl.routes(&dsts)) {
            match route {
                Ok(hop) => {
                    wanted.insert(hop);
                }
                Err(e) => {
                    if report.unroutable < WARN_LIMIT {
                        warn!(backend = %dst, "cannot resolve the next hop: {e}");
                    }
                    report.unroutable += 1;
                }
            }
        }
        if report.unroutable > WARN_LIMIT {
            warn!(
                unroutable = report.unroutable,
                "backends without a route (only the first {WARN_LIMIT} logged)"
            );
        }
        report.wanted = wanted.len();
        let existing = match self.rtnl.neighbours() {
            Ok(list) => list.into_iter().map(|n| (n.hop, n)).collect(),
            Err(e) => {
                warn!(
                    "cannot read the neighbour table (RTM_GETNEIGH): {e}; next hops unchanged until the next refresh"
                );
                return report;
            }
        };
        self.forget_vanished(&existing);
        self.install(&wanted, &existing, &mut report);
        let stale: Vec<NextHop> = self.owned.difference(&wanted).copied().collect();
        report.removed = self.remove(&stale, &existing);
        report
    }

    /// An owned entry that is gone (deleted by someone) or no longer lb's is not lb's any more.
    fn forget_vanished(&mut self, existing: &HashMap<NextHop, Neighbour>) {
        self.owned.retain(|h| {
            let still = existing.get(h).is_some_and(Neighbour::is_lbs);
            if !still {
                info!(next_hop = %h, "lb's neighbour entry was deleted or changed by someone else: no longer lb's");
            }
            still
        });
    }

    fn install(
        &mut self,
        wanted: &BTreeSet<NextHop>,
        existing: &HashMap<NextHop, Neighbour>,
        report: &mut RefreshReport,
    ) {
        let mut create = Vec::new();
        for hop in wanted.difference(&self.owned.clone()) {
            let entry = existing.get(hop);
            match decide(entry, self.adopt_lbs) {
                Action::Create => create.push(*hop),
                Action::Adopt => {
                    self.owned.insert(*hop);
                    report.adopted.push(*hop);
                }
                Action::Touch => report.touched.push(*hop),
                Action::Leave => {
                    if self.reported.insert(*hop) {
                        let state = entry.map_or("?", Neighbour::state_name);
                        info!(next_hop = %hop, state, "the next hop has a neighbour entry lb did not create: lb leaves it as it is");
                    }
                    report.left.push(*hop);
                }
            }
        }
        for (hop, r) in create.iter().zip(self.rtnl.create_managed(&create)) {
            match r {
                Ok(()) => {
                    info!(next_hop = %hop, "keeping the next hop resolved (managed neighbour entry)");
                    self.owned.insert(*hop);
                    report.created.push(*hop);
                }
                // Someone created it since the dump: theirs.
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => report.left.push(*hop),
                Err(e) => {
                    warn!(next_hop = %hop, "cannot create a managed neighbour entry (RTM_NEWNEIGH): {e} (Linux 5.16 or later and CAP_NET_ADMIN needed)")
                }
            }
        }
        for (hop, r) in report.touched.iter().zip(self.rtnl.touch(&report.touched)) {
            if let Err(e) = r {
                debug!(next_hop = %hop, "cannot mark the neighbour entry used: {e}");
            }
        }
    }

    /// Deletes those of `hops` that are lb's in `existing` (and owned); returns what it deleted.
    fn remove(&mut self, hops: &[NextHop], existing: &HashMap<NextHop, Neighbour>) -> Vec<NextHop> {
        let ours: Vec<NextHop> = hops
            .iter()
            .filter(|h| self.owned.contains(h) && existing.get(h).is_some_and(Neighbour::is_lbs))
            .copied()
            .collect();
        let removed = delete(&mut self.rtnl, &ours);
        for h in hops {
            self.owned.remove(h);
        }
        removed
    }

    /// Leaves the entries in place (for a program that keeps forwarding after the daemon); a later
    /// `lb run` on the same pins adopts them.
    pub fn keep(&mut self) {
        self.owned.clear();
    }

    /// Removes every entry this keeper owns that is still lb's; returns what it removed.
    pub fn release(&mut self) -> Vec<NextHop> {
        if self.owned.is_empty() {
            return Vec::new();
        }
        let existing = match self.rtnl.neighbours() {
            Ok(list) => list.into_iter().map(|n| (n.hop, n)).collect(),
            Err(e) => {
                warn!(
                    "cannot read the neighbour table (RTM_GETNEIGH): {e}; lb's managed entries stay (`ip neigh show protocol 250` lists them)"
                );
                self.owned.clear();
                return Vec::new();
            }
        };
        let owned: Vec<NextHop> = self.owned.iter().copied().collect();
        self.remove(&owned, &existing)
    }
}

/// Deletes every neighbour entry an `lb run` made in this network namespace (managed, lb's protocol
/// number), whoever's it was: for `lb detach` after a run that left them (a plain exit or a crash),
/// when no other `lb run` here could own one. Returns what it deleted; entries it could not
/// delete are logged.
pub fn release_left_over() -> io::Result<Vec<NextHop>> {
    let mut rtnl = Rtnl::open()?;
    let lbs: Vec<NextHop> = rtnl
        .neighbours()?
        .into_iter()
        .filter(Neighbour::is_lbs)
        .map(|n| n.hop)
        .collect();
    Ok(delete(&mut rtnl, &lbs))
}

/// Deletes the neighbour entries of `hops`; returns those it deleted (one already gone is not an
/// error; any other failure is logged with how to delete it by hand).
fn delete(rtnl: &mut Rtnl, hops: &[NextHop]) -> Vec<NextHop> {
    let mut removed = Vec::new();
    for (hop, r) in hops.iter().zip(rtnl.delete(hops)) {
        match r {
            Ok(()) => {
                debug!(next_hop = %hop, "released the next hop");
                removed.push(*hop);
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => {
                warn!(next_hop = %hop, "cannot delete lb's neighbour entry (RTM_DELNEIGH): {e}; remove it with `ip neigh del {}`", hop)
            }
        }
    }
    removed
}

impl Drop for NextHopKeeper {
    fn drop(&mut self) {
        self.release();
    }
}
