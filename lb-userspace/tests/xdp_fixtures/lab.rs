//! A private network namespace for the balancer fixtures: `bpf_fib_lookup` inside
//! `BPF_PROG_TEST_RUN` routes in the namespace of the calling thread, so each test gets a veth pair
//! with routes toward the backends through a permanent neighbour. Everything is removed on drop.

use std::{
    ffi::CString,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

/// MAC of the interface the balancer "receives" on (lbt0).
pub const LB_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x03, 0x02];
/// MAC of the next hop toward the backends.
pub const NEXT_HOP_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x03, 0x01];
const IFACE: &str = "lbt0";

/// What a test needs to know about its namespace.
pub struct Lab {
    pub ifindex: u32,
}

/// An `ip netns` namespace this process created; deleted on drop.
struct Netns {
    name: String,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("run ip (iproute2)");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Netns {
    fn create() -> Netns {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "lbfx-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        ip(&["netns", "add", &name]);
        let ns = Netns { name };
        let n = ns.name.as_str();
        let mac = mac_string(&LB_MAC);
        let hop = mac_string(&NEXT_HOP_MAC);
        ip(&[
            "-n", n, "link", "add", IFACE, "address", &mac, "type", "veth", "peer", "name", "lbt1",
        ]);
        ip(&["-n", n, "link", "set", IFACE, "up"]);
        ip(&["-n", n, "link", "set", "lbt1", "up"]);
        ip(&["-n", n, "addr", "add", "198.18.3.2/24", "dev", IFACE]);
        ip(&[
            "-n",
            n,
            "-6",
            "addr",
            "add",
            "2001:db8:3::2/64",
            "dev",
            IFACE,
            "nodad",
        ]);
        ip(&[
            "-n",
            n,
            "neigh",
            "add",
            "198.18.3.1",
            "lladdr",
            &hop,
            "dev",
            IFACE,
            "nud",
            "permanent",
        ]);
        ip(&[
            "-n",
            n,
            "-6",
            "neigh",
            "add",
            "2001:db8:3::1",
            "lladdr",
            &hop,
            "dev",
            IFACE,
            "nud",
            "permanent",
        ]);
        ip(&[
            "-n",
            n,
            "route",
            "add",
            "198.18.2.0/24",
            "via",
            "198.18.3.1",
            "dev",
            IFACE,
        ]);
        ip(&[
            "-n",
            n,
            "-6",
            "route",
            "add",
            "2001:db8:2::/64",
            "via",
            "2001:db8:3::1",
            "dev",
            IFACE,
        ]);
        ns
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn mac_string(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Moves the calling thread into the namespace and onto one CPU (per-CPU round-robin cursors must
/// not change between runs).
fn enter(ns: &Netns) -> Lab {
    let path = format!("/run/netns/{}", ns.name);
    let file = std::fs::File::open(&path).expect("open the namespace file");
    use std::os::fd::AsRawFd as _;
    // SAFETY: a valid namespace fd; only this thread changes namespace.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
    // The LB forwards: bpf_fib_lookup refuses to route for an interface without forwarding.
    for (path, value) in [
        ("/proc/sys/net/ipv4/conf/all/forwarding", "1"),
        ("/proc/sys/net/ipv4/conf/lbt0/forwarding", "1"),
        ("/proc/sys/net/ipv6/conf/all/forwarding", "1"),
    ] {
        std::fs::write(path, value).unwrap_or_else(|e| panic!("{path}: {e}"));
    }
    // SAFETY: plain libc calls on a zeroed cpu_set_t.
    unsafe {
        let cpu = libc::sched_getcpu().max(0) as usize;
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
    }
    let c = CString::new(IFACE).expect("interface name");
    // SAFETY: valid C string.
    let ifindex = unsafe { libc::if_nametoindex(c.as_ptr()) };
    assert_ne!(ifindex, 0, "{IFACE} exists in the namespace");
    Lab { ifindex }
}

/// Runs `f` on a fresh thread inside a fresh namespace; the namespace is deleted afterwards, also
/// when `f` panics.
pub fn with_lab<R: Send>(f: impl FnOnce(&Lab) -> R + Send) -> R {
    let ns = Netns::create();
    let result = std::thread::scope(|s| s.spawn(|| f(&enter(&ns))).join());
    drop(ns);
    match result {
        Ok(r) => r,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}
