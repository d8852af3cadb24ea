//! The weighted sequence of wrr (walked by a cursor) and wrandom (indexed at random).

use super::{TableBackend, sorted_by_addr};

/// Builds a smooth weighted round-robin sequence of backend ids (nginx's algorithm), so a heavy backend's
/// turns are spread among the others' instead of coming in one burst.
///
/// Weights are divided by their greatest common divisor; the sequence is as long as their sum. If the
/// sum exceeds `max_len`, weights are scaled down proportionally (rounded down, but never below 1, so
/// every backend keeps a turn) until the sum fits; shares then deviate from the weights by at most about
/// one entry per backend. Backends of weight 0 get no entry. If there are more backends than `max_len`,
/// only the first `max_len` in address order get one (validation keeps this from happening).
///
/// Cost: O(length × backends).
pub fn build_weighted_sequence(backends: &[TableBackend], max_len: u32) -> Vec<u32> {
    let mut sorted: Vec<&TableBackend> = sorted_by_addr(backends)
        .into_iter()
        .filter(|b| b.weight > 0)
        .collect();
    sorted.truncate(max_len as usize);
    if sorted.is_empty() {
        return Vec::new();
    }
    let weights: Vec<u64> = sorted.iter().map(|b| u64::from(b.weight)).collect();
    let weights = reduce_by_gcd(fit_to_length(reduce_by_gcd(weights), u64::from(max_len)));
    let ids: Vec<u32> = sorted.iter().map(|b| b.id).collect();
    smooth_round_robin(&ids, &weights)
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

fn reduce_by_gcd(weights: Vec<u64>) -> Vec<u64> {
    let g = weights.iter().copied().fold(0, gcd).max(1);
    weights.into_iter().map(|w| w / g).collect()
}

/// Scales weights (all ≥ 1, at most `max_len` of them) so their sum is at most `max_len`.
fn fit_to_length(weights: Vec<u64>, max_len: u64) -> Vec<u64> {
    let sum: u64 = weights.iter().sum();
    if sum <= max_len {
        return weights;
    }
    // Raising rounded-down zeros to 1 can overshoot; shrink the budget by the overshoot and retry.
    // The budget falls on every retry, and at budget 0 every weight is 1, which fits.
    let mut budget = max_len;
    loop {
        let scaled: Vec<u64> = weights.iter().map(|w| (w * budget / sum).max(1)).collect();
        let total: u64 = scaled.iter().sum();
        if total <= max_len || budget == 0 {
            return scaled;
        }
        budget = budget.saturating_sub(total - max_len);
    }
}

/// nginx's smooth weighted round robin: each turn every backend gains its weight, the richest (first
/// in address order on ties) is picked and pays the total. Over `Σ weights` turns each backend is picked
/// exactly `weight` times.
fn smooth_round_robin(ids: &[u32], weights: &[u64]) -> Vec<u32> {
    let total: u64 = weights.iter().sum();
    let mut current = vec![0i64; ids.len()];
    let mut sequence = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for i in 0..ids.len() {
            current[i] += weights[i] as i64;
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total as i64;
        sequence.push(ids[best]);
    }
    sequence
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::*;

    #[test]
    fn sequence_length_is_the_reduced_weight_sum() {
        assert_eq!(
            build_weighted_sequence(&with_weights(&[3, 6, 9]), 100).len(),
            6
        );
        assert_eq!(
            build_weighted_sequence(&with_weights(&[4, 4]), 100),
            vec![0, 1]
        );
        assert_eq!(
            build_weighted_sequence(&with_weights(&[0, 5]), 100),
            vec![1]
        );
        assert!(build_weighted_sequence(&with_weights(&[0, 0]), 100).is_empty());
        assert!(build_weighted_sequence(&[], 100).is_empty());
    }

    #[test]
    fn smooth_order_interleaves_a_heavy_backend() {
        let seq = build_weighted_sequence(&with_weights(&[5, 1, 1]), 100);
        assert_eq!(seq, vec![0, 0, 1, 0, 2, 0, 0]);
        // Never more than 2 turns of the heavy backend in a row within one pass.
        let longest_run = seq
            .chunk_by(|a, b| a == b)
            .map(<[u32]>::len)
            .max()
            .unwrap_or(0);
        assert_eq!(longest_run, 2);
    }

    #[test]
    fn shares_match_weights() {
        let seq = build_weighted_sequence(&with_weights(&[1, 2, 3]), 65_537);
        assert_eq!(counts(&seq, 3), vec![1, 2, 3]);
        let weights = [1000, 2000, 3001, 7];
        let seq = build_weighted_sequence(&with_weights(&weights), 65_537);
        assert_eq!(counts(&seq, 4), weights.map(|w| w as usize).to_vec());
    }

    #[test]
    fn long_sequences_are_scaled_down_proportionally() {
        // Sum 130_001 > 65_537: scaled to fit, each share within 1% of its weight share.
        let weights = [65_535, 40_000, 24_466, 1];
        let seq = build_weighted_sequence(&with_weights(&weights), 65_537);
        assert!(seq.len() <= 65_537, "{}", seq.len());
        let c = counts(&seq, 4);
        assert!(c[3] >= 1, "a backend of weight 1 keeps a turn");
        let sum: u32 = weights.iter().sum();
        for i in 0..3 {
            let want = f64::from(weights[i]) / f64::from(sum);
            let got = c[i] as f64 / seq.len() as f64;
            assert!(
                (got - want).abs() < 0.01 * want,
                "backend {i}: {got} vs {want}"
            );
        }
        // Many small weights next to a big one: the floor of 1 must not push past the cap.
        let mut weights = vec![1; 50];
        weights.push(65_535);
        let seq = build_weighted_sequence(&with_weights(&weights), 100);
        assert!(seq.len() <= 100, "{}", seq.len());
        assert_eq!(counts(&seq, 51)[..50], [1; 50]);
    }

    #[test]
    fn more_backends_than_room_keeps_the_first_by_address() {
        let seq = build_weighted_sequence(&backends(10, 1), 4);
        assert_eq!(seq, vec![0, 1, 2, 3]);
    }

    #[test]
    fn order_depends_on_addresses_not_input_order() {
        let b = with_weights(&[3, 1, 2]);
        let mut reversed = b.clone();
        reversed.reverse();
        assert_eq!(
            build_weighted_sequence(&b, 100),
            build_weighted_sequence(&reversed, 100)
        );
    }
}
