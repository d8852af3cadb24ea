//! Pure builders of the per-service tables the XDP program schedules from. Entries are backend ids.
//!
//! Every builder orders backends by address before anything else, so every LB instance given the same
//! backends builds the same table, whatever ids it assigned and in whatever order it got them.

mod backend_list;
mod maglev;
mod weighted_sequence;

use std::net::SocketAddr;

use lb_common::service::TableKind;

pub use backend_list::build_backend_list;
pub use maglev::{build_maglev_table, is_prime, maglev_table_len};
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
