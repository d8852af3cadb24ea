//! Pure builders of the per-service tables the XDP program schedules from. Entries are backend ids.
//!
//! Every builder orders backends by address before anything else, so every LB instance given the same
//! backends builds the same table, whatever ids it assigned and in whatever order it got them.

mod backend_list;
mod maglev;
mod prebuild;
mod weighted_sequence;

use std::net::SocketAddr;

use lb_common::service::TableKind;

pub use backend_list::build_backend_list;
pub use maglev::{build_maglev_table, is_prime, maglev_table_len};
pub use prebuild::{Prebuilt, TableJob, prebuild};
pub use weighted_sequence::build_weighted_sequence;

/// A backend as a table builder sees it.
#[derive(Clone, Debug)]
pub struct TableBackend {
    /// What the table holds (an index of `LB_BACKENDS`).
    pub id: u32,
    /// What the order and the Maglev permutation are derived from.
    pub addr: SocketAddr,
    pub weight: u32,
}

/// Builds the table of a service: only backends with weight > 0 are given (the caller filters drain/down).
///
/// The result holds at most `table_size` entries; an empty input gives an empty table.
pub fn build_table(
    kind: TableKind,
    backends: &[TableBackend],
    table_size: u32,
    seed: u32,
) -> Vec<u32> {
    match kind {
        TableKind::BackendList => {
            let mut list = build_backend_list(backends);
            list.truncate(table_size as usize);
            list
        }
        TableKind::WeightedSequence => build_weighted_sequence(backends, table_size),
        TableKind::Maglev => build_maglev_table(backends, table_size, seed),
    }
}

/// What one service writes into its slot of the schedule pool: the scheduler's table, then (unless
/// the scheduler is Maglev, whose table is its own consistent hash) a Maglev table of the same
/// backends, which packets without a flow entry are forwarded by.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotTables {
    /// The slot's contents from its start: `table_len` scheduler entries, then the hash table.
    pub ids: Vec<u32>,
    pub table_len: u32,
    /// Where the hash table starts in the slot.
    pub hash_start: u32,
    pub hash_len: u32,
}

/// Builds a service's [`SlotTables`] for a slot of `table_size` entries. The hash table takes the
/// room the scheduler's table leaves, up to [`lb_common::limits::HASH_TABLE_MAX`] entries (a prime,
/// so the same backends give the same table whatever the scheduler's table length); when no room is
/// left it falls back to hashing over the scheduler's table.
pub fn build_slot_tables(
    kind: TableKind,
    backends: &[TableBackend],
    table_size: u32,
    seed: u32,
) -> SlotTables {
    let mut ids = build_table(kind, backends, table_size, seed);
    let table_len = ids.len() as u32;
    if kind == TableKind::Maglev {
        return SlotTables {
            ids,
            table_len,
            hash_start: 0,
            hash_len: table_len,
        };
    }
    let room = table_size.saturating_sub(table_len);
    let hash = build_maglev_table(backends, room.min(lb_common::limits::HASH_TABLE_MAX), seed);
    if hash.is_empty() {
        return SlotTables {
            ids,
            table_len,
            hash_start: 0,
            hash_len: table_len,
        };
    }
    let hash_len = hash.len() as u32;
    ids.extend(hash);
    SlotTables {
        ids,
        table_len,
        hash_start: table_len,
        hash_len,
    }
}

/// The backends in address order (the order every builder starts from).
fn sorted_by_addr(backends: &[TableBackend]) -> Vec<&TableBackend> {
    let mut sorted: Vec<&TableBackend> = backends.iter().collect();
    sorted.sort_by_key(|b| b.addr);
    sorted
}

#[cfg(test)]
mod test_support {
    use std::net::{IpAddr, Ipv4Addr, SocketAddr};

    use super::TableBackend;

    /// `n` backends 198.18.x.y:80 with ids 0.. and the given weight.
    pub fn backends(n: u32, weight: u32) -> Vec<TableBackend> {
        (0..n)
            .map(|i| TableBackend {
                id: i,
                addr: SocketAddr::new(
                    IpAddr::V4(Ipv4Addr::new(198, 18, (i >> 8) as u8, (i & 0xff) as u8)),
                    80,
                ),
                weight,
            })
            .collect()
    }

    pub fn with_weights(weights: &[u32]) -> Vec<TableBackend> {
        let mut out = backends(weights.len() as u32, 1);
        for (b, w) in out.iter_mut().zip(weights) {
            b.weight = *w;
        }
        out
    }

    /// How many entries each id got, indexed by id.
    pub fn counts(table: &[u32], ids: usize) -> Vec<usize> {
        let mut c = vec![0; ids];
        for id in table {
            c[*id as usize] += 1;
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::*;
    use super::*;

    #[test]
    fn every_slot_has_a_consistent_hash_table() {
        let b = backends(3, 1);
        // Round robin: the list, then a Maglev table of the largest prime that fits.
        let rr = build_slot_tables(TableKind::BackendList, &b, 101, 0);
        assert_eq!((rr.table_len, rr.hash_start, rr.hash_len), (3, 3, 97));
        assert_eq!(rr.ids.len(), 100);
        assert_eq!(&rr.ids[3..], &build_maglev_table(&b, 97, 0)[..]);
        // The hash table's length does not follow the backend count (only the room, capped).
        let big = build_slot_tables(TableKind::BackendList, &b, 65_537, 0);
        let bigger = build_slot_tables(TableKind::BackendList, &backends(4, 1), 65_537, 0);
        assert_eq!(big.hash_len, lb_common::limits::HASH_TABLE_MAX);
        assert_eq!(bigger.hash_len, lb_common::limits::HASH_TABLE_MAX);
        // Maglev: its table is the hash table.
        let m = build_slot_tables(TableKind::Maglev, &b, 101, 0);
        assert_eq!((m.table_len, m.hash_start, m.hash_len), (101, 0, 101));
        assert_eq!(m.ids.len(), 101);
        // No room left: hash over the scheduler's table.
        let full = build_slot_tables(TableKind::BackendList, &b, 3, 0);
        assert_eq!((full.table_len, full.hash_start, full.hash_len), (3, 0, 3));
        // No backend: nothing.
        let none = build_slot_tables(TableKind::BackendList, &[], 101, 0);
        assert_eq!((none.table_len, none.hash_len), (0, 0));
    }

    #[test]
    fn build_table_dispatches_on_kind() {
        let b = with_weights(&[1, 2]);
        assert_eq!(build_table(TableKind::BackendList, &b, 101, 0), vec![0, 1]);
        assert_eq!(
            build_table(TableKind::WeightedSequence, &b, 101, 0).len(),
            3
        );
        assert_eq!(build_table(TableKind::Maglev, &b, 101, 0).len(), 101);
        for kind in [
            TableKind::BackendList,
            TableKind::WeightedSequence,
            TableKind::Maglev,
        ] {
            assert!(build_table(kind, &[], 101, 0).is_empty(), "{kind:?}");
        }
    }
}
