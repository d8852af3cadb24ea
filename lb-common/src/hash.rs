//! The flow hash (Maglev lookup, random choices) shared by the XDP program and userspace, so tests and
//! tools can predict where the data plane sends a flow. MurmurHash3 (x86_32) over fixed-size words.

use crate::flow::FlowKey;

#[inline(always)]
fn mix(h: u32, k: u32) -> u32 {
    let k = k
        .wrapping_mul(0xcc9e_2d51)
        .rotate_left(15)
        .wrapping_mul(0x1b87_3593);
    (h ^ k)
        .rotate_left(13)
        .wrapping_mul(5)
        .wrapping_add(0xe654_6b64)
}

#[inline(always)]
fn finish(h: u32, len_bytes: u32) -> u32 {
    let mut h = h ^ len_bytes;
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// MurmurHash3 of a word sequence.
#[inline(always)]
pub fn hash_words(words: &[u32], seed: u32) -> u32 {
    let mut h = seed;
    for w in words {
        h = mix(h, *w);
    }
    finish(h, (words.len() * 4) as u32)
}

/// Hash of a flow's 5-tuple. Identical on every LB instance given the same seed.
#[inline(always)]
pub fn flow_hash(key: &FlowKey, seed: u32) -> u32 {
    let ports = (key.sport_be as u32) | ((key.dport_be as u32) << 16);
    let words = [
        key.src[0],
        key.src[1],
        key.src[2],
        key.src[3],
        key.dst[0],
        key.dst[1],
        key.dst[2],
        key.dst[3],
        ports,
        key.proto as u32,
    ];
    let mut h = seed;
    h = mix(h, words[0]);
    h = mix(h, words[1]);
    h = mix(h, words[2]);
    h = mix(h, words[3]);
    h = mix(h, words[4]);
    h = mix(h, words[5]);
    h = mix(h, words[6]);
    h = mix(h, words[7]);
    h = mix(h, words[8]);
    h = mix(h, words[9]);
    finish(h, 40)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flow_hash_matches_word_hash_and_depends_on_every_field() {
        let k = FlowKey {
            src: [1, 2, 3, 4],
            dst: [5, 6, 7, 8],
            sport_be: 9,
            dport_be: 10,
            proto: 6,
            ..Default::default()
        };
        let words = [1, 2, 3, 4, 5, 6, 7, 8, 9 | (10 << 16), 6];
        assert_eq!(flow_hash(&k, 7), hash_words(&words, 7));
        let base = flow_hash(&k, 7);
        assert_ne!(base, flow_hash(&k, 8));
        assert_ne!(base, flow_hash(&FlowKey { sport_be: 11, ..k }, 7));
        assert_ne!(
            base,
            flow_hash(
                &FlowKey {
                    dst: [5, 6, 7, 9],
                    ..k
                },
                7
            )
        );
    }

    #[test]
    fn murmur3_known_vectors() {
        // Reference values of MurmurHash3_x86_32 over little-endian words.
        assert_eq!(hash_words(&[], 0), 0);
        assert_eq!(hash_words(&[], 1), 0x514e_28b7);
        assert_eq!(hash_words(&[0], 0), 0x2362_f9de);
        assert_eq!(
            hash_words(&[u32::from_le_bytes(*b"aaaa")], 0x9747_b28c),
            0x5a97_808a
        );
        assert_eq!(
            hash_words(&[u32::from_le_bytes(*b"abcd")], 0x9747_b28c),
            0xf047_8627
        );
    }
}
