//! The end of a Maglev fill: few slots free, and a walk probes ~M/F slots per claim when F of the M
//! slots are free (the coupon collector's tail: with many backends, the last √M slots take about
//! half of the probes of a build that probes to the end).
//!
//! The tail finds the same claims from the free slots instead. A backend's permutation puts slot s
//! at position (s − offset)·skip⁻¹ mod M (M is prime, so skip has an inverse). Every slot at a
//! position the walk has passed is taken (it was when the walk passed it, or the walk claimed it,
//! and claimed slots stay claimed), so the free slot at the smallest position is the first free
//! slot ahead of the walk: the one probing would claim. Finding it takes one look at each free slot,
//! cheaper than probing for the last ~0.8·√M claims ([`super::probe_until`]). The walk is left
//! where probing would have left it.

use super::{PermutationWalk, Taken};

/// The free slots of a table being filled, and the backends' permutations as the tail needs them.
pub(super) struct Tail {
    /// In no order: a claim moves the last one into its place.
    free: Vec<u32>,
    m: u64,
    /// skip⁻¹ mod M per backend; 0 until its first turn in the tail (many never get one).
    inverses: Vec<u64>,
}

impl Tail {
    /// The tail of a table of `slots` slots, `taken` the ones claimed so far.
    pub(super) fn new(taken: &Taken, slots: usize, backends: usize) -> Tail {
        Tail {
            free: taken.free_slots(slots),
            m: slots as u64,
            inverses: vec![0; backends],
        }
    }

    /// Claims for backend `i` the slot its walk's probing would claim next and moves the walk past
    /// it; `None` once no slot is free.
    pub(super) fn claim(&mut self, i: usize, walk: &mut PermutationWalk) -> Option<usize> {
        let positions = self.positions(i, walk);
        let (index, position) = nearest(&self.free, &positions)?;
        let slot = self.free.swap_remove(index);
        walk.move_past(position, u64::from(slot));
        Some(slot as usize)
    }

    fn positions(&mut self, i: usize, walk: &PermutationWalk) -> Positions {
        if self.inverses[i] == 0 {
            self.inverses[i] = modular_inverse(walk.skip, self.m);
        }
        Positions::new(walk.offset, self.inverses[i], self.m)
    }
}

/// The index in `free` of the slot at the smallest position, and that position.
fn nearest(free: &[u32], positions: &Positions) -> Option<(usize, u64)> {
    // The position above the index (both below M < 2^32): a minimum of integers, no branch per
    // slot. Distinct slots are at distinct positions, so the order of `free` does not matter.
    let best = free
        .iter()
        .enumerate()
        .map(|(index, &slot)| (positions.of(slot) << 32) | index as u64)
        .min()?;
    Some(((best & 0xffff_ffff) as usize, best >> 32))
}

/// Positions in one backend's permutation: slot s is at (s − offset)·skip⁻¹ mod M.
///
/// Shoup's multiplication by the fixed skip⁻¹, without a division: with f = ⌊2^32·skip⁻¹ / M⌋,
/// q = ⌊d·f / 2^32⌋ is ⌊d·skip⁻¹ / M⌋ or one less for any d < 2^32, so d·skip⁻¹ − q·M is the
/// remainder or the remainder plus M.
struct Positions {
    /// M − offset: s + this is s − offset, plus M.
    shift: u64,
    inverse: u64,
    /// ⌊2^32·inverse / M⌋.
    factor: u64,
    m: u64,
}

impl Positions {
    fn new(offset: u64, inverse: u64, m: u64) -> Positions {
        Positions {
            shift: m - offset,
            inverse,
            factor: (inverse << 32) / m,
            m,
        }
    }

    #[inline]
    fn of(&self, slot: u32) -> u64 {
        let d = reduce_once(u64::from(slot) + self.shift, self.m);
        let q = (d * self.factor) >> 32;
        reduce_once(d * self.inverse - q * self.m, self.m)
    }
}

/// `x mod m` for `x < 2m`, without a branch: the wrapped difference is the larger when `x < m`.
#[inline]
fn reduce_once(x: u64, m: u64) -> u64 {
    x.min(x.wrapping_sub(m))
}

/// a⁻¹ mod m for 0 < a < m < 2^32, m prime (extended Euclid).
fn modular_inverse(a: u64, m: u64) -> u64 {
    let (mut r0, mut r1) = (m as i64, a as i64);
    let (mut t0, mut t1) = (0i64, 1i64);
    while r1 != 0 {
        let q = r0 / r1;
        (r0, r1) = (r1, r0 - q * r1);
        (t0, t1) = (t1, t0 - q * t1);
    }
    t0.rem_euclid(m as i64) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    const LARGEST_PRIME_BELOW_2_32: u64 = 4_294_967_291;

    #[test]
    fn inverses_are_inverses() {
        for m in [2u64, 3, 7, 13, 65_537, LARGEST_PRIME_BELOW_2_32] {
            for a in [1, 2, m / 2, m - 2, m - 1] {
                if a == 0 || a >= m {
                    continue;
                }
                let product = u128::from(a) * u128::from(modular_inverse(a, m));
                assert_eq!(product % u128::from(m), 1, "{a} mod {m}");
            }
        }
    }

    /// Every slot a walk visits is at the position of the step it was visited at.
    #[test]
    fn positions_are_the_steps_of_the_walk() {
        let m32 = LARGEST_PRIME_BELOW_2_32;
        for (m, offset, skip) in [
            (2, 1, 1),
            (7, 3, 5),
            (65_537, 0, 1),
            (65_537, 12_345, 40_000),
            (65_537, 65_536, 65_536),
            (m32, m32 - 1, m32 - 1),
            (m32, 4_000_000_000, 2_999_999_999),
        ] {
            let positions = Positions::new(offset, modular_inverse(skip, m), m);
            let mut slot = offset;
            for step in 0..m.min(200_000) {
                let Ok(s) = u32::try_from(slot) else {
                    panic!("slot {slot} of M = {m}");
                };
                assert_eq!(
                    positions.of(s),
                    step,
                    "M = {m}, offset {offset}, skip {skip}"
                );
                slot = (slot + skip) % m;
            }
        }
    }
}
