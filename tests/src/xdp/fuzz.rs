//! Fuzzing `lb_balancer` with `BPF_PROG_TEST_RUN` (`cargo xtask fuzz`, and 1M frames in
//! `cargo xtask test`): valid seed frames of many kinds, mutated (truncations, bit flips, length
//! lies, random bytes) or fully random, run through the real program with several services
//! configured. Every verdict and output is checked ([`check`]) and the global counters must account
//! for every frame ([`check_counters`]). Frame `i` of seed `s` is generated from `(s, i)` alone, so a
//! failure is reproduced with `--seed s --first i --packets 1`.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use aya::programs::{TestRun, TestRunOptions, Xdp};
use lb_common::{
    BACKEND_F_VALID, BackendEntry, Counter, IPPROTO_TCP, LbConfig, Scheduler, ServiceEntry, VipKey,
    addr::to_words, limits::Capacity,
};
use lb_userspace::dataplane::{Dataplane, LoadOptions};
use lb_userspace::tables::{TableBackend, build_slot_tables};

use super::frames::{ACK, ETH_HLEN, FIN, SYN, Tcp, arp_frame, checksum};
use super::lab::{CLIENT4, CLIENT6, SRC4, SRC6, XdpLab};

pub const XDP_ABORTED: u32 = 0;
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;
const RST: u8 = 0x04;

/// `BPF_PROG_TEST_RUN` refuses frames shorter than an Ethernet header.
const MIN_FRAME: usize = ETH_HLEN;
/// Larger than the lab's 1500-byte MTU, so `drop_mtu` is reached too.
const MAX_FRAME: usize = 1600;
/// Misforwards kept for the report (all are counted).
const SAMPLES: usize = 10;

/// One service of the fuzz world.
#[derive(Clone, Debug)]
pub struct FuzzService {
    pub vip: IpAddr,
    pub port: u16,
    pub scheduler: Scheduler,
    pub backends: Vec<IpAddr>,
    pub persist_timeout_s: u32,
}

/// The services the fuzzer configures; the checker's idea of who may receive what.
#[derive(Clone, Debug)]
pub struct World {
    pub services: Vec<FuzzService>,
}

fn v4(a: [u8; 4]) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(a))
}

fn v6(last: u16) -> IpAddr {
    IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, last))
}

fn vip6(n: u16) -> IpAddr {
    IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, n))
}

impl World {
    /// Several VIPs of both families and every scheduler, each with its own backends: in
    /// 198.18.2.0/24 (XDP_TX through lbt0), 198.18.5.0/24 (redirected to lbt2), one unrouted
    /// (198.18.9.0/24: drop_no_route) and one service without backends (drop_no_backend).
    pub fn standard() -> World {
        let s = |vip, port, scheduler, backends: Vec<IpAddr>, persist_timeout_s| FuzzService {
            vip,
            port,
            scheduler,
            backends,
            persist_timeout_s,
        };
        let b4 = |third: u8, first: u8, n: u8| -> Vec<IpAddr> {
            (0..n).map(|i| v4([198, 18, third, first + i])).collect()
        };
        World {
            services: vec![
                s(
                    v4([198, 18, 100, 1]),
                    80,
                    Scheduler::RoundRobin,
                    b4(2, 10, 3),
                    0,
                ),
                s(
                    v4([198, 18, 100, 1]),
                    443,
                    Scheduler::Maglev,
                    b4(2, 20, 4),
                    0,
                ),
                s(
                    v4([198, 18, 100, 2]),
                    80,
                    Scheduler::LeastConn,
                    b4(2, 30, 3),
                    300,
                ),
                s(
                    v4([198, 18, 100, 3]),
                    80,
                    Scheduler::WeightedRoundRobin,
                    b4(5, 10, 2),
                    0,
                ),
                s(
                    v4([198, 18, 100, 4]),
                    80,
                    Scheduler::Random,
                    b4(9, 10, 2),
                    0,
                ),
                s(v4([198, 18, 100, 5]), 80, Scheduler::RoundRobin, vec![], 0),
                s(
                    vip6(1),
                    80,
                    Scheduler::Random,
                    (0x10..0x13).map(v6).collect(),
                    0,
                ),
                s(
                    vip6(1),
                    443,
                    Scheduler::WeightedRandom,
                    (0x20..0x24).map(v6).collect(),
                    0,
                ),
                s(
                    vip6(2),
                    80,
                    Scheduler::Maglev,
                    (0x30..0x33).map(v6).collect(),
                    60,
                ),
            ],
        }
    }

    /// The service of TCP `vip`:`port`.
    pub fn service(&self, vip: IpAddr, port: u16) -> Option<&FuzzService> {
        self.services
            .iter()
            .find(|s| s.vip == vip && s.port == port)
    }

    fn table_size(&self) -> u32 {
        lb_common::limits::MAX_BACKENDS_PER_SERVICE
    }

    /// Map sizes: small, so the flow table's LRU eviction is exercised too.
    pub fn capacity(&self) -> Capacity {
        Capacity {
            max_services: 16,
            max_backends: 256,
            table_size: self.table_size(),
            flow_table_size: 4096,
            persist_table_size: 1024,
        }
    }

    /// Writes every service into `dp` the way `apply` lays them out (ids, tables, entries).
    pub fn install(&self, dp: &mut Dataplane) -> anyhow::Result<()> {
        dp.set_config(&LbConfig {
            src_v6: to_words(IpAddr::V6(SRC6)).0,
            src_v4: to_words(IpAddr::V4(SRC4)).0[0],
            hash_seed: 0x5eed_f022,
            ..Default::default()
        })?;
        let mut next_backend = 1u32;
        for (id, svc) in (0u32..).zip(&self.services) {
            let mut ids = Vec::new();
            for (weight, addr) in (1u32..).zip(&svc.backends) {
                let (words, family) = to_words(*addr);
                let entry = BackendEntry {
                    addr: words,
                    service_id: id,
                    weight,
                    flags: BACKEND_F_VALID,
                    port_be: svc.port.to_be(),
                    family,
                    _pad: 0,
                };
                dp.put_backend(next_backend, &entry)
                    .with_context(|| format!("backend {addr} of {}:{}", svc.vip, svc.port))?;
                ids.push(next_backend);
                next_backend += 1;
            }
            // The tables the daemon builds: the scheduler's, then the service's consistent-hash
            // table (what packets without a flow entry follow).
            let backends: Vec<TableBackend> = (1u32..)
                .zip(ids.iter().zip(&svc.backends))
                .map(|(weight, (id, addr))| TableBackend {
                    id: *id,
                    addr: std::net::SocketAddr::new(*addr, svc.port),
                    weight,
                })
                .collect();
            let tables =
                build_slot_tables(svc.scheduler.table_kind(), &backends, self.table_size(), 0);
            let offset = id * self.table_size();
            dp.write_table(offset, &tables.ids)?;
            let (addr, family) = to_words(svc.vip);
            let key = VipKey {
                addr,
                port_be: svc.port.to_be(),
                proto: IPPROTO_TCP,
                family,
            };
            let entry = ServiceEntry {
                id,
                scheduler: svc.scheduler as u32,
                table_offset: offset,
                table_len: tables.table_len,
                hash_offset: offset + tables.hash_start,
                hash_len: tables.hash_len,
                persist_timeout_s: svc.persist_timeout_s,
                persist_prefix_len: if svc.vip.is_ipv4() { 24 } else { 64 },
                ..Default::default()
            };
            dp.put_service(&key, &entry)?;
        }
        Ok(())
    }
}

/// A small deterministic PRNG (xorshift64*): a failure is reproduced from its seed and index.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// The generator of frame `index` of run `seed` (splitmix64 of both, never zero).
    pub fn for_frame(seed: u64, index: u64) -> Rng {
        let mut z = seed ^ index.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Rng((z ^ (z >> 31)) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    pub fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }

    fn byte(&mut self) -> u8 {
        self.next_u64() as u8
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

fn client(rng: &mut Rng, vip: IpAddr) -> IpAddr {
    match vip {
        IpAddr::V4(_) => {
            let mut o = CLIENT4.octets();
            o[2] = rng.below(4) as u8;
            o[3] = rng.below(32) as u8;
            IpAddr::V4(o.into())
        }
        IpAddr::V6(_) => {
            let mut s = CLIENT6.segments();
            s[7] = rng.below(32) as u16;
            s[3] = rng.below(4) as u16;
            IpAddr::V6(s.into())
        }
    }
}

fn tcp_to(src: IpAddr, dst: IpAddr, sport: u16, dport: u16, flags: u8) -> Tcp {
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => Tcp::v4(s, d, sport, dport, flags),
        (IpAddr::V6(s), IpAddr::V6(d)) => Tcp::v6(s, d, sport, dport, flags),
        _ => unreachable!("client() keeps the VIP's family"),
    }
}

/// A valid frame of one of the seed kinds.
pub fn seed_frame(world: &World, rng: &mut Rng) -> Vec<u8> {
    // Mostly toward a service (the deep paths), sometimes a VIP on the wrong port or no VIP.
    let svc = rng.pick(&world.services);
    let (dst, dport) = match rng.below(10) {
        0 => (svc.vip, 8080),
        1 => (v4([198, 18, 2, 10]), 80),
        _ => (svc.vip, svc.port),
    };
    let src = client(rng, dst);
    // Few clients and ports, so flows recur (flow hits, FIN/RST closing known flows).
    let sport = 1024 + rng.below(8) as u16;
    let flags = *rng.pick(&[SYN, ACK, ACK, ACK | 0x08, RST, FIN | ACK, RST | ACK]);
    let mut tcp = tcp_to(src, dst, sport, dport, flags)
        .tos(rng.byte())
        .ttl(1 + rng.byte() % 255)
        .payload(*rng.pick(&[0, 0, 1, 40, 200, 1400, 1500]));
    match rng.below(12) {
        0 => tcp = tcp.protocol(1),                           // ICMP-ish
        1 => tcp = tcp.protocol(17),                          // UDP
        2 => tcp = tcp.vlan(*rng.pick(&[0x8100, 0x88a8]), 7), // VLAN-tagged
        3 if dst.is_ipv4() => tcp = tcp.options(&[1, 1, 1, 0, 0x94, 4, 0, 0]), // NOP, EOL, router alert
        4 if dst.is_ipv4() => tcp = tcp.fragment(rng.chance(2), 8 * rng.below(3) as u16),
        5 if dst.is_ipv6() => tcp = tcp.hop_by_hop(), // IPv6 extension header
        6 if dst.is_ipv6() => tcp = tcp.flow_label(rng.next_u64() as u32),
        _ => {}
    }
    let mut frame = tcp.frame();
    if rng.chance(40) {
        frame = arp_frame();
    } else if rng.chance(20) {
        frame = icmp_echo(&frame);
    }
    frame
}

/// Turns a frame's L4 into an ICMP / ICMPv6 echo request (as a client pinging a VIP would).
fn icmp_echo(frame: &[u8]) -> Vec<u8> {
    let mut f = frame.to_vec();
    let Some((l3, family)) = l3_of(&f) else {
        return f;
    };
    match family {
        4 => {
            let ihl = usize::from(f[l3] & 0x0f) * 4;
            f[l3 + 9] = 1;
            f[l3 + 10..l3 + 12].fill(0);
            let c = checksum(&f[l3..l3 + ihl]);
            f[l3 + 10..l3 + 12].copy_from_slice(&c.to_be_bytes());
            let l4 = l3 + ihl;
            f[l4] = 8;
            f[l4 + 1] = 0;
            f[l4 + 2..l4 + 4].fill(0);
            let c = checksum(&f[l4..]);
            f[l4 + 2..l4 + 4].copy_from_slice(&c.to_be_bytes());
        }
        _ => {
            if f[l3 + 6] != 6 {
                return f;
            }
            f[l3 + 6] = 58;
            let l4 = l3 + 40;
            f[l4] = 128;
            f[l4 + 1] = 0;
            f[l4 + 2..l4 + 4].fill(0);
            let c = icmpv6_checksum(&f[l3..]);
            f[l4 + 2..l4 + 4].copy_from_slice(&c.to_be_bytes());
        }
    }
    f
}

/// The mutation a frame got, for the report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Mutation {
    None,
    Truncated,
    BitFlips,
    LengthLie,
    RandomBytes,
    Appended,
    Random,
}

/// Frame `index` of run `seed`.
pub fn frame(world: &World, seed: u64, index: u64) -> (Mutation, Vec<u8>) {
    let mut rng = Rng::for_frame(seed, index);
    let mutation = match rng.below(16) {
        0..=3 => Mutation::None,
        4..=5 => Mutation::Truncated,
        6..=8 => Mutation::BitFlips,
        9..=11 => Mutation::LengthLie,
        12..=13 => Mutation::RandomBytes,
        14 => Mutation::Appended,
        _ => Mutation::Random,
    };
    let mut f = if mutation == Mutation::Random {
        let len = MIN_FRAME + rng.below(120);
        let mut f: Vec<u8> = (0..len).map(|_| rng.byte()).collect();
        // Often a plausible EtherType, so the random bytes reach the IP parsers.
        if rng.chance(2) {
            let et: u16 = *rng.pick(&[0x0800, 0x86dd, 0x8100, 0x88a8]);
            f[12..14].copy_from_slice(&et.to_be_bytes());
        }
        f
    } else {
        seed_frame(world, &mut rng)
    };
    mutate(&mut rng, mutation, &mut f);
    f.truncate(MAX_FRAME);
    if f.len() < MIN_FRAME {
        f.resize(MIN_FRAME, 0);
    }
    (mutation, f)
}

fn mutate(rng: &mut Rng, mutation: Mutation, f: &mut Vec<u8>) {
    let l3 = l3_of(f).map_or(ETH_HLEN, |(l3, _)| l3);
    match mutation {
        Mutation::None | Mutation::Random => {}
        Mutation::Truncated => {
            let keep = rng.below(f.len());
            f.truncate(keep.max(MIN_FRAME));
        }
        Mutation::BitFlips => {
            for _ in 0..1 + rng.below(4) {
                // Mostly in the headers, where the parser looks.
                let span = if rng.chance(4) {
                    f.len()
                } else {
                    f.len().min(l3 + 64)
                };
                let i = rng.below(span);
                f[i] ^= 1 << rng.below(8);
            }
        }
        Mutation::LengthLie => {
            // IPv4 total length / IHL, IPv6 payload length, or the TCP data offset.
            let field = *rng.pick(&[2usize, 0, 4, 32, 52]);
            let value = *rng.pick(&[0u16, 1, 19, 20, 39, 40, 41, 0x7fff, 0xffff])
                ^ if rng.chance(2) { rng.byte().into() } else { 0 };
            let i = l3 + field;
            if field == 0 {
                if let Some(b) = f.get_mut(i) {
                    *b = (*b & 0xf0) | (value as u8 & 0x0f);
                }
            } else if i + 2 <= f.len() {
                f[i..i + 2].copy_from_slice(&value.to_be_bytes());
            }
        }
        Mutation::RandomBytes => {
            let start = rng.below(f.len());
            let len = 1 + rng.below(16);
            let end = f.len().min(start + len);
            for b in &mut f[start..end] {
                *b = rng.byte();
            }
        }
        Mutation::Appended => {
            let extra = 1 + rng.below(64);
            f.extend((0..extra).map(|_| rng.byte()));
        }
    }
}

/// Offset and IP version of a frame's L3 header (after one optional VLAN tag), if it is IP.
fn l3_of(f: &[u8]) -> Option<(usize, u8)> {
    let mut et = u16::from_be_bytes([*f.get(12)?, *f.get(13)?]);
    let mut l3 = ETH_HLEN;
    if et == 0x8100 || et == 0x88a8 {
        et = u16::from_be_bytes([*f.get(16)?, *f.get(17)?]);
        l3 += 4;
    }
    match et {
        0x0800 => Some((l3, 4)),
        0x86dd => Some((l3, 6)),
        _ => None,
    }
}

/// What the checker concluded about one frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    Passed,
    Dropped,
    /// Encapsulated to a backend of the right service, sent with this verdict.
    Forwarded(u32),
    /// An ICMP / ICMPv6 reply to the frame's sender (XDP_TX).
    IcmpReply,
}

fn sum16(bytes: &[u8]) -> u32 {
    bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum()
}

fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// The ICMPv6 checksum of `ip6` (an IPv6 header and its ICMPv6 message, checksum field zero).
fn icmpv6_checksum(ip6: &[u8]) -> u16 {
    let body = &ip6[40..];
    let len = u32::try_from(body.len()).unwrap_or(u32::MAX);
    let pseudo = sum16(&ip6[8..40]) + (len >> 16) + (len & 0xffff) + 58;
    !fold(pseudo + sum16(body))
}

/// The IP addresses of the IP header at `l3` (version `family`).
fn addrs(f: &[u8], l3: usize, family: u8) -> Option<(IpAddr, IpAddr)> {
    if family == 4 {
        let h = f.get(l3..l3 + 20)?;
        let a = |o: usize| IpAddr::V4(Ipv4Addr::new(h[o], h[o + 1], h[o + 2], h[o + 3]));
        Some((a(12), a(16)))
    } else {
        let h = f.get(l3..l3 + 40)?;
        let a = |o: usize| {
            let b: [u8; 16] = h[o..o + 16].try_into().unwrap_or([0; 16]);
            IpAddr::V6(Ipv6Addr::from(b))
        };
        Some((a(8), a(24)))
    }
}

/// The inner packet's TCP destination port and the length its header claims, when it is a TCP
/// packet the balancer may forward (no fragment, no IPv6 extension header).
fn inner_tcp(f: &[u8], l3: usize, family: u8) -> Option<(u16, usize)> {
    let (hlen, proto, ip_len) = if family == 4 {
        let hlen = usize::from(*f.get(l3)? & 0x0f) * 4;
        let tot = usize::from(u16::from_be_bytes([*f.get(l3 + 2)?, *f.get(l3 + 3)?]));
        (hlen, *f.get(l3 + 9)?, tot)
    } else {
        let payload = usize::from(u16::from_be_bytes([*f.get(l3 + 4)?, *f.get(l3 + 5)?]));
        (40, *f.get(l3 + 6)?, 40 + payload)
    };
    if proto != 6 {
        return None;
    }
    let dport = u16::from_be_bytes([*f.get(l3 + hlen + 2)?, *f.get(l3 + hlen + 3)?]);
    Some((dport, ip_len))
}

/// The TTL / hop limit of the IP header at `l3`.
fn input_ttl(f: &[u8], l3: usize, family: u8) -> Option<&u8> {
    f.get(l3 + if family == 4 { 8 } else { 7 })
}

/// Checks an encapsulated output: outer header valid (checksum, lengths, protocol), the inner
/// packet the input's, sent to a backend of the service owning the inner VIP:port.
fn check_encap(world: &World, input: &[u8], output: &[u8]) -> Result<(), String> {
    let (in_l3, in_family) = l3_of(input).ok_or("encapsulated a frame that is not IP")?;
    let (out_l3, out_family) = l3_of(output).ok_or("output is not IP")?;
    let outer_len = if out_family == 4 {
        let h = output
            .get(out_l3..out_l3 + 20)
            .ok_or("outer IPv4 header cut")?;
        if h[0] != 0x45 {
            return Err(format!("outer IPv4 version/IHL {:#04x}", h[0]));
        }
        if fold(sum16(h)) != 0xffff {
            return Err("outer IPv4 checksum wrong".into());
        }
        let want_proto = if in_family == 4 { 4 } else { 41 };
        if h[9] != want_proto {
            return Err(format!("outer protocol {} for IPv{in_family} inside", h[9]));
        }
        // TTL copied (ARCHITECTURE "Packet path"); a TTL-0 input is forwarded with TTL 0.
        if Some(&h[8]) != input_ttl(input, in_l3, in_family) {
            return Err(format!("outer TTL {} is not the inner packet's", h[8]));
        }
        20
    } else {
        let h = output
            .get(out_l3..out_l3 + 40)
            .ok_or("outer IPv6 header cut")?;
        if h[0] >> 4 != 6 {
            return Err("outer IPv6 version".into());
        }
        let want_nh = if in_family == 6 { 41 } else { 4 };
        if h[6] != want_nh {
            return Err(format!(
                "outer next header {} for IPv{in_family} inside",
                h[6]
            ));
        }
        if Some(&h[7]) != input_ttl(input, in_l3, in_family) {
            return Err(format!(
                "outer hop limit {} is not the inner packet's",
                h[7]
            ));
        }
        40
    };
    let inner = &output[out_l3 + outer_len..];
    if inner != &input[in_l3..] {
        return Err("the inner packet differs from the input's IP packet".into());
    }
    let (_, vip) = addrs(input, in_l3, in_family).ok_or("input addresses cut")?;
    let (dport, ip_len) =
        inner_tcp(input, in_l3, in_family).ok_or("encapsulated a packet that is not TCP")?;
    let claimed = if out_family == 4 {
        usize::from(u16::from_be_bytes([output[out_l3 + 2], output[out_l3 + 3]])).saturating_sub(20)
    } else {
        usize::from(u16::from_be_bytes([output[out_l3 + 4], output[out_l3 + 5]]))
    };
    if claimed != ip_len {
        return Err(format!(
            "outer header claims {claimed} inner bytes, the inner packet's header {ip_len}"
        ));
    }
    let svc = world
        .service(vip, dport)
        .ok_or_else(|| format!("encapsulated TCP to {vip}:{dport}, which is no service"))?;
    let (_, outer_dst) = addrs(output, out_l3, out_family).ok_or("outer addresses cut")?;
    if !svc.backends.contains(&outer_dst) {
        return Err(format!(
            "misforward: {vip}:{dport} sent to {outer_dst}, not one of its backends {:?}",
            svc.backends
        ));
    }
    Ok(())
}

/// Checks an ICMP / ICMPv6 reply: a valid header and checksum, addressed to the input's source. An
/// echo reply is the request answered without summing its payload (as Katran does): its checksum is
/// the request's, adjusted, so it must be valid exactly when the request's was.
fn check_icmp_reply(input: &[u8], output: &[u8]) -> Result<(), String> {
    let (in_l3, in_family) = l3_of(input).ok_or("ICMP reply to a frame that is not IP")?;
    let (out_l3, out_family) = l3_of(output).ok_or("output is not IP")?;
    let (client, _) = addrs(input, in_l3, in_family).ok_or("input addresses cut")?;
    let (_, dst) = addrs(output, out_l3, out_family).ok_or("reply addresses cut")?;
    if dst != client {
        return Err(format!("ICMP reply to {dst}, not the sender {client}"));
    }
    let (out_kind, header_ok, out_valid) = icmp_message(output, out_l3, out_family)?;
    if !header_ok {
        return Err("ICMP reply's IPv4 header checksum wrong".into());
    }
    let echo = out_kind == 0 || out_kind == 129;
    let want_valid = if echo {
        icmp_message(input, in_l3, in_family).is_ok_and(|(_, _, valid)| valid)
    } else {
        true
    };
    if out_valid != want_valid {
        return Err(format!(
            "ICMP reply (type {out_kind}) checksum {} for a request whose checksum is {}",
            if out_valid { "valid" } else { "wrong" },
            if want_valid { "valid" } else { "wrong" }
        ));
    }
    Ok(())
}

/// The ICMP / ICMPv6 type of the message in `frame`, whether the IPv4 header checksum verifies
/// (always for IPv6) and whether the message's checksum does; `Err` when a length lies.
fn icmp_message(frame: &[u8], l3: usize, family: u8) -> Result<(u8, bool, bool), String> {
    if family == 4 {
        let ihl = usize::from(frame[l3] & 0x0f) * 4;
        let h = frame.get(l3..l3 + ihl).ok_or("ICMP header cut")?;
        if ihl < 20 {
            return Err("ICMP packet with a short IPv4 header".into());
        }
        let tot = usize::from(u16::from_be_bytes([h[2], h[3]]));
        let msg = frame.get(l3 + ihl..l3 + tot).ok_or("ICMP length lies")?;
        let kind = *msg.first().ok_or("ICMP message empty")?;
        Ok((kind, fold(sum16(h)) == 0xffff, fold(sum16(msg)) == 0xffff))
    } else {
        let payload = usize::from(u16::from_be_bytes([
            *frame.get(l3 + 4).ok_or("cut")?,
            *frame.get(l3 + 5).ok_or("cut")?,
        ]));
        let ip6 = frame
            .get(l3..l3 + 40 + payload)
            .ok_or("ICMPv6 length lies")?;
        let kind = *ip6.get(40).ok_or("ICMPv6 message empty")?;
        let mut zeroed = ip6.to_vec();
        zeroed.get_mut(42..44).ok_or("ICMPv6 message cut")?.fill(0);
        let sum = u16::from_be_bytes([ip6[42], ip6[43]]);
        Ok((kind, true, sum == icmpv6_checksum(&zeroed)))
    }
}

fn is_icmp_reply(output: &[u8]) -> bool {
    match l3_of(output) {
        Some((l3, 4)) => output.get(l3 + 9) == Some(&1),
        Some((l3, 6)) => output.get(l3 + 6) == Some(&58),
        _ => false,
    }
}

/// Checks one frame's verdict and output; `Err` says what is wrong.
pub fn check(world: &World, input: &[u8], verdict: u32, output: &[u8]) -> Result<Outcome, String> {
    match verdict {
        XDP_PASS if output == input => Ok(Outcome::Passed),
        XDP_PASS => Err("XDP_PASS with a modified frame".into()),
        XDP_DROP => Ok(Outcome::Dropped),
        XDP_TX if is_icmp_reply(output) => {
            check_icmp_reply(input, output).map(|()| Outcome::IcmpReply)
        }
        XDP_TX | XDP_REDIRECT => {
            check_encap(world, input, output).map(|()| Outcome::Forwarded(verdict))
        }
        XDP_ABORTED => Err("XDP_ABORTED".into()),
        other => Err(format!("verdict {other}, which the program never returns")),
    }
}

/// Verdicts seen in a run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Verdicts {
    pub pass: u64,
    pub drop: u64,
    pub tx: u64,
    pub redirect: u64,
}

/// Checks that the global counters account for every frame: `rx_packets` moved by `frames`, and
/// each verdict's counters (every `pass_*`, every `drop_*`, `tx_packets`, `redirect_packets`) by the
/// verdicts seen. `before` / `after` are `MapsView::counters`.
pub fn check_counters(
    before: &[(Counter, u64)],
    after: &[(Counter, u64)],
    frames: u64,
    seen: &Verdicts,
) -> Result<(), String> {
    let delta = |pred: &dyn Fn(&str) -> bool| -> u64 {
        after
            .iter()
            .zip(before)
            .filter(|((c, _), _)| pred(c.name()))
            .map(|((_, a), (_, b))| a.wrapping_sub(*b))
            .sum()
    };
    let got = Verdicts {
        pass: delta(&|n| n.starts_with("pass_")),
        drop: delta(&|n| n.starts_with("drop_")),
        tx: delta(&|n| n == Counter::TxPackets.name()),
        redirect: delta(&|n| n == Counter::RedirectPackets.name()),
    };
    let rx = delta(&|n| n == Counter::RxPackets.name());
    if rx != frames || &got != seen {
        return Err(format!(
            "counters do not add up: rx_packets moved by {rx} for {frames} frames; counted {got:?}, seen {seen:?}"
        ));
    }
    Ok(())
}

/// A frame the checker refused.
#[derive(Clone, Debug)]
pub struct Failure {
    pub index: u64,
    pub mutation: Mutation,
    pub verdict: u32,
    pub why: String,
    pub input: Vec<u8>,
}

/// What a fuzz run found.
#[derive(Clone, Debug)]
pub struct FuzzReport {
    pub frames: u64,
    pub seed: u64,
    /// Frames the checker refused (misforwards, bad outputs, ABORTED).
    pub failures: u64,
    pub samples: Vec<Failure>,
    pub outcomes: BTreeMap<String, u64>,
    pub counters: Result<(), String>,
    /// How much each global counter moved (the non-zero ones).
    pub counter_deltas: Vec<(&'static str, u64)>,
    pub elapsed: Duration,
}

impl FuzzReport {
    pub fn ok(&self) -> bool {
        self.failures == 0 && self.counters.is_ok()
    }

    pub fn render(&self) -> String {
        let mut s = format!(
            "lb-xdp-fuzz: {} frames (seed {:#x}) in {:.1} s ({:.2} µs/frame): {} misforwards or bad outputs; counters: {}\n",
            self.frames,
            self.seed,
            self.elapsed.as_secs_f64(),
            self.elapsed.as_secs_f64() * 1e6 / self.frames.max(1) as f64,
            self.failures,
            match &self.counters {
                Ok(()) => "every frame accounted for".to_owned(),
                Err(e) => e.clone(),
            }
        );
        for (k, v) in &self.outcomes {
            s.push_str(&format!("  {k:28} {v}\n"));
        }
        s.push_str("  counters:");
        for (name, d) in &self.counter_deltas {
            s.push_str(&format!(" {name}={d}"));
        }
        s.push('\n');
        for f in &self.samples {
            s.push_str(&format!(
                "  FAIL frame {} ({:?}, verdict {}): {} — replay: --seed {:#x} --first {} --packets 1\n    {:02x?}\n",
                f.index, f.mutation, f.verdict, f.why, self.seed, f.index, f.input
            ));
        }
        s
    }
}

fn run_frame(prog: &mut Xdp, frame: &[u8], ifindex: u32, out: &mut Vec<u8>) -> anyhow::Result<u32> {
    out.clear();
    out.resize(frame.len() + 256, 0);
    // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex.
    let len = u32::try_from(frame.len())?;
    let ctx: Vec<u8> = [0, len, 0, ifindex, 0, 0]
        .iter()
        .flat_map(|w: &u32| w.to_ne_bytes())
        .collect();
    let opts = TestRunOptions {
        data_in: Some(frame),
        data_out: Some(out),
        ctx_in: Some(&ctx),
        ..Default::default()
    };
    let result = prog
        .test_run(opts)
        .with_context(|| format!("BPF_PROG_TEST_RUN of a {}-byte frame", frame.len()))?;
    out.truncate(result.data_size_out as usize);
    Ok(result.return_value)
}

fn outcome_name(o: Outcome) -> String {
    match o {
        Outcome::Passed => "XDP_PASS (untouched)".into(),
        Outcome::Dropped => "XDP_DROP".into(),
        Outcome::Forwarded(XDP_TX) => "XDP_TX (encapsulated)".into(),
        Outcome::Forwarded(_) => "XDP_REDIRECT (encapsulated)".into(),
        Outcome::IcmpReply => "XDP_TX (ICMP reply)".into(),
    }
}

/// Runs frames `first .. first + packets` of `seed` through `lb_balancer` in `lab`.
pub fn run(lab: &XdpLab, seed: u64, first: u64, packets: u64) -> anyhow::Result<FuzzReport> {
    let world = World::standard();
    let mut dp = Dataplane::load(&LoadOptions {
        capacity: world.capacity(),
        pin_dir: None,
        kernel_log: false,
        ..Default::default()
    })
    .context("loading the data plane")?;
    world.install(&mut dp)?;
    let before = dp.maps().counters()?;
    let mut report = FuzzReport {
        frames: packets,
        seed,
        failures: 0,
        samples: Vec::new(),
        outcomes: BTreeMap::new(),
        counters: Ok(()),
        counter_deltas: Vec::new(),
        elapsed: Duration::ZERO,
    };
    let mut seen = Verdicts::default();
    let mut out = Vec::with_capacity(MAX_FRAME + 256);
    let start = Instant::now();
    for index in first..first + packets {
        let (mutation, input) = frame(&world, seed, index);
        let verdict = run_frame(dp.balancer_program(), &input, lab.ifindex, &mut out)?;
        match verdict {
            XDP_PASS => seen.pass += 1,
            XDP_DROP => seen.drop += 1,
            XDP_TX => seen.tx += 1,
            XDP_REDIRECT => seen.redirect += 1,
            _ => {}
        }
        match check(&world, &input, verdict, &out) {
            Ok(o) => *report.outcomes.entry(outcome_name(o)).or_default() += 1,
            Err(why) => {
                report.failures += 1;
                *report.outcomes.entry("FAILED".into()).or_default() += 1;
                if report.samples.len() < SAMPLES {
                    report.samples.push(Failure {
                        index,
                        mutation,
                        verdict,
                        why,
                        input,
                    });
                }
            }
        }
    }
    report.elapsed = start.elapsed();
    let after = dp.maps().counters()?;
    report.counters = check_counters(&before, &after, packets, &seen);
    report.counter_deltas = after
        .iter()
        .zip(&before)
        .map(|((c, a), (_, b))| (c.name(), a.wrapping_sub(*b)))
        .filter(|(_, d)| *d != 0)
        .collect();
    Ok(report)
}

/// `lb-xdp-fuzz`'s work: builds the XDP lab, runs, prints the report; fails on any failure.
pub fn run_in_lab(seed: u64, first: u64, packets: u64) -> anyhow::Result<FuzzReport> {
    ensure!(packets > 0, "--packets must be at least 1");
    let report = super::lab::with_xdp_lab(|lab| run(lab, seed, first, packets))??;
    print!("{}", report.render());
    if !report.ok() {
        bail!(
            "the fuzzer found {} bad frames{}",
            report.failures,
            if report.counters.is_err() {
                " and counters that do not add up"
            } else {
                ""
            }
        );
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn world() -> World {
        World::standard()
    }

    fn syn_to(vip: IpAddr, port: u16) -> Vec<u8> {
        let src = match vip {
            IpAddr::V4(_) => IpAddr::V4(CLIENT4),
            IpAddr::V6(_) => IpAddr::V6(CLIENT6),
        };
        tcp_to(src, vip, 40000, port, SYN).payload(10).frame()
    }

    /// What the balancer sends: the input's link header, an outer header to `backend`, the input's
    /// IP packet.
    fn encap(input: &[u8], backend: IpAddr) -> Vec<u8> {
        match backend {
            IpAddr::V4(b) => super::super::frames::encapsulate_v4(input, SRC4, b),
            IpAddr::V6(b) => super::super::frames::encapsulate_v6(input, SRC6, b),
        }
    }

    #[test]
    fn a_correct_encapsulation_passes() {
        let w = world();
        for svc in &w.services {
            let Some(backend) = svc.backends.first() else {
                continue;
            };
            let input = syn_to(svc.vip, svc.port);
            let out = encap(&input, *backend);
            assert_eq!(
                check(&w, &input, XDP_TX, &out),
                Ok(Outcome::Forwarded(XDP_TX)),
                "{}:{}",
                svc.vip,
                svc.port
            );
        }
    }

    #[test]
    fn the_checker_catches_a_misforward_to_another_services_backend() {
        let w = world();
        // Same VIP, other port: 198.18.100.1:80's packet sent to a backend of 198.18.100.1:443.
        let input = syn_to(w.services[0].vip, 80);
        let out = encap(&input, w.services[1].backends[0]);
        let e = check(&w, &input, XDP_TX, &out).unwrap_err();
        assert!(e.contains("misforward"), "{e}");
        let input = syn_to(w.services[6].vip, 80);
        let out = encap(&input, w.services[7].backends[0]);
        assert!(check(&w, &input, XDP_REDIRECT, &out).is_err());
    }

    #[test]
    fn the_checker_catches_broken_outputs() {
        let w = world();
        let input = syn_to(w.services[0].vip, 80);
        let good = encap(&input, w.services[0].backends[0]);
        let mut bad_sum = good.clone();
        bad_sum[ETH_HLEN + 10] ^= 1;
        let mut bad_inner = good.clone();
        *bad_inner.last_mut().unwrap() ^= 0xff;
        let mut bad_len = good.clone();
        bad_len[ETH_HLEN + 3] = bad_len[ETH_HLEN + 3].wrapping_add(1);
        let mut modified = input.clone();
        modified[ETH_HLEN + 8] -= 1;
        let cases = [
            ("outer checksum", XDP_TX, bad_sum),
            ("inner packet", XDP_TX, bad_inner),
            ("outer length", XDP_TX, bad_len),
            ("passed but modified", XDP_PASS, modified),
            ("aborted", XDP_ABORTED, input.clone()),
            ("unknown verdict", 7, input.clone()),
            ("a frame that is no VIP's, encapsulated", XDP_TX, {
                let other = syn_to(v4([198, 18, 100, 9]), 80);
                encap(&other, w.services[0].backends[0])
            }),
        ];
        for (name, verdict, out) in cases {
            let input = if name.contains("no VIP") {
                syn_to(v4([198, 18, 100, 9]), 80)
            } else {
                input.clone()
            };
            assert!(
                check(&w, &input, verdict, &out).is_err(),
                "{name} was accepted"
            );
        }
        assert_eq!(check(&w, &input, XDP_PASS, &input), Ok(Outcome::Passed));
        assert_eq!(check(&w, &input, XDP_DROP, &[]), Ok(Outcome::Dropped));
    }

    #[test]
    fn icmp_replies_must_go_back_to_the_sender() {
        let w = world();
        let ping = icmp_echo(&syn_to(w.services[0].vip, 80));
        // A reply as the ICMP handler would build it: addresses swapped, type 0, checksums fixed.
        let mut reply = ping.clone();
        let l3 = ETH_HLEN;
        let (src, dst) = (
            reply[l3 + 12..l3 + 16].to_vec(),
            reply[l3 + 16..l3 + 20].to_vec(),
        );
        reply[l3 + 12..l3 + 16].copy_from_slice(&dst);
        reply[l3 + 16..l3 + 20].copy_from_slice(&src);
        reply[l3 + 20] = 0;
        reply[l3 + 22..l3 + 24].fill(0);
        let c = checksum(&reply[l3 + 20..]);
        reply[l3 + 22..l3 + 24].copy_from_slice(&c.to_be_bytes());
        assert_eq!(check(&w, &ping, XDP_TX, &reply), Ok(Outcome::IcmpReply));
        // Sent to the VIP instead of the client: refused.
        assert!(check(&w, &ping, XDP_TX, &ping).is_err());

        let ping6 = icmp_echo(&syn_to(w.services[6].vip, 80));
        assert!(
            check_icmp_reply(&ping6, &ping6).is_err(),
            "the VIP is not the sender"
        );
    }

    #[test]
    fn counters_must_account_for_every_frame() {
        let zero: Vec<(Counter, u64)> = Counter::ALL.iter().map(|c| (*c, 0)).collect();
        let with = |pairs: &[(Counter, u64)]| -> Vec<(Counter, u64)> {
            zero.iter()
                .map(|(c, _)| (*c, pairs.iter().find(|(d, _)| d == c).map_or(0, |p| p.1)))
                .collect()
        };
        let after = with(&[
            (Counter::RxPackets, 4),
            (Counter::PassNotVip, 1),
            (Counter::DropNoBackend, 1),
            (Counter::TxPackets, 2),
            (Counter::FlowNew, 2),
        ]);
        let seen = Verdicts {
            pass: 1,
            drop: 1,
            tx: 2,
            redirect: 0,
        };
        assert_eq!(check_counters(&zero, &after, 4, &seen), Ok(()));
        assert!(
            check_counters(&zero, &after, 5, &seen).is_err(),
            "a frame uncounted"
        );
        let seen_more_drops = Verdicts {
            drop: 2,
            ..seen.clone()
        };
        assert!(check_counters(&zero, &after, 4, &seen_more_drops).is_err());
    }

    #[test]
    fn frames_are_reproducible_from_seed_and_index() {
        let w = world();
        for i in 0..200 {
            let (m1, a) = frame(&w, 7, i);
            let (m2, b) = frame(&w, 7, i);
            assert_eq!((m1, &a), (m2, &b));
            assert!((MIN_FRAME..=MAX_FRAME).contains(&a.len()));
        }
        assert_ne!(frame(&w, 7, 1).1, frame(&w, 8, 1).1);
    }
}
