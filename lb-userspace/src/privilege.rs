//! The capabilities `lb` needs, checked before it starts, and shed once the data plane is attached.
//! The lists here are the single source of truth: the README and `packaging/lb.service` name the
//! same sets, and a test compares the unit file with them.
//!
//! Measured on Linux 6.18 (README, "Privileges and the systemd unit"): loading the XDP program
//! needs CAP_BPF (map creation), CAP_NET_ADMIN (XDP program type, attach, the interface's forwarding
//! sysctl, neighbour entries) and CAP_PERFMON (without it the verifier keeps the pointer
//! restrictions of unprivileged programs and rejects the balancer). Locked memory is charged to the memory cgroup, so CAP_SYS_RESOURCE is not
//! needed; the pin, status and state directories only need to be writable.

use crate::log_values::List;
use std::io;

/// One Linux capability: its name as the kernel, `setpriv` and systemd spell it, and its number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Capability {
    pub name: &'static str,
    pub number: u32,
}

pub const CAP_NET_ADMIN: Capability = Capability {
    name: "CAP_NET_ADMIN",
    number: 12,
};
pub const CAP_SETPCAP: Capability = Capability {
    name: "CAP_SETPCAP",
    number: 8,
};
pub const CAP_PERFMON: Capability = Capability {
    name: "CAP_PERFMON",
    number: 38,
};
pub const CAP_BPF: Capability = Capability {
    name: "CAP_BPF",
    number: 39,
};

/// What loading and attaching the data plane needs (`lb run`, `lb decap`).
pub const LOAD_REQUIRED: &[Capability] = &[CAP_NET_ADMIN, CAP_PERFMON, CAP_BPF];

/// What `lb run` keeps once attached: the follow loop writes neighbour entries of the backends' next
/// hops (over netlink, from the `lb-nexthop` thread started after the shed; it stays ambient too). Map writes go through file descriptors opened at load,
/// which need no capability; the metrics listener binds after attach, so a port below 1024 would
/// need CAP_NET_BIND_SERVICE (the default, 9464, does not).
pub const RUN_KEPT: &[Capability] = &[CAP_NET_ADMIN];

/// Why a command refused to start: the capabilities it lacks, and how to grant them.
#[derive(Debug, thiserror::Error)]
#[error(
    "{what} lacks {missing}, which it needs to load and attach XDP programs; run it as root \
     (`sudo`), or grant {all} (systemd: `AmbientCapabilities=` as in packaging/lb.service; a \
     binary: `setcap {setcap}=ep /usr/local/bin/lb`)",
    missing = names(missing),
    all = names(required),
    setcap = setcap_list(required)
)]
pub struct MissingCapabilities {
    /// The command or step (`lb run`, `loading the data plane`).
    pub what: &'static str,
    pub missing: Vec<Capability>,
    pub required: &'static [Capability],
}

fn names(caps: &[Capability]) -> String {
    caps.iter().map(|c| c.name).collect::<Vec<_>>().join(", ")
}

fn setcap_list(caps: &[Capability]) -> String {
    caps.iter()
        .map(|c| c.name.to_lowercase())
        .collect::<Vec<_>>()
        .join(",")
}

/// Checks that every capability of `required` is in the effective set.
pub fn require(
    what: &'static str,
    required: &'static [Capability],
) -> Result<(), MissingCapabilities> {
    // An unreadable set counts as empty: the error then names everything.
    let effective = CapSets::current().map(|s| s.effective).unwrap_or(0);
    let missing: Vec<Capability> = required
        .iter()
        .copied()
        .filter(|c| effective & bit(*c) == 0)
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(MissingCapabilities {
            what,
            missing,
            required,
        })
    }
}

fn bit(c: Capability) -> u64 {
    1 << c.number
}

fn mask(caps: &[Capability]) -> u64 {
    caps.iter().fold(0, |m, c| m | bit(*c))
}

/// The calling thread's effective, permitted and inheritable sets (bit n = capability n).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct CapSets {
    effective: u64,
    permitted: u64,
    inheritable: u64,
}

// The kernel's `struct __user_cap_header_struct` / `__user_cap_data_struct` (version 3: two words).
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

impl CapSets {
    fn current() -> io::Result<Self> {
        let mut header = CapHeader {
            version: LINUX_CAPABILITY_VERSION_3,
            pid: 0,
        };
        let mut data = [CapData::default(); 2];
        // SAFETY: header and two data words as capget(2) version 3 expects; both outlive the call.
        let r = unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        let join = |lo: u32, hi: u32| u64::from(lo) | (u64::from(hi) << 32);
        Ok(Self {
            effective: join(data[0].effective, data[1].effective),
            permitted: join(data[0].permitted, data[1].permitted),
            inheritable: join(data[0].inheritable, data[1].inheritable),
        })
    }

    fn set(self) -> io::Result<()> {
        let mut header = CapHeader {
            version: LINUX_CAPABILITY_VERSION_3,
            pid: 0,
        };
        // Truncation is the point: the low and the high word of each set.
        #[allow(clippy::cast_possible_truncation)]
        let word = |s: u64, i: u32| (s >> (32 * i)) as u32;
        let data = [0, 1].map(|i| CapData {
            effective: word(self.effective, i),
            permitted: word(self.permitted, i),
            inheritable: word(self.inheritable, i),
        });
        // SAFETY: as in `current`; capset(2) only reads the data.
        let r = unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// What [`keep_only`] did.
#[derive(Debug, PartialEq, Eq)]
pub struct Shed {
    /// Capabilities that were permitted and no longer are.
    pub dropped: Vec<String>,
    /// Kept capabilities that were permitted (and stay effective, permitted, inheritable, ambient).
    pub kept: Vec<&'static str>,
    /// Whether the bounding set was cut down to `kept` too (needs CAP_SETPCAP, which root has;
    /// without it, as under the systemd unit, it stays as started). Either way no_new_privs is set,
    /// so no exec (of `ip`, say, even by uid 0) gains more than `kept` again.
    pub bounding_reduced: bool,
}

/// Drops every capability but `kept` from the calling thread's effective, permitted, inheritable,
/// ambient and (with CAP_SETPCAP) bounding sets, and sets no_new_privs. Threads started later
/// inherit the result. Call it while the process has no other thread holding capabilities that
/// matter.
pub fn keep_only(kept: &'static [Capability]) -> io::Result<Shed> {
    let before = CapSets::current()?;
    let keep = mask(kept) & before.permitted;
    let last = last_cap();
    let mut bounding_reduced = false;
    if before.effective & bit(CAP_SETPCAP) != 0 {
        for n in 0..=last {
            if keep & (1 << n) == 0 {
                // SAFETY: prctl with integer arguments only.
                let r =
                    unsafe { libc::prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(n), 0, 0, 0) };
                if r != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
        }
        bounding_reduced = true;
    }
    CapSets {
        effective: keep,
        permitted: keep,
        inheritable: keep,
    }
    .set()?;
    // Ambient capabilities must be permitted and inheritable; the kernel lowered the others already.
    for c in kept.iter().filter(|c| keep & bit(**c) != 0) {
        // SAFETY: prctl with integer arguments only.
        let r = unsafe {
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong,
                libc::c_ulong::from(c.number),
                0,
                0,
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let dropped = (0..=last)
        .filter(|n| before.permitted & !keep & (1 << n) != 0)
        .map(cap_name)
        .collect();
    let kept = kept
        .iter()
        .filter(|c| keep & bit(**c) != 0)
        .map(|c| c.name)
        .collect();
    Ok(Shed {
        dropped,
        kept,
        bounding_reduced,
    })
}

/// `lb run` once attached: keeps [`RUN_KEPT`] and logs what it kept and dropped. A failure is
/// logged, not fatal: the daemon forwards as well with its start-up capabilities.
pub fn shed_after_attach() {
    match keep_only(RUN_KEPT) {
        Ok(shed) => tracing::info!(
            kept = %List(&shed.kept),
            dropped = %List(&shed.dropped),
            bounding_set_reduced = shed.bounding_reduced,
            "attached; dropped the capabilities the daemon no longer needs"
        ),
        Err(e) => tracing::warn!("could not drop capabilities after attach: {e}"),
    }
}

fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
        .min(63)
}

/// The kernel's capability names by number (`include/uapi/linux/capability.h`), for the log line.
const NAMES: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

fn cap_name(n: u32) -> String {
    usize::try_from(n)
        .ok()
        .and_then(|i| NAMES.get(i))
        .map_or_else(|| format!("cap {n}"), |name| (*name).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_error_names_the_missing_capabilities_and_how_to_grant_them() {
        let err = MissingCapabilities {
            what: "lb run",
            missing: vec![CAP_PERFMON],
            required: LOAD_REQUIRED,
        }
        .to_string();
        assert!(err.starts_with("lb run lacks CAP_PERFMON, which"), "{err}");
        assert!(
            err.contains("grant CAP_NET_ADMIN, CAP_PERFMON, CAP_BPF"),
            "{err}"
        );
        assert!(
            err.contains("setcap cap_net_admin,cap_perfmon,cap_bpf=ep"),
            "{err}"
        );
    }

    #[test]
    fn the_check_reads_this_process_s_effective_set() {
        let effective = CapSets::current().unwrap().effective;
        let has_all = effective & mask(LOAD_REQUIRED) == mask(LOAD_REQUIRED);
        assert_eq!(require("lb run", LOAD_REQUIRED).is_ok(), has_all);
        if !has_all {
            let err = require("lb run", LOAD_REQUIRED).unwrap_err();
            assert!(!err.missing.is_empty());
        }
    }

    #[test]
    fn the_constants_match_the_kernel_s_numbers() {
        for c in [CAP_SETPCAP, CAP_NET_ADMIN, CAP_PERFMON, CAP_BPF] {
            assert_eq!(cap_name(c.number), c.name);
        }
    }

    #[test]
    fn kept_capabilities_are_required_ones() {
        assert!(RUN_KEPT.iter().all(|c| LOAD_REQUIRED.contains(c)));
    }

    #[test]
    fn keep_only_sheds_the_rest_in_a_thread_of_its_own() {
        // Capabilities are per thread: the test's thread ends with the reduced sets.
        std::thread::spawn(|| {
            let before = CapSets::current().unwrap();
            let shed = keep_only(RUN_KEPT).unwrap();
            let after = CapSets::current().unwrap();
            let keep = mask(RUN_KEPT) & before.permitted;
            assert_eq!(after.effective, keep);
            assert_eq!(after.permitted, keep);
            assert_eq!(
                shed.dropped.len(),
                usize::try_from((before.permitted & !keep).count_ones()).unwrap()
            );
        })
        .join()
        .unwrap();
    }

    /// The unit shipped in `packaging/`, read at build time.
    const UNIT: &str = include_str!("../../packaging/lb.service");
    /// Its drop-in for announcing through BIRD.
    const BIRD_DROP_IN: &str = include_str!("../../packaging/lb-bird.conf");

    fn unit_values(key: &str) -> Vec<String> {
        let prefix = format!("{key}=");
        let mut caps: Vec<String> = UNIT
            .lines()
            .filter_map(|l| l.trim().strip_prefix(prefix.as_str()))
            .flat_map(|v| v.split_whitespace().map(str::to_string))
            .collect();
        caps.sort();
        caps
    }

    #[test]
    fn the_systemd_unit_grants_exactly_the_required_capabilities() {
        let mut required: Vec<String> = LOAD_REQUIRED.iter().map(|c| c.name.to_string()).collect();
        required.sort();
        assert_eq!(unit_values("AmbientCapabilities"), required);
        assert_eq!(unit_values("CapabilityBoundingSet"), required);
        assert_eq!(unit_values("NoNewPrivileges"), ["yes"]);
        assert_eq!(unit_values("Restart"), ["always"]);
    }

    #[test]
    fn systemd_analyze_verifies_the_unit() {
        let Ok(out) = std::process::Command::new("systemd-analyze")
            .arg("--version")
            .output()
        else {
            eprintln!("no systemd-analyze here (`cargo xtask setup` installs it); skipped");
            return;
        };
        assert!(out.status.success());
        // verify checks that ExecStart's binary exists: point it at this test binary.
        let exe = std::env::current_exe().unwrap();
        let dir = std::env::temp_dir().join(format!("lb-unit-verify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let unit = dir.join("lb.service");
        // With the BIRD drop-in's settings after the unit's, as systemd reads a drop-in.
        let text = format!("{UNIT}\n{BIRD_DROP_IN}").replace("/usr/bin/lb", &exe.to_string_lossy());
        assert_ne!(text, format!("{UNIT}\n{BIRD_DROP_IN}"));
        std::fs::write(&unit, text).unwrap();
        let out = std::process::Command::new("systemd-analyze")
            .arg("verify")
            .arg(&unit)
            .output()
            .unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "systemd-analyze verify: {stderr}");
        assert!(
            !stderr.contains("lb.service"),
            "systemd-analyze verify warns about the unit: {stderr}"
        );
    }
}
