//! What a load balancer's pinned maps hold for forwarding, read straight from its pins (aya, as
//! `lb status` does): every service (VIP key, entry, metadata, the scheduler and hash tables of its
//! slot) and every valid backend entry, byte for byte, so tests can tell whether two LBs forward
//! identically and whether a backend ever left a table.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use anyhow::Context as _;
use lb_common::{BACKEND_F_DRAINING, BackendEntry, addr::from_words};
use lb_userspace::dataplane::MapsView;

use super::Lab;

/// The forwarding state of one LB's pins.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PinnedTables {
    /// By VIP key bytes: the service entry, its metadata and its slot's tables, as bytes.
    pub services: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Every valid backend entry by id, as bytes.
    pub backends: BTreeMap<u32, Vec<u8>>,
    /// Backends (address) that are valid, not draining, and in their service's tables.
    pub serving: BTreeSet<SocketAddr>,
}

impl PinnedTables {
    /// What differs from `other`, one line per service or backend (empty: byte-identical).
    pub fn differences(&self, other: &PinnedTables) -> Vec<String> {
        let mut out = Vec::new();
        let keys: BTreeSet<&Vec<u8>> = self.services.keys().chain(other.services.keys()).collect();
        for key in keys {
            let (a, b) = (self.services.get(key), other.services.get(key));
            if a != b {
                out.push(format!(
                    "service key {key:?}: {} vs {} bytes, first difference at byte {:?}",
                    a.map_or(0, Vec::len),
                    b.map_or(0, Vec::len),
                    first_difference(a, b)
                ));
            }
        }
        let ids: BTreeSet<&u32> = self.backends.keys().chain(other.backends.keys()).collect();
        for id in ids {
            let (a, b) = (self.backends.get(id), other.backends.get(id));
            if a != b {
                out.push(format!("backend {id}: {a:?} vs {b:?}"));
            }
        }
        out
    }
}

fn first_difference(a: Option<&Vec<u8>>, b: Option<&Vec<u8>>) -> Option<usize> {
    let (a, b) = (a?, b?);
    a.iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .or_else(|| (a.len() != b.len()).then(|| a.len().min(b.len())))
}

fn backend_addr(b: &BackendEntry) -> Option<SocketAddr> {
    from_words(b.addr, b.family).map(|ip| SocketAddr::new(ip, u16::from_be(b.port_be)))
}

impl Lab {
    /// Reads load balancer `lb`'s pinned maps (read-only; the daemon keeps running).
    pub fn lb_pinned_tables(&self, lb: usize) -> anyhow::Result<PinnedTables> {
        let pin_dir = self.lb_pin_dir(lb);
        let maps = MapsView::open_pinned(&pin_dir)
            .with_context(|| format!("opening lb{lb}'s pins in {}", pin_dir.display()))?;
        let state = maps
            .pinned_state()
            .with_context(|| format!("reading lb{lb}'s pinned maps"))?;
        let mut tables = PinnedTables::default();
        let mut in_tables = BTreeSet::new();
        for s in &state.services {
            let mut bytes = bytemuck::bytes_of(&s.entry).to_vec();
            bytes.extend_from_slice(bytemuck::bytes_of(&s.meta));
            bytes.extend_from_slice(bytemuck::cast_slice(&s.table));
            tables
                .services
                .insert(bytemuck::bytes_of(&s.key).to_vec(), bytes);
            in_tables.extend(s.table.iter().map(|&id| (s.entry.id, id)));
        }
        for (&id, b) in &state.backends {
            tables.backends.insert(id, bytemuck::bytes_of(b).to_vec());
            if b.flags & BACKEND_F_DRAINING == 0
                && in_tables.contains(&(b.service_id, id))
                && let Some(addr) = backend_addr(b)
            {
                tables.serving.insert(addr);
            }
        }
        Ok(tables)
    }
}
