//! What can go wrong between the control plane and the eBPF side.

use std::{io, path::PathBuf};

use aya::{EbpfError, maps::MapError, programs::ProgramError};

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error(transparent)]
    MissingCapabilities(#[from] crate::privilege::MissingCapabilities),

    #[error(
        "{path} is not on a BPF filesystem, so maps cannot be pinned there; mount one with `mount -t bpf bpf /sys/fs/bpf`"
    )]
    BpffsNotMounted { path: PathBuf },

    #[error("pin directory {path}: {source}")]
    PinDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error(
        "{dir} holds only some of the maps of an earlier `lb run` ({missing:?} are missing), so it \
         cannot adopt them and nothing was changed. Drain this host, remove what is left with \
         `lb detach --iface IFACE --pin-dir {dir}`, then start `lb run` again"
    )]
    PinsIncomplete {
        dir: PathBuf,
        missing: Vec<&'static str>,
    },

    #[error(
        "the maps pinned in {dir} have layout version {found}, this `lb` is built for version \
         {expected}: it cannot adopt them, and nothing was changed. Drain this host (take it out \
         of the route to the VIPs), remove the old balancer with `lb detach --iface IFACE \
         --pin-dir {dir}`, then start `lb run` again"
    )]
    LayoutMismatch {
        dir: PathBuf,
        found: String,
        expected: u32,
    },

    #[error(
        "the maps pinned in {dir} have layout version {found}, this `lb` reads version \
         {expected}: run the `lb` of the daemon that pinned them (`lb version` prints a binary's \
         layout), or restart that daemon with this build after `lb detach`"
    )]
    OtherLayout {
        dir: PathBuf,
        found: u32,
        expected: u32,
    },

    #[error("pinning the XDP link on {iface} at {path} failed: {reason}")]
    PinLink {
        iface: String,
        path: PathBuf,
        reason: String,
    },

    #[error(
        "replacing the program of the XDP link pinned for {iface} at {path} failed: {reason}; the \
         program it runs keeps forwarding. If the link is broken, drain this host and \
         `lb detach --iface {iface}`"
    )]
    ReplaceLink {
        iface: String,
        path: PathBuf,
        reason: String,
    },

    #[error(
        "no balancer is pinned at {dir}: no `lb run` is running or has run with this --pin-dir \
         (or it was detached): is `lb run` running, with the same --pin-dir?"
    )]
    NoPinDir { dir: PathBuf },

    #[error(
        "map {map} is not pinned at {path} (is `lb run` running, with the same --pin-dir?): {source}"
    )]
    NotPinned {
        map: &'static str,
        path: PathBuf,
        #[source]
        source: MapError,
    },

    #[error(
        "creating the maps of the eBPF object failed (too large a capacity for this host's memory?): {source}"
    )]
    Object {
        #[source]
        source: EbpfError,
    },

    /// The kernel rejected a program; the message carries the verifier log in full.
    #[error("the kernel rejected XDP program {program}: {source}")]
    Load {
        program: &'static str,
        #[source]
        source: ProgramError,
    },

    #[error(
        "the eBPF object has no XDP program named {program}; the embedded object is out of date, rebuild `lb`"
    )]
    MissingProgram { program: &'static str },

    #[error(
        "map {map} is missing or has the wrong type in the eBPF object; rebuild `lb`: {source}"
    )]
    MissingMap {
        map: &'static str,
        #[source]
        source: MapError,
    },

    #[error(transparent)]
    NoSuchInterface(#[from] crate::netif::NoSuchInterface),

    #[error(
        "{iface} already runs an XDP program that is not pinned in this pin dir (another `lb run`'s \
         with a different --pin-dir, or another tool's); it was left as it is. To take over an \
         earlier `lb run`'s balancer start with its --pin-dir (it is adopted), or remove it first \
         with `lb detach --iface {iface} --pin-dir ITS_DIR`"
    )]
    IfaceBusy { iface: String },

    #[error("attaching XDP to {iface} failed: {source}")]
    Attach {
        iface: String,
        #[source]
        source: ProgramError,
    },

    #[error(
        "enabling forwarding on {iface} ({path}) failed: {source}; the balancer cannot route without it"
    )]
    Forwarding {
        iface: String,
        path: String,
        #[source]
        source: io::Error,
    },

    #[error("{op} on map {map} failed: {source}")]
    Map {
        map: &'static str,
        op: &'static str,
        #[source]
        source: MapError,
    },

    #[error(
        "{map}: index {index} + {len} entries is past its end ({capacity} entries); raise the capacity or fix the caller"
    )]
    OutOfRange {
        map: &'static str,
        index: u64,
        len: u64,
        capacity: u64,
    },

    #[error("starting the program's clock thread failed: {0} (too many threads? check ulimit -u)")]
    ClockThread(#[source] io::Error),

    #[error("mapping {map} into memory failed: {source}")]
    Mmap {
        map: &'static str,
        #[source]
        source: io::Error,
    },

    #[error("cannot tell the CPUs the per-CPU maps hold ({what}): {source}")]
    Cpus {
        what: String,
        #[source]
        source: io::Error,
    },

    #[error("invalid capacity: {0}")]
    Capacity(&'static str),

    #[error(
        "{map} holds {entries} elements, not its {per_cpu} backend slots for each of the {cpus} \
         possible CPUs: the maps are not this layout's; drain this host, `lb detach`, then start \
         `lb run` again"
    )]
    PerCpuShape {
        map: &'static str,
        entries: u32,
        per_cpu: u32,
        cpus: u32,
    },

    #[error("forwarding kernel logs failed: {0}")]
    KernelLog(String),

    #[error("{what} panicked (a bug: please report it with the log); nothing was attached")]
    Panicked { what: &'static str },
}

/// Builds the `map_err` closure of a map operation.
pub(crate) fn map_op(
    map: &'static str,
    op: &'static str,
) -> impl FnOnce(MapError) -> DataplaneError {
    move |source| DataplaneError::Map { map, op, source }
}
