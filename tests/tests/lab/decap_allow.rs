//! `lb decap --allow-src` with real packets: an IPIP packet to a backend carrying a client's SYN to a
//! VIP is decapsulated (the backend's kernel answers the client from the VIP) when it comes from the
//! load balancer's subnet, and dropped and counted (`drop_src_not_allowed`, no answer) when it comes
//! from anywhere else, here the client itself forging a packet "from" a client.

use std::mem::MaybeUninit;
use std::net::SocketAddrV4;
use std::time::{Duration, Instant};

use lb_tests::lab::topology::CLIENT_V4;
use lb_tests::lab::{SERVER_PORT, run_in_netns};
use lb_tests::synflood::syn_packet;
use lb_tests::{Lab, LabOptions, assert_eventually};
use lb_userspace::decap::DecapStatus;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

/// `IPPROTO_IPIP`: a raw socket of this protocol sends its payload (an IPv4 packet) inside an outer
/// IPv4 header the kernel writes, with the sending namespace's address as the source.
const IPPROTO_IPIP: i32 = 4;
/// How long an answer (or its absence) is waited for.
const ANSWER_WAIT: Duration = Duration::from_secs(3);

/// Sends, from namespace `ns`, one IPIP packet to backend 0 whose inner packet is a SYN from the
/// client's port `sport` to VIP 1, port 80.
fn send_tunneled_syn(ns: &str, sport: u16) {
    let inner = syn_packet(
        SocketAddrV4::new(CLIENT_V4, sport),
        SocketAddrV4::new(Lab::vip_v4(1), SERVER_PORT),
        1,
    );
    let to = SockAddr::from(SocketAddrV4::new(Lab::backend_v4(0), 0));
    run_in_netns(ns, || -> std::io::Result<usize> {
        let s = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(IPPROTO_IPIP)))?;
        s.send_to(&inner, &to)
    })
    .expect("enter the namespace")
    .unwrap_or_else(|e| panic!("send an IPIP packet from {ns}: {e}"));
}

/// Whether `packet` (IPv4 + TCP, as a raw socket receives it) is the VIP's SYN-ACK to `dport`.
fn is_syn_ack_to(packet: &[u8], dport: u16) -> bool {
    let Some(ihl) = packet.first().map(|b| usize::from(b & 0x0f) * 4) else {
        return false;
    };
    let Some(tcp) = packet.get(ihl..ihl + 14) else {
        return false;
    };
    packet[12..16] == Lab::vip_v4(1).octets()
        && u16::from_be_bytes([tcp[0], tcp[1]]) == SERVER_PORT
        && u16::from_be_bytes([tcp[2], tcp[3]]) == dport
        && tcp[13] & 0x12 == 0x12
}

/// Waits (`ANSWER_WAIT` at most) for the VIP's SYN-ACK to the client's port `dport` on `recv`.
fn saw_syn_ack(recv: &Socket, dport: u16) -> bool {
    let deadline = Instant::now() + ANSWER_WAIT;
    let mut buf = [MaybeUninit::<u8>::uninit(); 2048];
    while Instant::now() < deadline {
        let Ok(n) = recv.recv(&mut buf) else {
            continue; // the read timeout: look at the clock again
        };
        // SAFETY: `recv` initialised the first `n` bytes.
        let packet: Vec<u8> = buf[..n]
            .iter()
            .map(|b| unsafe { b.assume_init() })
            .collect();
        if is_syn_ack_to(&packet, dport) {
            return true;
        }
    }
    false
}

fn counter(status: &DecapStatus, name: &str) -> u64 {
    *status
        .counters
        .get(name)
        .unwrap_or_else(|| panic!("no counter {name} in {status:?}"))
}

#[test]
fn decap_accepts_tunnel_packets_from_the_lbs_only() {
    let opts = LabOptions {
        backends: 1,
        server_bin: Some(env!("CARGO_BIN_EXE_lab-server").into()),
        ..Default::default()
    };
    let lab = Lab::start(opts).expect("lab starts");
    let pin_dir = lab.decap_pin_dir(0);
    let pin_arg = pin_dir.to_str().expect("a UTF-8 pin dir");
    let status = || {
        let out = lab
            .run_lb_in(
                &lab.backend_netns(0),
                &["decap", "--status", "--json", "--pin-dir", pin_arg],
            )
            .expect("lb decap --status --json");
        serde_json::from_str::<DecapStatus>(&out)
            .expect("lb decap --status --json is a DecapStatus")
    };
    let start = status();
    assert_eq!(
        start.allow_src,
        ["198.18.3.0/24", "2001:db8:3::/64"],
        "the lab's backends accept the load balancers' subnet"
    );
    // Every TCP packet that reaches the client: where the backend's answer shows up.
    let recv = lab
        .in_client(|| -> std::io::Result<Socket> {
            let s = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::TCP))?;
            s.set_read_timeout(Some(Duration::from_millis(100)))?;
            Ok(s)
        })
        .expect("client namespace")
        .expect("a raw TCP socket in the client namespace");

    // From the load balancer's address: decapsulated, and the backend answers from the VIP.
    send_tunneled_syn(&lab.lb_netns(0), 47001);
    assert!(
        saw_syn_ack(&recv, 47001),
        "no SYN-ACK from the VIP for a tunnel packet from lb0; decap: {:?}",
        status()
    );
    assert_eventually!(
        counter(&status(), "decap_ipip") == counter(&start, "decap_ipip") + 1,
        ANSWER_WAIT,
        "{:?}",
        status()
    );

    // The same packet from the client's own address: dropped before the backend's stack sees it.
    send_tunneled_syn(&lab.client_netns(), 47002);
    assert_eventually!(
        counter(&status(), "drop_src_not_allowed") == counter(&start, "drop_src_not_allowed") + 1,
        ANSWER_WAIT,
        "the forged tunnel packet was not counted: {:?}",
        status()
    );
    assert!(
        !saw_syn_ack(&recv, 47002),
        "the backend answered a tunnel packet from {CLIENT_V4}"
    );
    let end = status();
    assert_eq!(
        counter(&end, "decap_ipip"),
        counter(&start, "decap_ipip") + 1,
        "only lb0's packet was decapsulated: {end:?}"
    );
}
