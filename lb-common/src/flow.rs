//! The per-connection flow table: 5-tuple → backend.

use bytemuck::{Pod, Zeroable};

/// Key of `LB_FLOWS`: the client's view of the connection. Addresses as in [`crate::addr`], ports
/// in network byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct FlowKey {
    pub src: [u32; 4],
    pub dst: [u32; 4],
    pub sport_be: u16,
    pub dport_be: u16,
    pub proto: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}

/// The flow holds one unit of its backend's active-connection counter (set with
/// [`FLOW_F_ESTABLISHED`], cleared when it closes).
pub const FLOW_F_COUNTED: u32 = 1 << 0;
/// The client's first ACK after its SYN arrived: the handshake completed, as far as the LB can see.
/// A flow without it (and without [`FLOW_F_CLOSED`]) is half-open.
pub const FLOW_F_ESTABLISHED: u32 = 1 << 1;
/// The client sent FIN or RST; the counter unit has been returned. The entry stays (same backend)
/// until the closed timeout.
pub const FLOW_F_CLOSED: u32 = 1 << 2;

/// Value of `LB_FLOWS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct FlowEntry {
    pub backend_id: u32,
    /// `FLOW_F_*`.
    pub flags: u32,
    /// `bpf_ktime_get_coarse_ns` of the last packet, refreshed at most every
    /// [`crate::limits::FLOW_TOUCH_INTERVAL_NS`].
    pub last_seen_ns: u64,
}
