//! Names of the maps and programs (kernel names are at most 15 characters). Map files are pinned
//! under the pin directory with these names.

pub const SERVICES: &str = "LB_SERVICES";
/// The addresses of the VIPs (`VipAddrKey` → 1), written alongside `LB_SERVICES`.
pub const VIP_ADDRS: &str = "LB_VIP_ADDRS";
/// A bitmap of the VIP addresses' hashes (`service::vip_filter_bit`), checked before any lookup.
pub const VIP_FILTER: &str = "LB_VIP_FILTER";
/// A direct-mapped copy of `LB_SERVICES` (`service::VipSlot`), read before it.
pub const VIP_TABLE: &str = "LB_VIP_TABLE";
pub const SERVICE_META: &str = "LB_SVC_META";
pub const BACKENDS: &str = "LB_BACKENDS";
pub const SCHEDULE: &str = "LB_SCHEDULE";
pub const FLOWS: &str = "LB_FLOWS";
pub const PERSIST: &str = "LB_PERSIST";
pub const BACKEND_CONNS: &str = "LB_BE_CONNS";
pub const CURSORS: &str = "LB_CURSORS";
pub const STATS: &str = "LB_STATS";
pub const SERVICE_STATS: &str = "LB_SVC_STATS";
/// Per CPU as a plain array: CPU c's slots start at c × [`BACKEND_STATS_STRIDE`].
pub const BACKEND_STATS: &str = "LB_BE_STATS";
/// The program's global holding `LB_BE_STATS`'s slots per CPU (the maps' max backends).
pub const BACKEND_STATS_STRIDE: &str = "LB_BE_STATS_STRIDE";
pub const CONFIG: &str = "LB_CONFIG";
pub const DECAP_ADDRS: &str = "LB_DECAP_ADDRS";
pub const DECAP_STATS: &str = "LB_DECAP_STATS";
pub const DECAP_ALLOW: &str = "LB_DECAP_ALLOW";
/// Per-CPU cache of `bpf_fib_lookup` results by backend id (kernel-internal; sized like
/// `LB_BACKENDS`, never pinned).
pub const NEXTHOP_CACHE: &str = "LB_NH_CACHE";
/// Per-CPU state of the new-flow guard (not pinned: a restart starts a fresh window).
pub const GUARD: &str = "LB_GUARD";

/// Per-CPU budget of the ICMP too-big messages the balancer sends (kernel-internal, never pinned).
pub const ICMP_RATE: &str = "LB_ICMP_RATE";

/// The balancer XDP program.
pub const PROG_BALANCER: &str = "lb_balancer";
/// The backend-side decapsulation XDP program.
pub const PROG_DECAP: &str = "lb_decap";

/// Default pin directory of `lb run` and `lb status`.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/lb";
