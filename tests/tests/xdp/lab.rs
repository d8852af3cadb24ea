//! A private network namespace for the balancer fixtures: `bpf_fib_lookup` inside
//! `BPF_PROG_TEST_RUN` routes in the namespace of the calling thread, so each test runs on a thread
//! of its own that unshares its network namespace and gets a veth pair with routes toward the
//! backends through a permanent neighbour.
//!
//! The namespace is anonymous: it (with its interfaces) disappears when the thread ends, even if
//! the test panics or the process is killed, so there is nothing to clean up and nothing to leak.

use std::{
    ffi::CString,
    fs::File,
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    process::Command,
};

/// MAC of the interface the balancer "receives" on (lbt0).
pub const LB_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x03, 0x02];
/// MAC of the next hop toward the backends.
pub const NEXT_HOP_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x03, 0x01];
const IFACE: &str = "lbt0";

/// What a test needs to know about its namespace.
pub struct Lab {
    pub ifindex: u32,
    ns: File,
}

impl Lab {
    /// Runs `ip` in the lab's namespace; returns its output.
    pub fn ip(&self, args: &[&str]) -> String {
        ip(&self.ns, args)
    }
}

/// Runs `ip` inside the namespace `ns` (the child process joins it before exec); returns stdout.
fn ip(ns: &File, args: &[&str]) -> String {
    let fd = ns.as_raw_fd();
    let mut cmd = Command::new("ip");
    cmd.args(args);
    // SAFETY: setns is async-signal-safe; `fd` stays open until the child has exec'd.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = cmd.output().expect("run ip (iproute2)");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn mac_string(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The lab: `lbt0` is the balancer's interface (next hop 198.18.3.1 / 2001:db8:3::1 toward the
/// backends in 198.18.2.0/24 and 2001:db8:2::/64); `lbt2` leads to backends in 198.18.5.0/24
/// (next hop 198.18.4.1), so packets to them are redirected.
const SETUP: &[&str] = &[
    "link add lbt0 address {LB_MAC} type veth peer name lbt1",
    "link set lbt0 up",
    "link set lbt1 up",
    "addr add 198.18.3.2/24 dev lbt0",
    "-6 addr add 2001:db8:3::2/64 dev lbt0 nodad",
    "neigh add 198.18.3.1 lladdr {HOP_MAC} dev lbt0 nud permanent",
    "-6 neigh add 2001:db8:3::1 lladdr {HOP_MAC} dev lbt0 nud permanent",
    "route add 198.18.2.0/24 via 198.18.3.1 dev lbt0",
    "-6 route add 2001:db8:2::/64 via 2001:db8:3::1 dev lbt0",
    "link add lbt2 type veth peer name lbt3",
    "link set lbt2 up",
    "link set lbt3 up",
    "addr add 198.18.4.2/24 dev lbt2",
    "neigh add 198.18.4.1 lladdr {HOP_MAC} dev lbt2 nud permanent",
    "route add 198.18.5.0/24 via 198.18.4.1 dev lbt2",
];

/// Gives the calling thread a new network namespace with the lab in it, and pins the thread to
/// one CPU (per-CPU round-robin cursors must not change between runs).
fn build() -> Lab {
    // SAFETY: only this thread changes namespace (a thread may, unlike CLONE_NEWNS).
    let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
    assert_eq!(
        rc,
        0,
        "unshare(CLONE_NEWNET): {}",
        std::io::Error::last_os_error()
    );
    let ns = File::open("/proc/thread-self/ns/net").expect("open our namespace");
    for line in SETUP {
        let line = line
            .replace("{LB_MAC}", &mac_string(&LB_MAC))
            .replace("{HOP_MAC}", &mac_string(&NEXT_HOP_MAC));
        ip(&ns, &line.split_whitespace().collect::<Vec<_>>());
    }
    // The LB forwards: bpf_fib_lookup refuses to route for an interface without forwarding.
    for path in [
        "/proc/sys/net/ipv4/conf/lbt0/forwarding",
        "/proc/sys/net/ipv6/conf/lbt0/forwarding",
    ] {
        std::fs::write(path, "1").unwrap_or_else(|e| panic!("{path}: {e}"));
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
    Lab { ifindex, ns }
}

/// Runs `f` on a fresh thread inside a fresh namespace, which ends with the thread.
pub fn with_lab<R: Send>(f: impl FnOnce(&Lab) -> R + Send) -> R {
    match std::thread::scope(|s| s.spawn(|| f(&build())).join()) {
        Ok(r) => r,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}
