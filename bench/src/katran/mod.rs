//! Katran (facebookincubator/katran, GPL-2.0), the data plane `lb-xdp-bench` compares lb with: its
//! `balancer.bpf.o` built from sources kept outside the repository ([`build`]), loaded with aya and
//! given, through its own maps, the bench's VIP, backends ("reals"), Maglev ring and next-hop MAC.
//!
//! Connection table: Katran looks its LRU up in `lru_mapping[cpu]` (an array of maps, one LRU
//! per CPU, which its userspace creates and sizes) and uses `fallback_cache` only when that slot
//! is empty, counting each such packet in `FALLBACK_LRU_CNTR` ("should never be anything except 0
//! in prod"). The bench runs what production runs: an LRU of the measured size in the slot of the
//! CPU the bench thread is pinned to (other CPUs see no packet here), and it checks that
//! `FALLBACK_LRU_CNTR` stays 0. The size is chosen when the LRU is created, as Katran's userspace
//! does, so the object's `DEFAULT_LRU_SIZE` does not matter.
//!
//! New flows: Katran skips the LRU insert of a new flow when its CPU saw more than
//! `MAX_CONN_RATE` (125,000) new flows in the current second (`stats[MAX_VIPS +
//! NEW_CONN_RATE_CNTR]`: count, window start). [`Katran::reset_conn_rate`] zeroes that window
//! before each run, runs of new flows are at most [`MAX_CONN_RATE`] packets, and
//! [`Katran::conn_rate`] afterwards shows the count stayed under the limit: every SYN measured
//! was really inserted.

pub mod build;

use std::{net::IpAddr, path::Path};

use anyhow::{Context as _, bail, ensure};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, ArrayOfMaps, HashMap, Map, MapData, PerCpuArray, PerCpuValues},
    programs::Xdp,
    util::nr_cpus,
};
use aya_obj::generated::bpf_map_type::BPF_MAP_TYPE_LRU_HASH;
use bytemuck::{Pod, Zeroable};

/// The program's entry (section `xdp`).
pub const PROGRAM: &str = "balancer_ingress";
/// Positions of one VIP's Maglev ring (`RING_SIZE`).
pub const RING_SIZE: u32 = 65_537;
/// New flows per CPU and second above which Katran stops inserting them (`MAX_CONN_RATE`).
pub const MAX_CONN_RATE: u64 = 125_000;
/// `MAX_VIPS`: global counters sit at `MAX_VIPS + *_CNTR` of `stats`.
const MAX_VIPS: u32 = 512;

/// Katran's global counters (`balancer_consts.h`), as `stats` indexes.
#[derive(Clone, Copy, Debug)]
pub enum Stat {
    /// v1: packets to a VIP, v2: of those, connection-table misses.
    Lru = 0,
    /// v1: misses of SYNs (new flows), v2: misses of other TCP packets.
    LruMiss = 1,
    /// v1: new flows in the current window, v2: window start (ns).
    NewConnRate = 2,
    /// v1: packets that found no per-CPU LRU.
    FallbackLru = 3,
    XdpTx = 17,
    XdpDrop = 18,
    XdpPass = 19,
}

const IPPROTO_TCP: u8 = 6;
/// `real_definition.flags`: the real is an IPv6 address.
const F_IPV6: u8 = 1 << 0;

/// `struct vip_definition`: address (network order; IPv4 in the first word), port (network
/// order), protocol.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
struct VipDefinition {
    addr: [u32; 4],
    port_be: u16,
    proto: u8,
    _pad: u8,
}

/// `struct vip_meta`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
struct VipMeta {
    flags: u32,
    vip_num: u32,
}

/// `struct real_definition`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
struct RealDefinition {
    addr: [u32; 4],
    flags: u8,
    _pad: [u8; 3],
}

/// `struct ctl_value` holding a MAC (`ctl_array[0]`: the next hop's).
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
struct CtlMac {
    mac: [u8; 6],
    _pad: [u8; 2],
}

/// `struct lb_stats`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct LbStats {
    pub v1: u64,
    pub v2: u64,
}

// SAFETY: plain `#[repr(C)]` data without padding (bytemuck checks it).
unsafe impl aya::Pod for VipDefinition {}
// SAFETY: as above.
unsafe impl aya::Pod for VipMeta {}
// SAFETY: as above.
unsafe impl aya::Pod for RealDefinition {}
// SAFETY: as above.
unsafe impl aya::Pod for CtlMac {}
// SAFETY: as above.
unsafe impl aya::Pod for LbStats {}

/// A loaded Katran and the per-CPU LRUs the bench created for it.
pub struct Katran {
    ebpf: Ebpf,
    cpu: u32,
    /// LRUs by size; the one in `lru_mapping[cpu]` is the one in use.
    lrus: Vec<(u32, MapData)>,
}

impl Katran {
    /// Loads `object` (Katran's `balancer.bpf.o`) and its program; `cpu` is the CPU the bench
    /// thread runs on (the one whose LRU is used).
    pub fn load(object: &Path, cpu: u32) -> anyhow::Result<Katran> {
        let mut ebpf = EbpfLoader::new()
            .load_file(object)
            .with_context(|| format!("loading Katran's object {}", object.display()))?;
        let program: &mut Xdp = ebpf
            .program_mut(PROGRAM)
            .with_context(|| format!("{} has no program {PROGRAM}", object.display()))?
            .try_into()
            .with_context(|| format!("Katran's {PROGRAM} is not an XDP program"))?;
        program.load().with_context(|| {
            format!("the kernel refused Katran's {PROGRAM} (verifier log above)")
        })?;
        Ok(Katran {
            ebpf,
            cpu,
            lrus: Vec::new(),
        })
    }

    /// The loaded `balancer_ingress`.
    pub fn program(&self) -> anyhow::Result<&Xdp> {
        self.ebpf
            .program(PROGRAM)
            .context("Katran's program is gone")?
            .try_into()
            .context("Katran's program is not XDP")
    }

    /// TCP `vip`:`port` as VIP number `vip_num` (its ring starts at `vip_num × RING_SIZE`).
    pub fn put_vip(&mut self, vip: IpAddr, port: u16, vip_num: u32) -> anyhow::Result<()> {
        let key = VipDefinition {
            addr: words(vip),
            port_be: port.to_be(),
            proto: IPPROTO_TCP,
            _pad: 0,
        };
        let meta = VipMeta { flags: 0, vip_num };
        let mut map: HashMap<_, VipDefinition, VipMeta> = typed(&mut self.ebpf, "vip_map")?;
        map.insert(key, meta, 0).context("writing Katran's vip_map")
    }

    /// Reals 1..=n at `addrs` (Katran never maps index 0).
    pub fn put_reals(&mut self, addrs: &[IpAddr]) -> anyhow::Result<()> {
        let mut map: Array<_, RealDefinition> = typed(&mut self.ebpf, "reals")?;
        for (i, addr) in addrs.iter().enumerate() {
            let real = RealDefinition {
                addr: words(*addr),
                flags: if addr.is_ipv6() { F_IPV6 } else { 0 },
                _pad: [0; 3],
            };
            let index = u32::try_from(i + 1)?;
            map.set(index, real, 0)
                .with_context(|| format!("writing Katran's reals[{index}]"))?;
        }
        Ok(())
    }

    /// VIP `vip_num`'s ring: `RING_SIZE` real indexes.
    pub fn put_ring(&mut self, vip_num: u32, ring: &[u32]) -> anyhow::Result<()> {
        ensure!(
            ring.len() == RING_SIZE as usize,
            "a Katran ring has {RING_SIZE} positions, not {}",
            ring.len()
        );
        let mut map: Array<_, u32> = typed(&mut self.ebpf, "ch_rings")?;
        let base = vip_num * RING_SIZE;
        for (i, real) in (0..).zip(ring) {
            map.set(base + i, *real, 0)
                .with_context(|| format!("writing Katran's ch_rings[{}]", base + i))?;
        }
        Ok(())
    }

    /// The next hop's MAC, the outer destination of every forwarded packet.
    pub fn set_next_hop_mac(&mut self, mac: [u8; 6]) -> anyhow::Result<()> {
        let mut map: Array<_, CtlMac> = typed(&mut self.ebpf, "ctl_array")?;
        map.set(0, CtlMac { mac, _pad: [0; 2] }, 0)
            .context("writing Katran's ctl_array[0]")
    }

    /// Puts an LRU of `entries` flows into the bench CPU's `lru_mapping` slot: a new, empty one
    /// the first time a size is asked for, the same one (with its flows) afterwards.
    pub fn use_lru(&mut self, entries: u32) -> anyhow::Result<()> {
        if !self.lrus.iter().any(|(n, _)| *n == entries) {
            let lru = self.create_lru(entries)?;
            self.lrus.push((entries, lru));
        }
        let lru = self
            .lrus
            .iter()
            .find(|(n, _)| *n == entries)
            .map(|(_, m)| m)
            .context("the LRU just created is missing")?;
        let map = self
            .ebpf
            .map_mut("lru_mapping")
            .context("Katran's object has no map lru_mapping")?;
        let mut outer: ArrayOfMaps<_, MapData> =
            ArrayOfMaps::try_from(map).context("Katran's lru_mapping is not an array of maps")?;
        outer.set(self.cpu, lru, 0).with_context(|| {
            format!(
                "putting a {entries}-flow LRU into lru_mapping[{}]",
                self.cpu
            )
        })
    }

    /// An LRU hash shaped like Katran's inner-map template (key, value, flags from the object's
    /// `fallback_cache`, which has the same definition), with `entries` entries.
    fn create_lru(&self, entries: u32) -> anyhow::Result<MapData> {
        let info = match self.ebpf.map("fallback_cache") {
            Some(Map::LruHashMap(data)) => data.info().context("reading fallback_cache's info")?,
            Some(_) => bail!("Katran's fallback_cache is not an LRU hash"),
            None => bail!("Katran's object has no map fallback_cache"),
        };
        let def = aya_obj::Map::new_from_params(
            BPF_MAP_TYPE_LRU_HASH as u32,
            info.key_size(),
            info.value_size(),
            entries,
            info.map_flags(),
        );
        MapData::create(def, "katran_lru", None)
            .with_context(|| format!("creating a {entries}-entry LRU for Katran"))
    }

    /// Zeroes the new-connection window of every CPU (see the module's notes).
    pub fn reset_conn_rate(&mut self) -> anyhow::Result<()> {
        let cpus = nr_cpus().map_err(|(path, e)| anyhow::anyhow!("reading {path}: {e}"))?;
        let zeros = PerCpuValues::try_from(vec![LbStats::default(); cpus])
            .context("building per-CPU zeros")?;
        let mut map: PerCpuArray<_, LbStats> = typed(&mut self.ebpf, "stats")?;
        map.set(MAX_VIPS + Stat::NewConnRate as u32, zeros, 0)
            .context("zeroing Katran's new-connection rate window")
    }

    /// New flows counted in the bench CPU's current window.
    pub fn conn_rate(&self) -> anyhow::Result<u64> {
        let map: PerCpuArray<_, LbStats> = typed_ref(&self.ebpf, "stats")?;
        let values = map
            .get(&(MAX_VIPS + Stat::NewConnRate as u32), 0)
            .context("reading Katran's new-connection rate window")?;
        values
            .get(self.cpu as usize)
            .map(|s| s.v1)
            .with_context(|| format!("Katran's stats have no CPU {}", self.cpu))
    }

    /// A global counter, summed over CPUs.
    pub fn stat(&self, stat: Stat) -> anyhow::Result<LbStats> {
        let map: PerCpuArray<_, LbStats> = typed_ref(&self.ebpf, "stats")?;
        let values = map
            .get(&(MAX_VIPS + stat as u32), 0)
            .with_context(|| format!("reading Katran's counter {stat:?}"))?;
        Ok(values.iter().fold(LbStats::default(), |a, s| LbStats {
            v1: a.v1 + s.v1,
            v2: a.v2 + s.v2,
        }))
    }
}

/// An address as Katran stores it: network-order words, IPv4 in the first.
fn words(addr: IpAddr) -> [u32; 4] {
    match addr {
        IpAddr::V4(a) => [u32::from_ne_bytes(a.octets()), 0, 0, 0],
        IpAddr::V6(a) => {
            let o = a.octets();
            std::array::from_fn(|i| {
                u32::from_ne_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]])
            })
        }
    }
}

fn typed<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<T>
where
    T: TryFrom<&'a mut Map>,
    <T as TryFrom<&'a mut Map>>::Error: std::error::Error + Send + Sync + 'static,
{
    let map = ebpf
        .map_mut(name)
        .with_context(|| format!("Katran's object has no map {name}"))?;
    T::try_from(map).with_context(|| format!("Katran's {name} does not have the expected layout"))
}

fn typed_ref<'a, T>(ebpf: &'a Ebpf, name: &str) -> anyhow::Result<T>
where
    T: TryFrom<&'a Map>,
    <T as TryFrom<&'a Map>>::Error: std::error::Error + Send + Sync + 'static,
{
    let map = ebpf
        .map(name)
        .with_context(|| format!("Katran's object has no map {name}"))?;
    T::try_from(map).with_context(|| format!("Katran's {name} does not have the expected layout"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_structs_have_katrans_sizes() {
        // sizeof in balancer_structs.h (x86-64 and BPF agree).
        assert_eq!(size_of::<VipDefinition>(), 20);
        assert_eq!(size_of::<VipMeta>(), 8);
        assert_eq!(size_of::<RealDefinition>(), 20);
        assert_eq!(size_of::<CtlMac>(), 8);
        assert_eq!(size_of::<LbStats>(), 16);
    }

    #[test]
    fn addresses_are_network_order_words() {
        let w = words("198.18.8.1".parse().expect("literal"));
        assert_eq!(w[0].to_ne_bytes(), [198, 18, 8, 1]);
        assert_eq!(&w[1..], &[0, 0, 0]);
        let w = words("2001:db8::1".parse().expect("literal"));
        assert_eq!(w[0].to_ne_bytes(), [0x20, 0x01, 0x0d, 0xb8]);
        assert_eq!(w[3].to_ne_bytes(), [0, 0, 0, 1]);
    }
}
