//! Session persistence (IPVS `-p`): client address (masked) → backend.

use bytemuck::{Pod, Zeroable};

/// Key of `LB_PERSIST`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct PersistKey {
    /// Client address masked to the service's persistence prefix.
    pub client: [u32; 4],
    pub service_id: u32,
    pub family: u8,
    pub _pad: [u8; 3],
}

/// Value of `LB_PERSIST`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct PersistEntry {
    pub backend_id: u32,
    pub _pad: u32,
    pub last_seen_ns: u64,
}
