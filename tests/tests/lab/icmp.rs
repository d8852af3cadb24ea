//! The packet path under abuse, at MTU 1500 on every link: full-sized transfers through the VIP
//! (the client learns the path MTU from the balancer's ICMP), `ping` of a VIP, floods the balancer
//! does not balance (none loops through the router), and `lb detach` restoring the sysctls.

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

use lb_tests::config::to_toml;
use lb_tests::lab::LabOptions;
use lb_tests::scenario::{service, status_shows, vip};
use lb_tests::{Lab, assert_eventually};

const MIB: usize = 1 << 20;
/// Lines the lab server echoes (it takes at most 64 KiB per line).
const LINE: usize = 32 * 1024;

/// Sends 1 MiB in lines and reads the echo back: 1 MiB up through the balancer, 1 MiB down from
/// the backend directly.
fn transfer(vip: SocketAddr) -> anyhow::Result<usize> {
    let conn = TcpStream::connect_timeout(&vip, Duration::from_secs(5))?;
    conn.set_read_timeout(Some(Duration::from_secs(30)))?;
    conn.set_write_timeout(Some(Duration::from_secs(30)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut greeting = String::new();
    reader.read_line(&mut greeting)?;
    let mut writer = conn;
    let mut line = vec![b'x'; LINE - 1];
    line.push(b'\n');
    let lines = MIB / LINE;
    let sender = std::thread::spawn(move || -> std::io::Result<()> {
        for _ in 0..lines {
            writer.write_all(&line)?;
        }
        writer.flush()
    });
    // Each line comes back as "<backend> <line>".
    let mut echoed = 0;
    let mut reply = String::new();
    for _ in 0..lines {
        reply.clear();
        reader.read_line(&mut reply)?;
        let (_, data) = reply
            .trim_end()
            .split_once(' ')
            .ok_or_else(|| anyhow::anyhow!("an echo without the backend's name"))?;
        anyhow::ensure!(
            data.len() == LINE - 1 && data.bytes().all(|b| b == b'x'),
            "the echo differs from what was sent"
        );
        echoed += LINE;
    }
    sender
        .join()
        .map_err(|_| anyhow::anyhow!("the sender panicked"))??;
    Ok(echoed)
}

fn in_netns(netns: &str, args: &[&str]) -> std::process::Output {
    Command::new("ip")
        .args(["netns", "exec", netns])
        .args(args)
        .output()
        .expect("ip netns exec")
}

fn counter(lab: &Lab, name: &str) -> u64 {
    let s = lab.lb_status_json(0).expect("lb status");
    s.counters
        .get(name)
        .copied()
        .unwrap_or_else(|| panic!("no counter {name}"))
}

fn start(services: &[lb_tests::config::ServiceConfig]) -> Lab {
    let mut lab = Lab::start(LabOptions {
        server_bin: Some(env!("CARGO_BIN_EXE_lab-server").into()),
        ..Default::default()
    })
    .expect("the lab starts");
    lab.start_lb(0, &to_toml(services), &[]).expect("lb starts");
    assert_eventually!(
        lab.lb_status_json(0)
            .is_ok_and(|s| services.iter().all(|svc| status_shows(&s, svc))),
        Duration::from_secs(10),
        "lb never showed the services"
    );
    lab
}

#[test]
fn full_sized_transfers_learn_the_path_mtu_and_ping_of_a_vip_is_answered() {
    let web4 = service("web4", vip(1, false), "rr", &[1, 1, 1]);
    let web6 = service("web6", vip(1, true), "rr", &[1, 1, 1]);
    let lab = start(&[web4.clone(), web6.clone()]);
    for svc in [&web4, &web6] {
        let before = counter(&lab, "icmp_too_big_sent");
        let vip = svc.vip;
        let moved = lab
            .in_client(move || transfer(vip))
            .expect("client")
            .unwrap_or_else(|e| panic!("1 MiB up and down through {vip}: {e:#}"));
        assert_eq!(moved, MIB);
        assert!(
            counter(&lab, "icmp_too_big_sent") > before,
            "{vip}: the client learnt the path MTU from the balancer's ICMP"
        );
    }
    for addr in [vip(1, false).ip(), vip(1, true).ip()] {
        let out = in_netns(
            &lab.client_netns(),
            &["python3", "-c", PING, &addr.to_string()],
        );
        assert!(
            out.status.success(),
            "ping {addr}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(counter(&lab, "icmp_echo_replied") >= 2);
}

/// One echo request to the address in argv[1] (the machine has no `ping`): exit 0 on its reply
/// within 2 s (3 tries).
const PING: &str = r#"
import socket, struct, sys, time
addr = sys.argv[1]
v6 = ":" in addr
def csum(b):
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while s > 0xffff:
        s = (s & 0xffff) + (s >> 16)
    return (~s) & 0xffff
if v6:
    s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
    req, reply_type = 128, 129
else:
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    req, reply_type = 8, 0
s.settimeout(0.5)
for seq in range(3):
    m = struct.pack("!BBHHH", req, 0, 0, 0x4c42, seq) + b"lb ping payload!"
    if not v6:
        m = m[:2] + struct.pack("!H", csum(m)) + m[4:]
    s.sendto(m, (addr, 0))
    deadline = time.time() + 2 / 3
    while time.time() < deadline:
        try:
            data, peer = s.recvfrom(2048)
        except socket.timeout:
            break
        icmp = data if v6 else data[(data[0] & 15) * 4:]
        if peer[0] == addr and icmp[0] == reply_type and icmp[4:6] == b"\x4c\x42":
            print("reply from", addr)
            sys.exit(0)
print("no echo reply from", addr)
sys.exit(1)
"#;

/// Sends `count` UDP datagrams, ICMP timestamp requests (not echo) and TCP SYNs to an unconfigured
/// port of `addr` from raw / UDP sockets (no retransmissions), IPv4.
const FLOOD: &str = r#"
import socket, struct, sys
addr, count = sys.argv[1], int(sys.argv[2])
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(count):
    u.sendto(b"flood", (addr, 9999))
def csum(b):
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while s > 0xffff:
        s = (s & 0xffff) + (s >> 16)
    return (~s) & 0xffff
ic = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
for i in range(count):
    m = struct.pack("!BBHHH12x", 13, 0, 0, 7, i & 0xffff)
    m = m[:2] + struct.pack("!H", csum(m)) + m[4:]
    ic.sendto(m, (addr, 0))
t = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
for i in range(count):
    h = struct.pack("!HHIIBBHHH", 40000 + (i % 1000), 8443, i, 0, 5 << 4, 0x02, 65535, 0, 0)
    t.sendto(h, (addr, 0))
"#;

fn tx_packets(lab: &Lab, dev: &str) -> u64 {
    let out = in_netns(
        &lab.router_netns(),
        &[
            "cat",
            &format!("/sys/class/net/{dev}/statistics/tx_packets"),
        ],
    );
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("tx_packets of {dev}: {e}"))
}

fn forwarding(lab: &Lab) -> (String, String) {
    let read = |family: &str| {
        let out = in_netns(
            &lab.lb_netns(0),
            &[
                "cat",
                &format!("/proc/sys/net/{family}/conf/eth0/forwarding"),
            ],
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    (read("ipv4"), read("ipv6"))
}

#[test]
fn unbalanced_floods_to_a_vip_never_loop_and_detach_restores_the_sysctls() {
    let web4 = service("web4", vip(1, false), "rr", &[1, 1, 1]);
    let mut lab = Lab::start(LabOptions {
        server_bin: Some(env!("CARGO_BIN_EXE_lab-server").into()),
        ..Default::default()
    })
    .expect("the lab starts");
    let before_lb = forwarding(&lab);
    lab.start_lb(0, &to_toml(std::slice::from_ref(&web4)), &[])
        .expect("lb starts");
    assert_eventually!(
        lab.lb_status_json(0).is_ok_and(|s| status_shows(&s, &web4)),
        Duration::from_secs(10),
        "lb never showed the service"
    );
    assert_eq!(
        forwarding(&lab),
        ("1".to_owned(), "1".to_owned()),
        "lb run enables forwarding"
    );

    const SENT: u64 = 2000;
    let toward_lb = tx_packets(&lab, "lb0");
    let dropped = counter(&lab, "drop_vip_unbalanced");
    let out = in_netns(
        &lab.client_netns(),
        &[
            "python3",
            "-c",
            FLOOD,
            &vip(1, false).ip().to_string(),
            &SENT.to_string(),
        ],
    );
    assert!(
        out.status.success(),
        "flood: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eventually!(
        counter(&lab, "drop_vip_unbalanced") - dropped >= 3 * SENT,
        Duration::from_secs(10),
        "the balancer dropped every unbalanced packet"
    );
    let forwarded = tx_packets(&lab, "lb0") - toward_lb;
    // Each packet once toward the LB (plus a little neighbour traffic), none bounced back: a loop
    // would carry every packet up to its TTL (64) times.
    assert!(
        (3 * SENT..=3 * SENT + 100).contains(&forwarded),
        "the router sent {forwarded} packets toward the LB for {} sent",
        3 * SENT
    );

    lab.stop_lb(0)
        .expect("lb stops (the program keeps forwarding)");
    assert_eq!(
        forwarding(&lab),
        ("1".to_owned(), "1".to_owned()),
        "still forwarding after exit"
    );
    lab.lb_detach(0).expect("lb detach");
    assert_eq!(
        forwarding(&lab),
        before_lb,
        "lb detach restores the forwarding sysctls"
    );
}
