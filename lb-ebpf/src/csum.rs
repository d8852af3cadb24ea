//! Internet checksum of the outer IPv4 header.

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
