//! How addresses are stored in maps: four 32-bit words holding the address bytes exactly as they are
//! on the wire (network byte order in memory). IPv4 uses the first word; the other three are zero.

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Family tag of an IPv4 key or entry (our own tag, not the kernel's `AF_INET`).
pub const AF_INET: u8 = 4;
/// Family tag of an IPv6 key or entry.
pub const AF_INET6: u8 = 6;

pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

/// Converts an address into the map representation and its family tag.
pub fn to_words(ip: IpAddr) -> ([u32; 4], u8) {
    match ip {
        IpAddr::V4(v4) => ([u32::from_ne_bytes(v4.octets()), 0, 0, 0], AF_INET),
        IpAddr::V6(v6) => {
            let o = v6.octets();
            let mut w = [0u32; 4];
            let mut i = 0;
            while i < 4 {
                w[i] = u32::from_ne_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]]);
                i += 1;
            }
            (w, AF_INET6)
        }
    }
}

/// Converts a map representation back into an address; `None` for an unknown family tag.
pub fn from_words(words: [u32; 4], family: u8) -> Option<IpAddr> {
    match family {
        AF_INET => Some(IpAddr::V4(Ipv4Addr::from(words[0].to_ne_bytes()))),
        AF_INET6 => {
            let mut o = [0u8; 16];
            let mut i = 0;
            while i < 4 {
                let b = words[i].to_ne_bytes();
                o[4 * i..4 * i + 4].copy_from_slice(&b);
                i += 1;
            }
            Some(IpAddr::V6(Ipv6Addr::from(o)))
        }
        _ => None,
    }
}

/// Keeps the first `prefix_len` bits of an address in map representation (persistence netmask).
pub fn mask_words(words: [u32; 4], family: u8, prefix_len: u32) -> [u32; 4] {
    let total = if family == AF_INET { 32 } else { 128 };
    let keep = if prefix_len > total {
        total
    } else {
        prefix_len
    };
    let mut out = [0u32; 4];
    let mut i = 0;
    while i < 4 {
        let start = (i as u32) * 32;
        if keep >= start + 32 {
            out[i] = words[i];
        } else if keep > start {
            let bits = keep - start;
            // The word holds bytes in wire order, so build the mask in wire order too.
            let mask_be = u32::MAX << (32 - bits);
            out[i] = words[i] & u32::from_ne_bytes(mask_be.to_be_bytes());
        }
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_both_families() {
        for ip in ["198.18.0.1", "2001:db8::11", "0.0.0.0", "::1"] {
            let ip: IpAddr = ip.parse().unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
            let (w, f) = to_words(ip);
            assert_eq!(from_words(w, f), Some(ip));
        }
    }

    #[test]
    fn masks_in_wire_order() {
        let (w, f) = to_words(IpAddr::V4(Ipv4Addr::new(198, 18, 7, 9)));
        let m = mask_words(w, f, 24);
        assert_eq!(
            from_words(m, f),
            Some(IpAddr::V4(Ipv4Addr::new(198, 18, 7, 0)))
        );
        let (w, f) = to_words(
            "2001:db8:aaaa:bbbb::1"
                .parse()
                .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
        );
        let m = mask_words(w, f, 36);
        assert_eq!(from_words(m, f), "2001:db8:a000::".parse().ok());
        assert_eq!(mask_words(w, f, 200), w);
    }
}
