//! Internet checksum of an IPv4 header.

/// Checksum of a 20-byte IPv4 header whose checksum field is zero, in wire order.
#[inline(always)]
pub fn ipv4_header_checksum(hdr: &[u8; 20]) -> [u8; 2] {
    let mut sum: u32 = 0;
    let mut i = 0;
    while i < 20 {
        sum += u32::from(u16::from_be_bytes([hdr[i], hdr[i + 1]]));
        i += 2;
    }
    // Two folds always suffice for 10 words.
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    (!(sum as u16)).to_be_bytes()
}

/// Folds the one's-complement sum of an IPv4 header's 16-bit words, given as five native-order
/// 32-bit words (the sum does not depend on byte order, RFC 1071), into its checksum field value.
#[inline(always)]
pub fn ipv4_checksum_of_words(words: [u32; 5]) -> u16 {
    let mut sum = 0u64;
    for w in words {
        sum += u64::from(w & 0xffff) + u64::from(w >> 16);
    }
    // Three folds always suffice for 10 words.
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}
