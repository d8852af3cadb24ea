//! Map reads: the service of a packet, a backend by id, the configuration.

use lb_common::{
    BACKEND_F_DOWN, BACKEND_F_DRAINING, BACKEND_F_VALID, BackendEntry, FlowKey, IPPROTO_TCP,
    LbConfig, ServiceEntry, VipAddrKey, VipKey,
    service::{vip_filter_bit, vip_slot},
};

use crate::{
    maps::{LB_BACKENDS, LB_CONFIG, LB_SERVICES, LB_VIP_ADDRS, LB_VIP_FILTER, LB_VIP_TABLE},
    parse::Packet,
    stack::Aligned8,
};

/// The service whose VIP the packet is addressed to: from its `LB_VIP_TABLE` slot when the slot
/// holds it (a few loads and compares), else from `LB_SERVICES` (a helper call that hashes the
/// key).
#[inline(always)]
pub fn service_of(pkt: &Packet) -> Option<ServiceEntry> {
    service(&Aligned8(VipKey {
        addr: pkt.dst,
        port_be: pkt.dport_be,
        proto: IPPROTO_TCP,
        family: pkt.family,
    }))
}

/// The service of a VIP: its `LB_VIP_TABLE` slot, else `LB_SERVICES`.
#[inline(always)]
pub fn service(key: &Aligned8<VipKey>) -> Option<ServiceEntry> {
    if let Some(entry) = from_vip_table(&key.0) {
        return Some(entry);
    }
    // SAFETY: the value is copied out at once; userspace replaces entries whole.
    unsafe { LB_SERVICES.get(&key.0).copied() }
}

/// The service of `key` from its `LB_VIP_TABLE` slot: a seqlock read (see `VipSlot`). `None` when
/// the slot holds another VIP or none, or userspace changed it meanwhile.
#[inline(always)]
fn from_vip_table(key: &VipKey) -> Option<ServiceEntry> {
    let slot = LB_VIP_TABLE.get_ptr(vip_slot(key))?;
    // Volatile reads: LLVM keeps them in program order, and x86 does not reorder loads.
    // SAFETY: `slot` is a map value pointer; `VipSlot` is `repr(C)` u32 words (no padding).
    let word = |i: usize| unsafe { core::ptr::read_volatile(slot.cast::<u32>().add(i)) };
    let seq = word(0);
    if seq & 1 != 0 {
        return None;
    }
    let want = (key as *const VipKey).cast::<u32>();
    let mut diff = 0;
    for i in 0..5 {
        // SAFETY: `VipKey` is five u32 words (repr(C), no padding).
        diff |= word(1 + i) ^ unsafe { *want.add(i) };
    }
    if diff != 0 {
        return None;
    }
    let mut entry = [0u32; 10];
    for (i, w) in entry.iter_mut().enumerate() {
        *w = word(6 + i);
    }
    if word(0) != seq {
        return None;
    }
    // SAFETY: `ServiceEntry` is `repr(C)`, ten u32 fields; `transmute` checks the size.
    Some(unsafe { core::mem::transmute::<[u32; 10], ServiceEntry>(entry) })
}

/// Could `addr` be a VIP address? False for most addresses that are not (one array read, no
/// hash lookup); true for every VIP address.
#[inline(always)]
pub fn may_be_vip(addr: &[u32; 4], family: u8) -> bool {
    let bit = vip_filter_bit(addr, family);
    match LB_VIP_FILTER.get(bit >> 6) {
        Some(word) => *word & (1u64 << (bit & 63)) != 0,
        None => true,
    }
}

/// Is `addr` the address of some VIP (any port)?
#[inline(always)]
pub fn is_vip_addr(addr: [u32; 4], family: u8) -> bool {
    // Built from words: a struct literal zeroes the 3 padding bytes with a call of `memset` (a
    // BPF subprogram), which cost this lookup ~30 ns (docs/bench/xdp.md, non-VIP row).
    let tail = u32::from_ne_bytes([family, 0, 0, 0]);
    // SAFETY: `VipAddrKey` is `repr(C)`, 20 bytes of plain integers without implicit padding
    // (bytemuck `Pod` in lb-common); `transmute` checks the sizes match.
    let key: Aligned8<VipAddrKey> = Aligned8(unsafe {
        core::mem::transmute::<[u32; 5], VipAddrKey>([addr[0], addr[1], addr[2], addr[3], tail])
    });
    // SAFETY: only the presence of the key is read.
    unsafe { LB_VIP_ADDRS.get(&key.0).is_some() }
}

#[inline(always)]
pub fn flow_key_of(pkt: &Packet) -> FlowKey {
    FlowKey {
        src: pkt.src,
        dst: pkt.dst,
        sport_be: pkt.sport_be,
        dport_be: pkt.dport_be,
        proto: IPPROTO_TCP,
        family: pkt.family,
        _pad: [0; 2],
    }
}

/// A backend's entry in place: a reference into the array, not a copy in the caller's stack frame
/// (the verifier caps a call chain's stack at 512 bytes). Userspace rewrites an entry only while
/// no table or flow hands out its id for a new purpose (ids are quarantined before reuse).
#[inline(always)]
pub fn backend(id: u32) -> Option<&'static BackendEntry> {
    LB_BACKENDS.get(id)
}

/// The configuration, or all zeroes before userspace wrote it.
#[inline(always)]
pub fn config() -> LbConfig {
    LB_CONFIG.get(0).copied().unwrap_or_default()
}

/// The configuration in place (no 48-byte copy in the caller's stack frame). Element 0 of an
/// array always exists; its fields are read one by one, and userspace changes them rarely.
#[inline(always)]
pub fn config_ref() -> Option<&'static LbConfig> {
    LB_CONFIG.get(0)
}

/// The coarse clock: the daemon's (`LbConfig::now_ns`) when it keeps one, which costs no helper
/// call, else the kernel's.
#[inline(always)]
pub fn now_ns(cfg: &LbConfig) -> u64 {
    if cfg.now_ns != 0 {
        cfg.now_ns
    } else {
        // SAFETY: helper without arguments.
        unsafe { aya_ebpf::helpers::bpf_ktime_get_coarse_ns() }
    }
}

/// May this backend take new flows?
#[inline(always)]
pub fn takes_new_flows(be: &BackendEntry) -> bool {
    be.flags & (BACKEND_F_VALID | BACKEND_F_DOWN | BACKEND_F_DRAINING) == BACKEND_F_VALID
        && be.weight > 0
}
