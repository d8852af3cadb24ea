//! The only module that touches eBPF: loads the XDP object, attaches its programs, and reads and
//! writes its maps. Everything above it speaks in `lb_common` types.

mod batch;
mod clock;
mod error;
mod flow_table;
mod forwarding;
mod kernel_log;
mod map_writer;
mod mapped_array;
mod mmap;
mod pins;
mod schedule;
mod view;

use std::{io, path::PathBuf};

use aya::{
    Ebpf, EbpfLoader,
    maps::MapError,
    programs::{
        Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        xdp::{XdpLink, XdpLinkId},
    },
};
use lb_common::{
    BackendEntry, DecapKey, LbConfig, ServiceEntry, ServiceMeta, VipAddrKey, VipKey, VipSlot,
    flow::flow_buckets,
    layout::LAYOUT_VERSION,
    limits::Capacity,
    maps::{self, PROG_BALANCER, PROG_DECAP},
    service::{vip_filter_bit, vip_slot},
};

pub use clock::ProgramClock;
pub use error::DataplaneError;
pub use forwarding::{record_path as sysctl_record_path, restore as restore_sysctls};
pub use map_writer::MapWriter;
pub use pins::{
    ExistingPins, link_path, pinned_layout_version, pinned_links, remove as remove_pins,
};
pub use view::{BackendSlot, MapsView};

use error::map_op;
use kernel_log::KernelLog;

/// The XDP object built from `lb-ebpf` by the build script.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-ebpf"));

/// How to load the data plane.
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    /// Map sizes.
    pub capacity: Capacity,
    /// Pin every map here (on bpffs) so `lb status` can read them; `None` pins nothing (tests).
    pub pin_dir: Option<PathBuf>,
    /// Forward the programs' debug logs into `log`/tracing (costs a ring buffer write per record).
    pub kernel_log: bool,
    /// What to do with our pins already in `pin_dir`.
    pub existing_pins: ExistingPins,
}

/// How to attach an XDP program.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AttachMode {
    /// Native (driver) mode, falling back to generic mode with a warning.
    #[default]
    Auto,
    Native,
    Generic,
}

/// The mode an attachment ended up in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachedMode {
    Native,
    Generic,
    /// The interface already had our program through a pinned link: the link now runs this one
    /// (`bpf_link_update`: one atomic swap, no packet without a program), in the link's mode.
    Replaced {
        old_prog_id: u32,
        new_prog_id: u32,
    },
}

/// The loaded data plane. Dropping it detaches the programs, except the balancer when its link is
/// pinned (see [`Dataplane::attach_balancer`]); pins stay until [`Dataplane::remove_pins`].
pub struct Dataplane {
    // Held for its `Drop` (stops the reader thread); dropped first, before the programs go.
    _kernel_log: Option<KernelLog>,
    maps: MapsView,
    ebpf: Ebpf,
    pin_dir: Option<PathBuf>,
    /// The maps are an earlier run's, adopted from the pins.
    adopted: bool,
    /// Keeps `LbConfig::now_ns` while the daemon runs ([`Dataplane::start_clock`]).
    clock: Option<ProgramClock>,
}

impl Dataplane {
    /// Loads both programs into the kernel on the maps pinned in `opts.pin_dir` when an earlier run
    /// left them there (adopted, whatever `opts.capacity` says: see [`Dataplane::adopted`]), else on
    /// new maps of `opts.capacity`, pinned there.
    pub fn load(opts: &LoadOptions) -> Result<Self, DataplaneError> {
        let cap = opts.capacity;
        cap.validate().map_err(DataplaneError::Capacity)?;
        crate::privilege::require("loading the data plane", crate::privilege::LOAD_REQUIRED)?;
        let adopted = match &opts.pin_dir {
            Some(dir) => pins::prepare(dir, opts.existing_pins)?,
            None => false,
        };

        // Backend slots per CPU in LB_BE_STATS: the pinned maps' when they are adopted.
        let stats_stride = match (&opts.pin_dir, adopted) {
            (Some(dir), true) => pins::pinned_max_entries(dir, maps::BACKENDS)?,
            _ => cap.max_backends,
        };
        let stats_entries = backend_stats_entries(stats_stride)?;
        let log_level = if opts.kernel_log {
            kernel_log::LEVEL_DEBUG
        } else {
            kernel_log::LEVEL_OFF
        };
        let mut loader = EbpfLoader::new();
        loader
            .map_max_entries(maps::SERVICES, cap.max_services)
            .map_max_entries(maps::VIP_ADDRS, cap.max_services)
            .map_max_entries(maps::SERVICE_META, cap.max_services)
            .map_max_entries(maps::BACKENDS, cap.max_backends)
            .map_max_entries(maps::SCHEDULE, cap.schedule_map_entries())
            .map_max_entries(maps::FLOWS, flow_buckets(cap.flow_table_size))
            .map_max_entries(maps::PERSIST, cap.persist_table_size)
            .map_max_entries(maps::BACKEND_CONNS, cap.max_backends)
            .map_max_entries(maps::CURSORS, cap.max_services)
            .map_max_entries(maps::SERVICE_STATS, cap.max_services)
            .map_max_entries(maps::BACKEND_STATS, stats_entries)
            .map_max_entries(maps::NEXTHOP_CACHE, cap.max_backends)
            .override_global("AYA_LOG_LEVEL", &log_level, false)
            .override_global(maps::BACKEND_STATS_STRIDE, &stats_stride, true);
        let pin_paths: Vec<(&str, PathBuf)> = match &opts.pin_dir {
            Some(dir) => pins::PINNED_MAPS
                .iter()
                .map(|name| (*name, dir.join(name)))
                .collect(),
            None => Vec::new(),
        };
        // Each map is opened from its pin when one exists, else created and pinned there.
        for (name, path) in &pin_paths {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader
            .load(EBPF_OBJECT)
            .map_err(|source| DataplaneError::Object { source })?;

        for program in [PROG_BALANCER, PROG_DECAP] {
            xdp_program(&mut ebpf, program)?
                .load()
                .map_err(|source| DataplaneError::Load { program, source })?;
        }
        let kernel_log = if opts.kernel_log {
            Some(KernelLog::start(&mut ebpf)?)
        } else {
            None
        };
        let maps = MapsView::from_source(
            |name| ebpf.take_map(name).ok_or_else(|| missing_map(name)),
            view::Access::ReadWrite,
        )?;
        let mut dp = Dataplane {
            _kernel_log: kernel_log,
            maps,
            ebpf,
            pin_dir: opts.pin_dir.clone(),
            adopted,
            clock: None,
        };
        if adopted {
            let pinned = dp.maps.capacity();
            if pinned != cap.as_built() {
                tracing::warn!(
                    ?pinned,
                    requested = ?cap,
                    "the pinned maps were created with another capacity; they are adopted as they are \
                     (a new capacity takes effect after `lb detach` and a fresh start)"
                );
            }
        } else {
            // Stamps the layout version into the fresh maps (a later start-up checks it). Adopted
            // maps keep their configuration: the program forwarding with them reads it.
            dp.set_config(&LbConfig::default())?;
        }
        Ok(dp)
    }

    /// Whether the maps are an earlier run's, found pinned and adopted: the flow table, persistence
    /// entries and connection counters are the ones the program forwarded with.
    pub fn adopted(&self) -> bool {
        self.adopted
    }

    /// Attaches the balancer to `iface`, and turns on IPv4/IPv6 forwarding there (without it
    /// `bpf_fib_lookup` finds no route and every balanced packet is a `drop_no_route`). With a pin
    /// directory the link is pinned there ([`link_path`]): the program then keeps forwarding after
    /// this process ends, until the pin is removed.
    ///
    /// When the link of an earlier run is pinned there, this program replaces the one it runs
    /// ([`AttachedMode::Replaced`]) instead.
    pub fn attach_balancer(
        &mut self,
        iface: &str,
        mode: AttachMode,
    ) -> Result<AttachedMode, DataplaneError> {
        crate::netif::ifindex(iface)?;
        let record = self.pin_dir.as_deref().map(forwarding::record_path);
        forwarding::enable(iface, record.as_deref())?;
        if let Some(dir) = &self.pin_dir {
            let path = link_path(dir, iface);
            if path.exists() {
                return self.replace_pinned(iface, &path);
            }
        }
        let (attached, link) = self
            .attach(PROG_BALANCER, iface, mode)
            .map_err(|e| busy(e, iface))?;
        if let Some(dir) = &self.pin_dir {
            let path = link_path(dir, iface);
            let pin_err = |reason: String| DataplaneError::PinLink {
                iface: iface.to_string(),
                path: path.clone(),
                reason,
            };
            let xdp = xdp_program(&mut self.ebpf, PROG_BALANCER)?;
            let link = xdp.take_link(link).map_err(|e| pin_err(e.to_string()))?;
            let link = FdLink::try_from(link).map_err(|e| {
                pin_err(format!(
                    "{e} (the kernel attached through netlink, which has no link to pin; Linux >= 5.9 is needed)"
                ))
            })?;
            // Dropping the pinned link closes our descriptor; the pin keeps the program attached.
            drop(link.pin(&path).map_err(|e| pin_err(e.to_string()))?);
        }
        Ok(attached)
    }

    /// Swaps the balancer into the XDP link pinned at `path` (`bpf_link_update`).
    fn replace_pinned(
        &mut self,
        iface: &str,
        path: &std::path::Path,
    ) -> Result<AttachedMode, DataplaneError> {
        let err = |reason: String| DataplaneError::ReplaceLink {
            iface: iface.to_string(),
            path: path.to_path_buf(),
            reason,
        };
        let pinned = PinnedLink::from_pin(path).map_err(|e| err(e.to_string()))?;
        let fd_link = FdLink::from(pinned);
        let old_prog_id = fd_link
            .info()
            .map_err(|e| err(format!("reading the link: {e}")))?
            .program_id();
        let link = XdpLink::try_from(fd_link).map_err(|e| err(e.to_string()))?;
        let xdp = xdp_program(&mut self.ebpf, PROG_BALANCER)?;
        let new_prog_id = xdp
            .info()
            .map_err(|e| err(format!("reading the new program: {e}")))?
            .id();
        let id = xdp.attach_to_link(link).map_err(|e| err(e.to_string()))?;
        // Closing our descriptor leaves the program attached: the pin holds the link.
        let link = xdp.take_link(id).map_err(|e| err(e.to_string()))?;
        drop(FdLink::try_from(link).map_err(|e| err(e.to_string()))?);
        Ok(AttachedMode::Replaced {
            old_prog_id,
            new_prog_id,
        })
    }

    /// Attaches the decapsulator to `iface` (on a backend).
    pub fn attach_decap(
        &mut self,
        iface: &str,
        mode: AttachMode,
    ) -> Result<AttachedMode, DataplaneError> {
        self.attach(PROG_DECAP, iface, mode)
            .map(|(mode, _link)| mode)
    }

    fn attach(
        &mut self,
        program: &'static str,
        iface: &str,
        mode: AttachMode,
    ) -> Result<(AttachedMode, XdpLinkId), DataplaneError> {
        let if_index = crate::netif::ifindex(iface)?;
        let xdp = xdp_program(&mut self.ebpf, program)?;
        let attach = |xdp: &mut Xdp, m: XdpMode| {
            xdp.attach_to_if_index(if_index, m)
                .map_err(|source| DataplaneError::Attach {
                    iface: iface.to_string(),
                    source,
                })
        };
        match mode {
            AttachMode::Native => attach(xdp, XdpMode::Driver).map(|l| (AttachedMode::Native, l)),
            AttachMode::Generic => attach(xdp, XdpMode::Skb).map(|l| (AttachedMode::Generic, l)),
            AttachMode::Auto => match attach(xdp, XdpMode::Driver) {
                Ok(l) => Ok((AttachedMode::Native, l)),
                // Taken, not unsupported: generic mode would be refused too.
                Err(e) if is_busy(&e) => Err(e),
                Err(e) => {
                    tracing::warn!(
                        iface,
                        program,
                        error = %e,
                        "native XDP is not available on this interface; using generic XDP (slower)"
                    );
                    attach(xdp, XdpMode::Skb).map(|l| (AttachedMode::Generic, l))
                }
            },
        }
    }

    /// Writes the program configuration (outer source addresses, hash seed), stamped with this
    /// build's [`LAYOUT_VERSION`].
    /// The clock the program reads stays as it is (see [`Dataplane::start_clock`]).
    pub fn set_config(&mut self, cfg: &LbConfig) -> Result<(), DataplaneError> {
        let now_ns = self.maps.config()?.now_ns;
        let cfg = LbConfig {
            layout_version: LAYOUT_VERSION,
            flow_buckets: self.maps.flow_buckets(),
            now_ns,
            ..*cfg
        };
        self.maps
            .config
            .set(0, cfg, 0)
            .map_err(map_op(maps::CONFIG, "update"))
    }

    /// Starts the thread that keeps the program's coarse clock (`LbConfig::now_ns`) for as long as
    /// this value lives (dropping it stores 0: the program reads the kernel's clock again); see
    /// `clock`. Starting it twice keeps the first.
    pub fn start_clock(&mut self) -> Result<(), DataplaneError> {
        use aya::maps::IterableMap as _;
        use std::os::fd::AsFd as _;
        if self.clock.is_none() {
            self.clock = Some(ProgramClock::start(self.maps.config.map().fd().as_fd())?);
        }
        Ok(())
    }

    /// Stops the clock thread, if running; the program reads the kernel's clock again.
    pub fn stop_clock(&mut self) {
        self.clock = None;
    }

    /// When this process started the program's clock (`CLOCK_MONOTONIC_COARSE` ns; 0: not
    /// started). Before it, the time the program saw may have stood still (an earlier daemon
    /// killed with its clock running), so flow ages count from here at the earliest.
    pub fn clock_started_ns(&self) -> u64 {
        self.clock.as_ref().map_or(0, ProgramClock::started_ns)
    }

    /// Adds or replaces a service in one atomic map update. Its table must already be written.
    pub fn put_service(
        &mut self,
        key: &VipKey,
        entry: &ServiceEntry,
    ) -> Result<(), DataplaneError> {
        let cap = self.maps.capacity();
        if entry.id >= cap.max_services {
            return Err(DataplaneError::OutOfRange {
                map: maps::SERVICES,
                index: u64::from(entry.id),
                len: 1,
                capacity: u64::from(cap.max_services),
            });
        }
        let end = u64::from(entry.table_offset) + u64::from(entry.table_len);
        if end > u64::from(self.maps.schedule.entries()) {
            return Err(DataplaneError::OutOfRange {
                map: maps::SCHEDULE,
                index: u64::from(entry.table_offset),
                len: u64::from(entry.table_len),
                capacity: u64::from(self.maps.schedule.entries()),
            });
        }
        // The address first: from the service's first packet on, what it does not balance is
        // answered or dropped at the VIP address, never passed to the forwarding kernel.
        let addr = VipAddrKey::of(key);
        self.maps
            .vip_addrs
            .insert(addr, 1, 0)
            .map_err(map_op(maps::VIP_ADDRS, "update"))?;
        // Its filter bit before the service: no packet of it may pass as "no VIP".
        let (word, bit) = filter_position(&addr);
        let now = self.maps.vip_filter_word(word)?;
        if now & bit == 0 {
            self.set_vip_filter_word(word, now | bit)?;
        }
        self.maps
            .services
            .insert(key, entry, 0)
            .map_err(map_op(maps::SERVICES, "update"))?;
        // Then its copy in the direct-mapped table, unless another VIP holds the slot (this one is
        // then found in LB_SERVICES, as it is meanwhile).
        let slot = vip_slot(key);
        let held = self.maps.vip_slot(slot)?;
        if held.key.family == 0 || held.key == *key {
            self.write_vip_slot(slot, held, *key, *entry)?;
        }
        Ok(())
    }

    /// Replaces what VIP-table slot `slot` (now `held`) holds by `key` → `entry` in the three
    /// writes of `VipSlot`'s seqlock: `seq` made odd, the content, `seq` made even. The XDP
    /// program never uses a slot read across a change (it falls back to `LB_SERVICES`).
    fn write_vip_slot(
        &mut self,
        slot: u32,
        held: VipSlot,
        key: VipKey,
        entry: ServiceEntry,
    ) -> Result<(), DataplaneError> {
        // Odd already when a daemon stopped between two writes: readers fall back meanwhile.
        let odd = held.seq | 1;
        for value in [
            VipSlot { seq: odd, ..held },
            VipSlot {
                seq: odd,
                key,
                entry,
            },
            VipSlot {
                seq: odd.wrapping_add(1),
                key,
                entry,
            },
        ] {
            self.maps
                .vip_table
                .set(slot, value, 0)
                .map_err(map_op(maps::VIP_TABLE, "update"))?;
        }
        Ok(())
    }

    fn set_vip_filter_word(&mut self, word: u32, value: u64) -> Result<(), DataplaneError> {
        self.maps
            .vip_filter
            .set(word, value, 0)
            .map_err(map_op(maps::VIP_FILTER, "update"))
    }

    /// Recomputes a filter word from the addresses `LB_VIP_ADDRS` still holds (after one left:
    /// its bit may be another address's too).
    fn rebuild_vip_filter_word(&mut self, word: u32) -> Result<(), DataplaneError> {
        let mut value = 0u64;
        for addr in self.vip_addrs()? {
            let (w, bit) = filter_position(&addr);
            if w == word {
                value |= bit;
            }
        }
        if self.maps.vip_filter_word(word)? != value {
            self.set_vip_filter_word(word, value)?;
        }
        Ok(())
    }

    /// Removes a service, and its address from `LB_VIP_ADDRS` when no other service uses it.
    pub fn delete_service(&mut self, key: &VipKey) -> Result<(), DataplaneError> {
        // Its VIP-table slot first: no packet may find the service there once it is gone.
        let slot = vip_slot(key);
        let held = self.maps.vip_slot(slot)?;
        let in_slot = held.key == *key;
        if in_slot {
            self.write_vip_slot(slot, held, VipKey::default(), ServiceEntry::default())?;
        }
        self.maps
            .services
            .remove(key)
            .map_err(map_op(maps::SERVICES, "delete"))?;
        let addr = VipAddrKey::of(key);
        let mut shared = false;
        let mut heir = None;
        for k in self.maps.services.keys() {
            let k = k.map_err(map_op(maps::SERVICES, "iterate"))?;
            shared |= VipAddrKey::of(&k) == addr;
            if in_slot && heir.is_none() && vip_slot(&k) == slot {
                heir = Some(k);
            }
        }
        // A VIP that shares the freed slot moves in (it was found in LB_SERVICES until now).
        if let Some(k) = heir {
            let entry = self
                .maps
                .services
                .get(&k, 0)
                .map_err(map_op(maps::SERVICES, "lookup"))?;
            let held = self.maps.vip_slot(slot)?;
            self.write_vip_slot(slot, held, k, entry)?;
        }
        if shared {
            return Ok(());
        }
        match self.maps.vip_addrs.remove(&addr) {
            Ok(()) | Err(MapError::KeyNotFound) => {}
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => return Err(map_op(maps::VIP_ADDRS, "delete")(e)),
        }
        self.rebuild_vip_filter_word(filter_position(&addr).0)
    }

    /// The VIP addresses the data plane answers for (`LB_VIP_ADDRS`).
    pub fn vip_addrs(&self) -> Result<Vec<VipAddrKey>, DataplaneError> {
        self.maps
            .vip_addrs
            .keys()
            .map(|k| k.map_err(map_op(maps::VIP_ADDRS, "iterate")))
            .collect()
    }

    pub fn put_service_meta(&mut self, id: u32, meta: &ServiceMeta) -> Result<(), DataplaneError> {
        self.maps
            .service_meta
            .set(id, meta, 0)
            .map_err(map_op(maps::SERVICE_META, "update"))
    }

    pub fn put_backend(&mut self, id: u32, entry: &BackendEntry) -> Result<(), DataplaneError> {
        self.maps
            .backends
            .set(id, entry, 0)
            .map_err(map_op(maps::BACKENDS, "update"))
    }

    /// Writes many backend entries in a few syscalls (`BPF_MAP_UPDATE_BATCH`); on an error some
    /// of them may be written.
    pub fn put_backends(&mut self, entries: &[(u32, BackendEntry)]) -> Result<(), DataplaneError> {
        use aya::maps::IterableMap as _;
        use std::os::fd::AsFd as _;
        let len = self.maps.capacity().max_backends;
        if let Some((id, _)) = entries.iter().find(|(id, _)| *id >= len) {
            return Err(DataplaneError::OutOfRange {
                map: maps::BACKENDS,
                index: u64::from(*id),
                len: 1,
                capacity: u64::from(len),
            });
        }
        let ids: Vec<u32> = entries.iter().map(|(id, _)| *id).collect();
        let values: Vec<u8> = entries
            .iter()
            .flat_map(|(_, entry)| bytemuck::bytes_of(entry).iter().copied())
            .collect();
        batch::update_array(
            self.maps.backends.map().fd().as_fd(),
            &ids,
            &values,
            std::mem::size_of::<BackendEntry>(),
        )
        .map_err(map_op(maps::BACKENDS, "batch update"))
    }

    /// Writes backend ids into the schedule pool at `offset` (one memory copy).
    pub fn write_table(&mut self, offset: u32, ids: &[u32]) -> Result<(), DataplaneError> {
        self.maps.schedule.write(offset, ids)
    }

    /// Overwrites a backend's active-connection count (the sweeper's correction). A packet counted
    /// by the XDP program at the same instant may be lost; the next sweep corrects it.
    pub fn set_backend_conns(&mut self, id: u32, conns: u64) -> Result<(), DataplaneError> {
        self.maps.set_backend_conns(id, conns)
    }

    /// Zeroes the traffic counters (`lb stats zero`, like `ipvsadm -Z`): the data plane's, every
    /// service's and every backend's. Flows and the connection counts least-conn balances on stay.
    pub fn zero_stats(&mut self) -> Result<(), DataplaneError> {
        let cpus = possible_cpus()?;
        fn zero<T: aya::Pod + Default>(
            map: &mut aya::maps::PerCpuArray<aya::maps::MapData, T>,
            name: &'static str,
            cpus: usize,
        ) -> Result<(), DataplaneError> {
            for index in 0..map.len() {
                let values: Vec<T> = (0..cpus).map(|_| T::default()).collect();
                let values = aya::maps::PerCpuValues::try_from(values).map_err(|e| {
                    DataplaneError::Cpus {
                        what: format!("{cpus} values for {name}"),
                        source: e,
                    }
                })?;
                map.set(index, values, 0).map_err(map_op(name, "update"))?;
            }
            Ok(())
        }
        zero(&mut self.maps.stats, maps::STATS, cpus)?;
        zero(&mut self.maps.service_stats, maps::SERVICE_STATS, cpus)?;
        zero(&mut self.maps.decap_stats, maps::DECAP_STATS, cpus)?;
        self.zero_backend_stats()
    }

    /// Every CPU's slots of `LB_BE_STATS`, in batch updates.
    fn zero_backend_stats(&mut self) -> Result<(), DataplaneError> {
        use aya::maps::IterableMap as _;
        use std::os::fd::AsFd as _;
        const CHUNK: u32 = 8192;
        let size = std::mem::size_of::<lb_common::TrafficStats>();
        let zeros = vec![0u8; CHUNK as usize * size];
        let len = self.maps.backend_stats_entries();
        let mut start = 0u32;
        while start < len {
            let end = start.saturating_add(CHUNK).min(len);
            let ids: Vec<u32> = (start..end).collect();
            batch::update_array(
                self.maps.backend_stats.map().fd().as_fd(),
                &ids,
                &zeros[..ids.len() * size],
                size,
            )
            .map_err(map_op(maps::BACKEND_STATS, "batch update"))?;
            start = end;
        }
        Ok(())
    }

    /// Accepts tunnel packets to this local address in `lb_decap`.
    pub fn add_decap_addr(&mut self, key: &DecapKey) -> Result<(), DataplaneError> {
        self.maps
            .decap_addrs
            .insert(key, 1, 0)
            .map_err(map_op(maps::DECAP_ADDRS, "update"))
    }

    /// Accepts tunnel packets in `lb_decap` from outer sources in this prefix (`key.data.family` and
    /// the network-order address; `key.prefix_len` is `DecapSrcKey::prefix_len` of the address bits).
    pub fn allow_decap_src(
        &mut self,
        key: &aya::maps::lpm_trie::Key<lb_common::DecapSrcKey>,
    ) -> Result<(), DataplaneError> {
        self.maps
            .decap_allow
            .insert(key, 1, 0)
            .map_err(map_op(maps::DECAP_ALLOW, "update"))
    }

    /// Read access to every map.
    pub fn maps(&self) -> &MapsView {
        &self.maps
    }

    /// The balancer program, e.g. for `BPF_PROG_TEST_RUN` (`aya::programs::TestRun`).
    pub fn balancer_program(&mut self) -> &mut Xdp {
        self.program(PROG_BALANCER)
    }

    /// The decap program.
    pub fn decap_program(&mut self) -> &mut Xdp {
        self.program(PROG_DECAP)
    }

    fn program(&mut self, name: &'static str) -> &mut Xdp {
        #[allow(clippy::expect_used)]
        xdp_program(&mut self.ebpf, name)
            .expect("both programs were found and loaded by Dataplane::load")
    }

    /// Removes our pinned maps (and the pin directory if it is then empty).
    pub fn remove_pins(&self) {
        if let Some(dir) = &self.pin_dir {
            pins::remove(dir);
        }
    }
}

fn xdp_program<'a>(
    ebpf: &'a mut Ebpf,
    program: &'static str,
) -> Result<&'a mut Xdp, DataplaneError> {
    ebpf.program_mut(program)
        .and_then(|p| <&mut Xdp>::try_from(p).ok())
        .ok_or(DataplaneError::MissingProgram { program })
}

/// An attach refused because the interface already runs an XDP program (one not pinned in our pin
/// dir: another `lb run`'s, or someone else's) says so.
fn busy(e: DataplaneError, iface: &str) -> DataplaneError {
    if is_busy(&e) {
        DataplaneError::IfaceBusy {
            iface: iface.to_owned(),
        }
    } else {
        e
    }
}

fn is_busy(e: &DataplaneError) -> bool {
    matches!(e, DataplaneError::Attach {
        source: aya::programs::ProgramError::SyscallError(sys),
        ..
    } if matches!(sys.io_error.raw_os_error(), Some(libc::EBUSY | libc::EEXIST)))
}

/// The filter word and bit of a VIP address in `LB_VIP_FILTER`.
fn filter_position(addr: &VipAddrKey) -> (u32, u64) {
    let bit = vip_filter_bit(&addr.addr, addr.family);
    (bit >> 6, 1u64 << (bit & 63))
}

fn missing_map(map: &'static str) -> DataplaneError {
    DataplaneError::MissingMap {
        map,
        source: MapError::InvalidName { name: map.into() },
    }
}

/// `CLOCK_MONOTONIC_COARSE` in ns: the clock of `bpf_ktime_get_coarse_ns`, so userspace can age
/// flows and persistence entries written by the XDP program.
pub fn now_coarse_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out pointer; this clock always exists on Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    if rc != 0 {
        tracing::error!(error = %io::Error::last_os_error(), "clock_gettime(CLOCK_MONOTONIC_COARSE) failed");
        return 0;
    }
    (ts.tv_sec as u64)
        .wrapping_mul(1_000_000_000)
        .wrapping_add(ts.tv_nsec as u64)
}

/// Elements of `LB_BE_STATS` for `per_cpu` backend slots on each possible CPU.
fn backend_stats_entries(per_cpu: u32) -> Result<u32, DataplaneError> {
    u32::try_from(possible_cpus()?)
        .ok()
        .and_then(|cpus| per_cpu.checked_mul(cpus))
        .ok_or(DataplaneError::Capacity(
            "max backends × possible CPUs exceeds the 2^32 elements of one array (LB_BE_STATS): \
             lower --max-backends",
        ))
}

/// The CPUs a per-CPU map holds a value for (the possible CPUs).
fn possible_cpus() -> Result<usize, DataplaneError> {
    aya::util::nr_cpus().map_err(|(what, e)| DataplaneError::Cpus {
        what: what.to_owned(),
        source: e,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// `lb run` creates every map and may load every program of the embedded object, so the object
    /// holds the product and nothing else (the bench programs are `lb-bench-ebpf`'s).
    #[test]
    fn embedded_object_holds_only_the_production_programs_and_maps() {
        let obj = aya_obj::Object::parse(EBPF_OBJECT).expect("the embedded object parses");
        let programs: BTreeSet<&str> = obj.programs.keys().map(String::as_str).collect();
        assert_eq!(programs, BTreeSet::from([PROG_BALANCER, PROG_DECAP]));
        let maps: Vec<&str> = obj.maps.keys().map(String::as_str).collect();
        assert!(
            maps.iter().all(|m| !m.starts_with("LB_BENCH_")),
            "bench maps in the production object: {maps:?}"
        );
        for name in pins::PINNED_MAPS {
            assert!(maps.contains(&name), "{name} is missing from {maps:?}");
        }
    }
}
