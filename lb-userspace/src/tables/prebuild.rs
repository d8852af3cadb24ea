//! Building many services' tables at once, on every CPU, before the ids are known: a cold start of
//! 1,000 Maglev services of 65,537 entries is ~1.1 s of table building on one CPU.
//!
//! A [`Prebuilt`] table holds positions in its backend list (ordinals) instead of ids;
//! [`Prebuilt::with_ids`] turns it into the table of the same backends under their real ids. Every
//! builder orders backends by address only, so the result is exactly what [`build_slot_tables`]
//! gives for those backends.

use std::net::SocketAddr;
use std::num::NonZeroUsize;

use lb_common::service::TableKind;

use super::{SlotTables, TableBackend, build_slot_tables};

/// Below this many tables a build is not worth a thread.
const MIN_TABLES_FOR_THREADS: usize = 2;

/// One service's tables built over ordinals.
#[derive(Clone, Debug)]
pub struct Prebuilt {
    kind: TableKind,
    table_size: u32,
    /// The backends in ordinal order, as given.
    backends: Vec<(SocketAddr, u32)>,
    tables: SlotTables,
}

/// A table to build: the scheduler's kind and its backends in the order their ids will be given
/// (the `id` fields are ignored).
pub struct TableJob {
    pub kind: TableKind,
    pub backends: Vec<TableBackend>,
}

impl Prebuilt {
    /// Builds `job`'s tables over ordinals.
    pub fn build(job: TableJob, table_size: u32, seed: u32) -> Prebuilt {
        let ordinals: Vec<TableBackend> = job
            .backends
            .iter()
            .enumerate()
            .map(|(i, b)| TableBackend {
                id: i as u32,
                addr: b.addr,
                weight: b.weight,
            })
            .collect();
        Prebuilt {
            kind: job.kind,
            table_size,
            backends: job.backends.iter().map(|b| (b.addr, b.weight)).collect(),
            tables: build_slot_tables(job.kind, &ordinals, table_size, seed),
        }
    }

    /// Whether this was built for these backends (same addresses, weights and order; ids are not
    /// looked at), kind and size.
    pub fn is_for(&self, kind: TableKind, backends: &[TableBackend], table_size: u32) -> bool {
        kind == self.kind
            && table_size == self.table_size
            && backends.len() == self.backends.len()
            && backends
                .iter()
                .zip(&self.backends)
                .all(|(b, (addr, weight))| b.addr == *addr && b.weight == *weight)
    }

    /// The tables for `backends` (with their real ids), when they are the ones this was built for
    /// ([`Prebuilt::is_for`]); `None` otherwise.
    pub fn with_ids(
        &self,
        kind: TableKind,
        backends: &[TableBackend],
        table_size: u32,
    ) -> Option<SlotTables> {
        if !self.is_for(kind, backends, table_size) {
            return None;
        }
        let ids = self
            .tables
            .ids
            .iter()
            .map(|&ordinal| backends.get(ordinal as usize).map(|b| b.id))
            .collect::<Option<Vec<u32>>>()?;
        // Not `..self.tables.clone()`: that copies the ordinal table (256 KB at 65,537) only to drop it.
        Some(SlotTables {
            ids,
            table_len: self.tables.table_len,
            hash_start: self.tables.hash_start,
            hash_len: self.tables.hash_len,
        })
    }
}

/// Builds every job's tables, spread over the CPUs (one thread for a single job), in the jobs'
/// order; `None` where a builder thread failed.
pub fn prebuild(jobs: Vec<TableJob>, table_size: u32, seed: u32) -> Vec<Option<Prebuilt>> {
    let build = |job: TableJob| Prebuilt::build(job, table_size, seed);
    let threads = std::thread::available_parallelism()
        .map(NonZeroUsize::get)
        .unwrap_or(1)
        .min(jobs.len());
    if threads < 2 || jobs.len() < MIN_TABLES_FOR_THREADS {
        return jobs.into_iter().map(|job| Some(build(job))).collect();
    }
    // Round-robin shares keep neighbours (often of similar size) on different threads.
    let mut shares: Vec<Vec<(usize, TableJob)>> = (0..threads).map(|_| Vec::new()).collect();
    for (i, job) in jobs.into_iter().enumerate() {
        shares[i % threads].push((i, job));
    }
    let jobs_len = shares.iter().map(Vec::len).sum();
    let mut built: Vec<Option<Prebuilt>> = (0..jobs_len).map(|_| None).collect();
    std::thread::scope(|scope| {
        let handles: Vec<_> = shares
            .into_iter()
            .map(|share| {
                scope.spawn(move || {
                    share
                        .into_iter()
                        .map(|(i, job)| (i, build(job)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for handle in handles {
            // A builder that panicked leaves its tables unbuilt: they are built in line later.
            for (i, prebuilt) in handle.join().unwrap_or_default() {
                built[i] = Some(prebuilt);
            }
        }
    });
    built
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tables::test_support::with_weights;

    #[test]
    fn prebuilt_tables_are_the_tables_of_the_same_backends_under_their_ids() {
        let kinds = [
            TableKind::Maglev,
            TableKind::WeightedSequence,
            TableKind::BackendList,
        ];
        let mut expected = Vec::new();
        let mut jobs = Vec::new();
        for (n, kind) in kinds.iter().enumerate() {
            // Ids far from the ordinals, not in address order.
            let backends: Vec<TableBackend> = with_weights(&[3, 1, 2, 5][..n + 2])
                .into_iter()
                .enumerate()
                .map(|(i, b)| TableBackend {
                    id: 1000 - 7 * i as u32,
                    ..b
                })
                .collect();
            expected.push(build_slot_tables(*kind, &backends, 1009, 42));
            jobs.push((*kind, backends));
        }
        let built = prebuild(
            jobs.iter()
                .map(|(kind, backends)| TableJob {
                    kind: *kind,
                    backends: backends.clone(),
                })
                .collect(),
            1009,
            42,
        );
        assert_eq!(built.len(), jobs.len());
        for ((prebuilt, (kind, backends)), want) in built.iter().zip(&jobs).zip(&expected) {
            let prebuilt = prebuilt.as_ref().expect("built");
            assert_eq!(
                prebuilt.with_ids(*kind, backends, 1009).as_ref(),
                Some(want)
            );
        }
    }

    #[test]
    fn a_prebuilt_table_is_refused_for_other_backends() {
        let backends = with_weights(&[1, 1, 1]);
        let built = prebuild(
            vec![TableJob {
                kind: TableKind::Maglev,
                backends: backends.clone(),
            }],
            1009,
            1,
        );
        let built = built[0].as_ref().expect("built");
        let mut reweighted = backends.clone();
        reweighted[1].weight = 2;
        assert!(
            built
                .with_ids(TableKind::Maglev, &reweighted, 1009)
                .is_none()
        );
        assert!(
            built
                .with_ids(TableKind::Maglev, &backends[..2], 1009)
                .is_none()
        );
        assert!(
            built
                .with_ids(TableKind::BackendList, &backends, 1009)
                .is_none()
        );
        assert!(built.with_ids(TableKind::Maglev, &backends, 2003).is_none());
        assert!(built.with_ids(TableKind::Maglev, &backends, 1009).is_some());
    }
}
