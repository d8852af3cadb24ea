//! A free list of ids `0..max`, handing out the lowest free id first.

use std::collections::BTreeSet;

#[derive(Clone, Debug)]
pub struct IdPool {
    free: BTreeSet<u32>,
}

impl IdPool {
    pub fn new(max: u32) -> Self {
        IdPool {
            free: (0..max).collect(),
        }
    }

    /// The `n` lowest free ids, without taking them (fewer if fewer are free).
    pub fn peek(&self, n: usize) -> Vec<u32> {
        self.free.iter().take(n).copied().collect()
    }

    /// Takes `id`; false if it was not free.
    pub fn take(&mut self, id: u32) -> bool {
        self.free.remove(&id)
    }

    pub fn give_back(&mut self, id: u32) {
        self.free.insert(id);
    }

    pub fn free(&self) -> usize {
        self.free.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hands_out_the_lowest_free_ids_and_reuses_returned_ones() {
        let mut pool = IdPool::new(4);
        assert_eq!(pool.peek(2), vec![0, 1]);
        assert_eq!(pool.peek(9), vec![0, 1, 2, 3]);
        assert!(pool.take(0) && pool.take(1));
        assert!(!pool.take(1), "an id is taken once");
        assert_eq!(pool.peek(1), vec![2]);
        pool.give_back(0);
        assert_eq!(pool.peek(2), vec![0, 2]);
        assert_eq!(pool.free(), 3);
    }
}
