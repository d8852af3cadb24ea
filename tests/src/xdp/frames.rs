//! Frames for `BPF_PROG_TEST_RUN`, built byte by byte (so malformed ones are easy): the XDP
//! fixtures' packets and the bench's.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::lab::LB_MAC;

pub const ETH_HLEN: usize = 14;
pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const ACK: u8 = 0x10;

const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xcc];

/// A TCP (or, with `protocol`, other IP) packet in an Ethernet frame.
#[derive(Clone)]
pub struct Tcp {
    src: IpAddr,
    dst: IpAddr,
    sport: u16,
    dport: u16,
    flags: u8,
    tos: u8,
    ttl: u8,
    flow_label: u32,
    options: Vec<u8>,
    protocol: u8,
    more_fragments: bool,
    fragment_offset: u16,
    vlan: Option<(u16, u16)>,
    payload: usize,
    hop_by_hop: bool,
}

impl Tcp {
    fn new(src: IpAddr, dst: IpAddr, sport: u16, dport: u16, flags: u8) -> Tcp {
        Tcp {
            src,
            dst,
            sport,
            dport,
            flags,
            tos: 0,
            ttl: 64,
            flow_label: 0,
            options: Vec::new(),
            protocol: 6,
            more_fragments: false,
            fragment_offset: 0,
            vlan: None,
            payload: 0,
            hop_by_hop: false,
        }
    }

    pub fn v4(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, flags: u8) -> Tcp {
        Tcp::new(IpAddr::V4(src), IpAddr::V4(dst), sport, dport, flags)
    }

    pub fn v6(src: Ipv6Addr, dst: Ipv6Addr, sport: u16, dport: u16, flags: u8) -> Tcp {
        Tcp::new(IpAddr::V6(src), IpAddr::V6(dst), sport, dport, flags)
    }

    pub fn tos(self, tos: u8) -> Tcp {
        Tcp { tos, ..self }
    }
    pub fn ttl(self, ttl: u8) -> Tcp {
        Tcp { ttl, ..self }
    }
    pub fn flow_label(self, flow_label: u32) -> Tcp {
        Tcp { flow_label, ..self }
    }
    pub fn options(self, options: &[u8]) -> Tcp {
        assert_eq!(options.len() % 4, 0);
        Tcp {
            options: options.to_vec(),
            ..self
        }
    }
    pub fn protocol(self, protocol: u8) -> Tcp {
        Tcp { protocol, ..self }
    }
    pub fn fragment(self, more_fragments: bool, offset_bytes: u16) -> Tcp {
        Tcp {
            more_fragments,
            fragment_offset: offset_bytes / 8,
            ..self
        }
    }
    pub fn vlan(self, tpid: u16, vid: u16) -> Tcp {
        Tcp {
            vlan: Some((tpid, vid)),
            ..self
        }
    }
    pub fn payload(self, payload: usize) -> Tcp {
        Tcp { payload, ..self }
    }
    pub fn hop_by_hop(self) -> Tcp {
        Tcp {
            hop_by_hop: true,
            ..self
        }
    }

    fn l4(&self) -> Vec<u8> {
        let mut l4 = Vec::new();
        if self.protocol == 6 {
            l4.extend(self.sport.to_be_bytes());
            l4.extend(self.dport.to_be_bytes());
            l4.extend(1000u32.to_be_bytes()); // seq
            l4.extend(0u32.to_be_bytes()); // ack
            l4.push(5 << 4);
            l4.push(self.flags);
            l4.extend(65535u16.to_be_bytes());
            l4.extend([0; 4]); // checksum (the LB never looks at it), urgent pointer
        } else {
            l4.extend(self.sport.to_be_bytes());
            l4.extend(self.dport.to_be_bytes());
            l4.extend([0; 4]);
        }
        l4.extend((0..self.payload).map(|i| i as u8));
        l4
    }

    pub fn frame(&self) -> Vec<u8> {
        let l4 = self.l4();
        let (ether_type, ip) = match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => (0x0800, self.ipv4(s, d, &l4)),
            (IpAddr::V6(s), IpAddr::V6(d)) => (0x86dd, self.ipv6(s, d, &l4)),
            _ => panic!("mixed families"),
        };
        let mut f = eth_header(self.vlan, ether_type);
        f.extend(ip);
        f
    }

    fn ipv4(&self, s: Ipv4Addr, d: Ipv4Addr, l4: &[u8]) -> Vec<u8> {
        let hlen = 20 + self.options.len();
        let frag = (u16::from(self.more_fragments) << 13) | self.fragment_offset;
        let mut h = vec![0x40 | (hlen / 4) as u8, self.tos];
        h.extend(((hlen + l4.len()) as u16).to_be_bytes());
        h.extend(0x1234u16.to_be_bytes());
        h.extend(frag.to_be_bytes());
        h.extend([self.ttl, self.protocol, 0, 0]);
        h.extend(s.octets());
        h.extend(d.octets());
        h.extend(&self.options);
        let c = checksum(&h);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        h.extend(l4);
        h
    }

    fn ipv6(&self, s: Ipv6Addr, d: Ipv6Addr, l4: &[u8]) -> Vec<u8> {
        let vtc = (6u32 << 28) | (u32::from(self.tos) << 20) | (self.flow_label & 0xf_ffff);
        let mut ext = Vec::new();
        let mut next = self.protocol;
        if self.hop_by_hop {
            // Hop-by-hop header: next header, length 0 (8 bytes), PadN over the rest.
            ext.extend([self.protocol, 0, 1, 4, 0, 0, 0, 0]);
            next = 0;
        }
        let mut h = vtc.to_be_bytes().to_vec();
        h.extend(((ext.len() + l4.len()) as u16).to_be_bytes());
        h.extend([next, self.ttl]);
        h.extend(s.octets());
        h.extend(d.octets());
        h.extend(ext);
        h.extend(l4);
        h
    }
}

fn eth_header(vlan: Option<(u16, u16)>, ether_type: u16) -> Vec<u8> {
    let mut f = LB_MAC.to_vec();
    f.extend(CLIENT_MAC);
    if let Some((tpid, vid)) = vlan {
        f.extend(tpid.to_be_bytes());
        f.extend(vid.to_be_bytes());
    }
    f.extend(ether_type.to_be_bytes());
    f
}

/// Internet checksum of a header whose checksum field is zero.
pub fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

pub fn arp_frame() -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend(CLIENT_MAC);
    f.extend(0x0806u16.to_be_bytes());
    f.extend([0, 1, 0x08, 0, 6, 4, 0, 1]);
    f.extend(CLIENT_MAC);
    f.extend([198, 18, 0, 10]);
    f.extend([0; 6]);
    f.extend([198, 18, 100, 1]);
    f
}

/// Small edits of a frame.
pub trait FrameExt {
    fn with_byte(self, index: usize, value: u8) -> Vec<u8>;
    fn with_ether_type(self, ether_type: u16) -> Vec<u8>;
}

impl FrameExt for Vec<u8> {
    fn with_byte(mut self, index: usize, value: u8) -> Vec<u8> {
        self[index] = value;
        self
    }
    fn with_ether_type(mut self, ether_type: u16) -> Vec<u8> {
        self[12..14].copy_from_slice(&ether_type.to_be_bytes());
        self
    }
}

/// Length of the link-layer header of a frame (one optional VLAN tag).
fn l2_len(frame: &[u8]) -> usize {
    match u16::from_be_bytes([frame[12], frame[13]]) {
        0x8100 | 0x88a8 => ETH_HLEN + 4,
        _ => ETH_HLEN,
    }
}

/// What the LB would send toward `dst`, as the backend receives it: link header kept, outer IPv4.
pub fn encapsulate_v4(frame: &[u8], src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
    let l2 = l2_len(frame);
    let inner = &frame[l2..];
    let mut out = frame[..l2].to_vec();
    out[l2 - 2..l2].copy_from_slice(&0x0800u16.to_be_bytes());
    let mut h = vec![0x45, 0];
    h.extend(((20 + inner.len()) as u16).to_be_bytes());
    h.extend([0, 0, 0x40, 0, 64, 4, 0, 0]);
    h.extend(src.octets());
    h.extend(dst.octets());
    let c = checksum(&h);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    out.extend(h);
    out.extend(inner);
    out
}

/// Like `encapsulate_v4` with an outer IPv6 header (next header 41).
pub fn encapsulate_v6(frame: &[u8], src: Ipv6Addr, dst: Ipv6Addr) -> Vec<u8> {
    let l2 = l2_len(frame);
    let inner = &frame[l2..];
    let mut out = frame[..l2].to_vec();
    out[l2 - 2..l2].copy_from_slice(&0x86ddu16.to_be_bytes());
    out.extend((6u32 << 28).to_be_bytes());
    out.extend((inner.len() as u16).to_be_bytes());
    out.extend([41, 64]);
    out.extend(src.octets());
    out.extend(dst.octets());
    out.extend(inner);
    out
}
