//! Checks of encapsulated output, parsed with etherparse; the frames themselves are built by
//! [`lb_tests::xdp::frames`].

use std::net::IpAddr;

use etherparse::{Ipv4HeaderSlice, Ipv6HeaderSlice};
pub use lb_tests::xdp::frames::*;
use lb_tests::xdp::{LB_MAC, NEXT_HOP_MAC, XdpLab as Lab};

/// The outer header of an encapsulated frame.
pub struct Outer {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub ttl: u8,
    pub tos: u8,
    pub flow_label: u32,
}

fn check_eth(out: &[u8], ether_type: u16) {
    assert_eq!(
        out[0..6],
        NEXT_HOP_MAC,
        "destination MAC is the next hop's (from the neighbour table)"
    );
    assert_eq!(out[6..12], LB_MAC, "source MAC is the egress interface's");
    assert_eq!(
        u16::from_be_bytes([out[12], out[13]]),
        ether_type,
        "untagged, outer ethertype"
    );
}

/// Checks an IPIP frame: Ethernet toward the next hop, a valid outer IPv4 header, and `inner` unchanged.
pub fn check_ipip(out: &[u8], inner: &[u8], _lab: &Lab) -> Outer {
    assert_eq!(
        out.len(),
        ETH_HLEN + 20 + inner.len(),
        "one outer IPv4 header added"
    );
    check_eth(out, 0x0800);
    let ip = Ipv4HeaderSlice::from_slice(&out[ETH_HLEN..]).expect("outer IPv4 header parses");
    assert_eq!(ip.ihl(), 5);
    assert_eq!(ip.protocol().0, 4, "IPIP");
    assert_eq!(usize::from(ip.total_len()), 20 + inner.len());
    assert!(ip.dont_fragment());
    assert!(!ip.more_fragments());
    assert_eq!(
        ip.header_checksum(),
        ip.to_header().calc_header_checksum(),
        "outer checksum"
    );
    assert_eq!(
        checksum(&out[ETH_HLEN..ETH_HLEN + 20]),
        0,
        "outer checksum (folded sum)"
    );
    assert_eq!(&out[ETH_HLEN + 20..], inner, "inner packet byte-identical");
    Outer {
        src: IpAddr::V4(ip.source_addr()),
        dst: IpAddr::V4(ip.destination_addr()),
        ttl: ip.ttl(),
        tos: out[ETH_HLEN + 1],
        flow_label: 0,
    }
}

/// Checks an ip6ip6 frame like `check_ipip`.
pub fn check_ip6ip6(out: &[u8], inner: &[u8], _lab: &Lab) -> Outer {
    assert_eq!(
        out.len(),
        ETH_HLEN + 40 + inner.len(),
        "one outer IPv6 header added"
    );
    check_eth(out, 0x86dd);
    let ip = Ipv6HeaderSlice::from_slice(&out[ETH_HLEN..]).expect("outer IPv6 header parses");
    assert_eq!(ip.next_header().0, 41, "ip6ip6");
    assert_eq!(usize::from(ip.payload_length()), inner.len());
    assert_eq!(&out[ETH_HLEN + 40..], inner, "inner packet byte-identical");
    Outer {
        src: IpAddr::V6(ip.source_addr()),
        dst: IpAddr::V6(ip.destination_addr()),
        ttl: ip.hop_limit(),
        tos: ip.traffic_class(),
        flow_label: ip.flow_label().value(),
    }
}
