//! Backends (real servers).

use bytemuck::{Pod, Zeroable};

/// The slot holds a backend (cleared slots are all zero).
pub const BACKEND_F_VALID: u32 = 1 << 0;
/// Failed its health check: established flows are moved to a healthy backend.
pub const BACKEND_F_DOWN: u32 = 1 << 1;
/// Draining (or weight 0): no new flows, established flows stay.
pub const BACKEND_F_DRAINING: u32 = 1 << 2;

/// Value of `LB_BACKENDS`, indexed by backend id. Ids are unique across services.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct BackendEntry {
    /// Where encapsulated packets go, as in [`crate::addr`].
    pub addr: [u32; 4],
    /// The service this backend belongs to; the XDP program checks it before using a table entry.
    pub service_id: u32,
    pub weight: u32,
    /// `BACKEND_F_*`.
    pub flags: u32,
    pub port_be: u16,
    pub family: u8,
    pub _pad: u8,
}

impl BackendEntry {
    /// May this backend receive a packet of an established flow?
    #[inline(always)]
    pub fn carries_flows(&self) -> bool {
        self.flags & BACKEND_F_VALID != 0 && self.flags & BACKEND_F_DOWN == 0
    }
}
