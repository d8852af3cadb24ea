//! Bounded floods for the lab: raw IPv4 TCP SYNs (or ACKs, RSTs: any flags) from spoofed client
//! addresses (nobody answers the backends, so every SYN's flow stays half-open, as in a real flood).
//! Run them inside the client namespace.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

/// `IPPROTO_RAW`: the socket sends whole IP packets (`IP_HDRINCL` implied).
const IPPROTO_RAW: i32 = 255;
/// The most a flood may last, whatever its size.
const MAX_DURATION: Duration = Duration::from_secs(30);

/// The one's complement sum used by IP and TCP checksums, folded.
fn checksum(chunks: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    for chunk in chunks {
        let mut pairs = chunk.chunks_exact(2);
        for p in &mut pairs {
            sum += u32::from(u16::from_be_bytes([p[0], p[1]]));
        }
        if let [last] = pairs.remainder() {
            sum += u32::from(*last) << 8;
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// TCP flag bits.
pub const SYN: u8 = 0x02;
pub const ACK: u8 = 0x10;

/// One IPv4 + TCP SYN packet (40 bytes) with valid checksums.
pub fn syn_packet(src: SocketAddrV4, dst: SocketAddrV4, seq: u32) -> [u8; 40] {
    tcp_packet(src, dst, seq, SYN)
}

/// One IPv4 + TCP packet (40 bytes, no payload) with `flags` and valid checksums.
pub fn tcp_packet(src: SocketAddrV4, dst: SocketAddrV4, seq: u32, flags: u8) -> [u8; 40] {
    let mut p = [0u8; 40];
    p[0] = 0x45; // IPv4, 20-byte header
    p[2..4].copy_from_slice(&40u16.to_be_bytes());
    p[6] = 0x40; // don't fragment
    p[8] = 64; // TTL
    p[9] = 6; // TCP
    p[12..16].copy_from_slice(&src.ip().octets());
    p[16..20].copy_from_slice(&dst.ip().octets());
    let ip_sum = checksum(&[&p[..20]]);
    p[10..12].copy_from_slice(&ip_sum.to_be_bytes());
    let tcp = 20;
    p[tcp..tcp + 2].copy_from_slice(&src.port().to_be_bytes());
    p[tcp + 2..tcp + 4].copy_from_slice(&dst.port().to_be_bytes());
    p[tcp + 4..tcp + 8].copy_from_slice(&seq.to_be_bytes());
    p[tcp + 12] = 5 << 4; // 20-byte header
    p[tcp + 13] = flags;
    p[tcp + 14..tcp + 16].copy_from_slice(&65535u16.to_be_bytes());
    let mut pseudo = [0u8; 12];
    pseudo[..4].copy_from_slice(&src.ip().octets());
    pseudo[4..8].copy_from_slice(&dst.ip().octets());
    pseudo[9] = 6;
    pseudo[10..12].copy_from_slice(&20u16.to_be_bytes());
    let tcp_sum = checksum(&[&pseudo, &p[tcp..]]);
    p[tcp + 16..tcp + 18].copy_from_slice(&tcp_sum.to_be_bytes());
    p
}

/// Held by the unpaced flood that is sending (one at a time in a test process).
static FLOODS: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Sends `count` SYNs to `vip`, each from a different (source address, port) of `sources`
/// (`base .. base + sources` in the last octet). Returns how many were sent.
pub fn syn_flood(
    vip: SocketAddrV4,
    base: Ipv4Addr,
    sources: u8,
    count: usize,
) -> anyhow::Result<usize> {
    syn_stream(vip, base, sources, count, Duration::ZERO)
}

/// Like [`syn_flood`], one SYN every `pace` (as fast as possible with `Duration::ZERO`).
pub fn syn_stream(
    vip: SocketAddrV4,
    base: Ipv4Addr,
    sources: u8,
    count: usize,
    pace: Duration,
) -> anyhow::Result<usize> {
    tcp_stream(vip, base, sources, count, pace, SYN)
}

/// Like [`syn_stream`], packets with TCP `flags` (an ACK flood with [`ACK`]).
pub fn tcp_stream(
    vip: SocketAddrV4,
    base: Ipv4Addr,
    sources: u8,
    count: usize,
    pace: Duration,
    flags: u8,
) -> anyhow::Result<usize> {
    ensure!(sources > 0, "a flood needs at least one source address");
    // Unpaced floods of tests running side by side (the lab's two abuse tests start together) take
    // turns: on 2 CPUs two floods at once drop each other's packets before any balancer sees them.
    let _turn = pace.is_zero().then(|| {
        FLOODS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    });
    let socket = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(IPPROTO_RAW)))
        .context("raw socket (needs root)")?;
    let dst = SockAddr::from(std::net::SocketAddr::V4(vip));
    let started = Instant::now();
    let mut sent = 0;
    for i in 0..count {
        if started.elapsed() > MAX_DURATION {
            break;
        }
        if let Some(wait) = (pace * i as u32).checked_sub(started.elapsed()) {
            std::thread::sleep(wait);
        }
        let [a, b, c, d] = base.octets();
        let src_ip = Ipv4Addr::new(a, b, c, d.wrapping_add((i % usize::from(sources)) as u8));
        let port = 10_000 + (i / usize::from(sources)) as u16 % 50_000;
        let packet = tcp_packet(SocketAddrV4::new(src_ip, port), vip, i as u32, flags);
        // A full queue (ENOBUFS) is waited out briefly and retried a bounded number of times.
        for attempt in 0..100 {
            match socket.send_to(&packet, &dst) {
                Ok(_) => {
                    sent += 1;
                    break;
                }
                Err(_) if attempt < 99 => std::thread::sleep(Duration::from_micros(200)),
                Err(e) => return Err(e).context("sending a flood packet"),
            }
        }
    }
    Ok(sent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_verify() {
        let p = syn_packet(
            "198.18.0.200:12345".parse().unwrap(),
            "198.18.100.1:80".parse().unwrap(),
            7,
        );
        // A correct checksum makes the sum over the covered bytes fold to zero.
        assert_eq!(checksum(&[&p[..20]]), 0);
        let mut pseudo = [0u8; 12];
        pseudo[..4].copy_from_slice(&p[12..16]);
        pseudo[4..8].copy_from_slice(&p[16..20]);
        pseudo[9] = 6;
        pseudo[11] = 20;
        assert_eq!(checksum(&[&pseudo, &p[20..]]), 0);
    }
}
