//! Weighted Maglev consistent hashing (Eisenbud et al., NSDI 2016, section 3.4).
//!
//! Each backend walks its own permutation of the table's slots and claims the next free one on its
//! turns. The permutation comes from two seeded hashes of the backend's socket address, so removing a
//! backend moves few flows of the others, and every LB with the same backends builds the same table.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::SocketAddr;

use lb_common::hash::hash_words;

use super::{TableBackend, sorted_by_addr};

/// Marks a free slot while the table is built (never a valid backend id in a finished table).
const FREE: u32 = u32::MAX;
/// Mixed into the seed of the skip hash so offset and skip are independent.
const SKIP_SEED_SALT: u32 = 0x9e37_79b9;

/// Is `n` prime? (Trial division: at most 2^16 steps for any `u32`.)
pub fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    if n.is_multiple_of(2) {
        return n == 2;
    }
    let n = u64::from(n);
    let mut d = 3u64;
    while d * d <= n {
        if n % d == 0 {
            return false;
        }
        d += 2;
    }
    true
}

/// Entries of a Maglev table built for `size` slots: the largest prime ≤ `size` (0 below 2). The table
/// size must be prime so every skip walks a full permutation of the slots.
pub fn maglev_table_len(size: u32) -> u32 {
    let mut m = size;
    while m >= 2 {
        if is_prime(m) {
            return m;
        }
        m -= 1;
    }
    0
}

/// Builds a weighted Maglev lookup table of [`maglev_table_len`]`(size)` backend ids (`size` itself
/// when it is prime, as [`lb_common::limits::DEFAULT_TABLE_SIZE`] is). Empty when no backend has a
/// weight.
///
/// Weights: turns are handed out in rounds; the heaviest backend claims a slot every round and a backend
/// of weight w claims one every `max_weight / w` rounds, so its share of the table is its share of the
/// weights. With equal weights this is the paper's algorithm, and every backend ends up with ⌊M/N⌋ or
/// ⌈M/N⌉ slots.
///
/// Cost: O(M log M) expected for the permutation walks (each backend visits a slot at most once) plus
/// O(M log N) for the turn order.
pub fn build_maglev_table(backends: &[TableBackend], size: u32, seed: u32) -> Vec<u32> {
    let m = maglev_table_len(size);
    let sorted: Vec<&TableBackend> = sorted_by_addr(backends)
        .into_iter()
        .filter(|b| b.weight > 0)
        .collect();
    if m == 0 || sorted.is_empty() {
        return Vec::new();
    }
    let max_weight = sorted
        .iter()
        .map(|b| u64::from(b.weight))
        .max()
        .unwrap_or(1);
    let mut walks: Vec<PermutationWalk> = sorted
        .iter()
        .map(|b| PermutationWalk::new(b.addr, m, seed))
        .collect();

    let mut table = vec![FREE; m as usize];
    let equal = sorted.iter().all(|b| u64::from(b.weight) == max_weight);
    let filled = if equal {
        fill_in_rounds(&sorted, &mut walks, &mut table)
    } else {
        fill_by_weight(&sorted, &mut walks, &mut table, max_weight)
    };
    debug_assert_eq!(
        filled as usize,
        table.len(),
        "a Maglev table was left with free slots"
    );
    table
}

/// Equal weights: every round gives every backend one turn, in address order (what
/// [`fill_by_weight`] does then, without its heap). Returns the slots filled.
fn fill_in_rounds(
    sorted: &[&TableBackend],
    walks: &mut [PermutationWalk],
    table: &mut [u32],
) -> u32 {
    let m = table.len() as u32;
    let mut taken = Taken::new(table.len());
    let mut filled = 0u32;
    while filled < m {
        for (backend, walk) in sorted.iter().zip(walks.iter_mut()) {
            // `None` is unreachable while slots are free: a walk covers every slot once.
            let Some(slot) = walk.claim(&mut taken) else {
                return filled;
            };
            table[slot] = backend.id;
            filled += 1;
            if filled == m {
                return filled;
            }
        }
    }
    filled
}

/// Turn k (1-based) of backend i comes in round ⌈k·max_weight / w_i⌉; within a round, address
/// order. Returns the slots filled.
fn fill_by_weight(
    sorted: &[&TableBackend],
    walks: &mut [PermutationWalk],
    table: &mut [u32],
    max_weight: u64,
) -> u32 {
    let m = table.len() as u32;
    let next_round =
        |i: usize, turn: u64| (turn * max_weight).div_ceil(u64::from(sorted[i].weight));
    let mut turns: Vec<u64> = vec![1; sorted.len()];
    let mut queue: BinaryHeap<Reverse<(u64, usize)>> = (0..sorted.len())
        .map(|i| Reverse((next_round(i, 1), i)))
        .collect();
    let mut taken = Taken::new(table.len());
    let mut filled = 0u32;
    while filled < m {
        let Some(Reverse((_, i))) = queue.pop() else {
            break;
        };
        let Some(slot) = walks[i].claim(&mut taken) else {
            break;
        };
        table[slot] = sorted[i].id;
        filled += 1;
        turns[i] += 1;
        queue.push(Reverse((next_round(i, turns[i]), i)));
    }
    filled
}

/// A backend's position in its permutation `offset, offset + skip, offset + 2·skip, ... (mod M)`.
struct PermutationWalk {
    next: u64,
    skip: u64,
    m: u64,
    /// Slots visited so far; a full permutation has M, which caps the walk.
    visited: u64,
}

impl PermutationWalk {
    fn new(addr: SocketAddr, m: u32, seed: u32) -> PermutationWalk {
        let words = address_words(addr);
        let m = u64::from(m);
        let offset = u64::from(hash_words(&words, seed)) % m;
        let skip = if m > 1 {
            u64::from(hash_words(&words, seed ^ SKIP_SEED_SALT)) % (m - 1) + 1
        } else {
            1
        };
        PermutationWalk {
            next: offset,
            skip,
            m,
            visited: 0,
        }
    }

    /// Takes the backend's next free slot, or `None` once it has visited every slot.
    ///
    /// The probe loop is most of a cold start's CPU (a table of M slots takes ~M·ln M probes): its
    /// position lives in registers until the walk stops, and a probe of a taken slot only reads.
    fn claim(&mut self, taken: &mut Taken) -> Option<usize> {
        let (skip, m) = (self.skip, self.m);
        let (mut next, mut visited) = (self.next, self.visited);
        let mut claimed = None;
        while visited < m {
            let slot = next as usize;
            // `next` and `skip` are below `m`: one subtraction is the modulo (a division per
            // step was most of a large table's build time).
            next += skip;
            if next >= m {
                next -= m;
            }
            visited += 1;
            if taken.take(slot) {
                claimed = Some(slot);
                break;
            }
        }
        self.next = next;
        self.visited = visited;
        claimed
    }
}

/// Which slots are claimed, one bit each: the walks probe this (8 KB for 65,537 slots, in the
/// L1 cache) rather than the table (256 KB).
struct Taken(Vec<u64>);

impl Taken {
    fn new(slots: usize) -> Taken {
        Taken(vec![0; slots.div_ceil(64)])
    }

    /// Claims `slot`; false when it was claimed already.
    #[inline]
    fn take(&mut self, slot: usize) -> bool {
        let (word, bit) = (slot / 64, 1u64 << (slot % 64));
        let Some(w) = self.0.get_mut(word) else {
            return false;
        };
        if *w & bit != 0 {
            return false;
        }
        *w |= bit;
        true
    }
}

/// The hash input of a backend: its address bytes (as little-endian words, so every host hashes the
/// same), then port and family.
fn address_words(addr: SocketAddr) -> [u32; 5] {
    let (bytes, family): ([u8; 16], u32) = match addr {
        SocketAddr::V4(v4) => {
            let mut b = [0u8; 16];
            b[..4].copy_from_slice(&v4.ip().octets());
            (b, 4)
        }
        SocketAddr::V6(v6) => (v6.ip().octets(), 6),
    };
    let word = |i: usize| u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
    [
        word(0),
        word(4),
        word(8),
        word(12),
        u32::from(addr.port()) | (family << 16),
    ]
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::net::SocketAddr;

    use lb_common::limits::DEFAULT_TABLE_SIZE;

    use super::super::test_support::*;
    use super::*;

    const M: u32 = DEFAULT_TABLE_SIZE;

    /// FNV-1a of a table's ids.
    fn fingerprint(table: &[u32]) -> u64 {
        table.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, id| {
            (h ^ u64::from(*id)).wrapping_mul(0x0100_0000_01b3)
        })
    }

    /// The tables every earlier release built for these backends: a faster build must build the
    /// same ones, or an upgrade (and a mixed fleet) would move flows.
    #[test]
    fn tables_are_the_ones_earlier_releases_built() {
        let equal = backends(100, 1);
        let weighted = with_weights(&[1, 2, 3, 5, 8, 13, 21]);
        assert_eq!(
            (
                fingerprint(&build_maglev_table(&equal, M, 42)),
                fingerprint(&build_maglev_table(&weighted, M, 7)),
                fingerprint(&build_maglev_table(&backends(4096, 1), M, 0)),
            ),
            (
                957_631_523_223_524_585,
                1_643_032_532_970_560_613,
                5_062_352_285_126_868_793
            )
        );
    }

    /// The rounds without a heap are the heap's turn order when weights are equal: the same
    /// table, so the fast path moves no flow (as a build of another version would not either).
    #[test]
    fn equal_weights_fill_the_same_table_in_rounds_as_by_weight() {
        for (n, m, seed) in [(3, 7, 0), (100, M, 1), (7, 251, 2), (1, 13, 3)] {
            let owned = backends(n, 5);
            let sorted = sorted_by_addr(&owned);
            let walks = || -> Vec<PermutationWalk> {
                sorted
                    .iter()
                    .map(|b| PermutationWalk::new(b.addr, m, seed))
                    .collect()
            };
            let mut rounds = vec![FREE; m as usize];
            let mut weighted = vec![FREE; m as usize];
            assert_eq!(fill_in_rounds(&sorted, &mut walks(), &mut rounds), m);
            assert_eq!(fill_by_weight(&sorted, &mut walks(), &mut weighted, 5), m);
            assert_eq!(rounds, weighted, "{n} backends, M = {m}");
        }
    }

    #[test]
    fn table_size_is_prime() {
        assert!(is_prime(M));
        assert!(is_prime(2) && is_prime(3) && is_prime(65_521) && is_prime(4_294_967_291));
        assert!(!is_prime(0) && !is_prime(1) && !is_prime(65_536) && !is_prime(65_535));
        assert_eq!(maglev_table_len(M), M);
        assert_eq!(maglev_table_len(65_536), 65_521);
        assert_eq!(maglev_table_len(1), 0);
        assert_eq!(build_maglev_table(&backends(3, 1), 100, 0).len(), 97);
        assert!(build_maglev_table(&backends(3, 1), 1, 0).is_empty());
    }

    #[test]
    fn empty_or_weightless_input_gives_an_empty_table() {
        assert!(build_maglev_table(&[], M, 0).is_empty());
        assert!(build_maglev_table(&backends(3, 0), M, 0).is_empty());
    }

    #[test]
    fn equal_weights_balance_within_one_percent() {
        for n in [3u32, 10, 100, 1000] {
            let table = build_maglev_table(&backends(n, 1), M, 7);
            assert_eq!(table.len(), M as usize);
            let c = counts(&table, n as usize);
            let max = *c.iter().max().unwrap_or(&0) as f64;
            let mean = f64::from(M) / f64::from(n);
            assert!(max / mean <= 1.01, "N={n}: max {max} mean {mean}");
            assert!(c.iter().all(|&x| x > 0), "N={n}: a backend got no slot");
        }
    }

    #[test]
    fn weighted_shares_follow_weights() {
        for weights in [[1u32, 2, 3], [10, 1, 100], [65_535, 1, 30_000]] {
            let table = build_maglev_table(&with_weights(&weights), M, 0);
            let c = counts(&table, 3);
            let sum: u32 = weights.iter().sum();
            for i in 0..3 {
                let want = f64::from(weights[i]) / f64::from(sum);
                let got = c[i] as f64 / f64::from(M);
                // Within 1% of the expected share, or one slot for tiny shares.
                let tolerance = (0.01 * want).max(1.0 / f64::from(M));
                assert!(
                    (got - want).abs() <= tolerance,
                    "{weights:?}[{i}]: {got} vs {want}"
                );
            }
        }
    }

    /// Fraction of slots whose backend differs between two tables.
    fn changed_fraction(before: &[u32], after: &[u32]) -> f64 {
        let changed = before.iter().zip(after).filter(|(a, b)| a != b).count();
        changed as f64 / before.len() as f64
    }

    /// Bounds on the fraction of all slots that change when one of N backends is removed. The removed
    /// backend's own ≈1/N must move; Maglev moves some others too, more as M/N shrinks. Measured at
    /// M = 65537 over 5 seeds and 7 removals each: at most 1.08/N for N = 10 and 1.60/N for N = 100
    /// (the paper's figure 11 shows the same trend).
    const DISRUPTION_BOUNDS: [(u32, f64); 2] = [(10, 1.25), (100, 2.0)];

    #[test]
    fn removing_one_backend_moves_few_other_slots() {
        for (n, bound) in DISRUPTION_BOUNDS {
            let all = backends(n, 1);
            let before = build_maglev_table(&all, M, 0);
            let removed = n / 3;
            let rest: Vec<TableBackend> = all.into_iter().filter(|b| b.id != removed).collect();
            let after = build_maglev_table(&rest, M, 0);
            assert!(!after.contains(&removed));
            let own = before.iter().filter(|&&id| id == removed).count() as f64 / f64::from(M);
            let total = changed_fraction(&before, &after);
            assert!(total >= own);
            assert!(
                total <= bound / f64::from(n),
                "N={n}: {total} of slots changed (own {own}), bound {bound}/N"
            );
        }
    }

    #[test]
    fn adding_a_backend_moves_few_slots() {
        for (n, bound) in DISRUPTION_BOUNDS {
            let before = build_maglev_table(&backends(n, 1), M, 0);
            let after = build_maglev_table(&backends(n + 1, 1), M, 0);
            let total = changed_fraction(&before, &after);
            assert!(
                total <= bound / f64::from(n + 1),
                "N={n}: {total} of slots changed"
            );
        }
    }

    #[test]
    fn same_addresses_give_the_same_table_whatever_ids_and_order() {
        let a = backends(50, 1);
        let table_a = build_maglev_table(&a, M, 3);
        assert_eq!(
            table_a,
            build_maglev_table(&a, M, 3),
            "deterministic across runs"
        );

        // Other ids, reversed input order.
        let mut b: Vec<TableBackend> = a
            .iter()
            .map(|x| TableBackend {
                id: 1000 + 7 * x.id,
                ..x.clone()
            })
            .collect();
        b.reverse();
        let table_b = build_maglev_table(&b, M, 3);
        let addr_of_a: HashMap<u32, SocketAddr> = a.iter().map(|x| (x.id, x.addr)).collect();
        let addr_of_b: HashMap<u32, SocketAddr> = b.iter().map(|x| (x.id, x.addr)).collect();
        assert!(
            table_a
                .iter()
                .zip(&table_b)
                .all(|(ia, ib)| addr_of_a[ia] == addr_of_b[ib]),
            "tables differ beyond the id mapping"
        );
    }

    #[test]
    fn seed_changes_the_table() {
        let b = backends(10, 1);
        let t0 = build_maglev_table(&b, M, 0);
        let t1 = build_maglev_table(&b, M, 1);
        assert!(changed_fraction(&t0, &t1) > 0.5);
    }

    #[test]
    fn ipv6_backends_build_a_balanced_table() {
        let b: Vec<TableBackend> = (0..10u32)
            .map(|i| TableBackend {
                id: i,
                addr: SocketAddr::new(format!("2001:db8::{:x}", i + 1).parse().expect("ip"), 80),
                weight: 1,
            })
            .collect();
        let table = build_maglev_table(&b, M, 0);
        let c = counts(&table, 10);
        assert!(c.iter().all(|&x| x == 6553 || x == 6554), "{c:?}");
    }
}
