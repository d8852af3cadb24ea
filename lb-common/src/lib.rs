//! Types, sizes and names shared by the XDP program (`lb-ebpf`) and the control plane (`lb-userspace`).
//!
//! Every type that crosses the kernel/userspace boundary lives here, is `#[repr(C)]` with explicit
//! padding, and derives `bytemuck::Pod` so that an accidental hole fails to compile. Every size is
//! defined once here; userspace may override map sizes at load time (see [`limits`]).
#![no_std]

pub mod addr;
pub mod backend;
pub mod bench;
pub mod config;
pub mod decap;
pub mod flow;
pub mod hash;
pub mod layout;
pub mod limits;
pub mod maps;
pub mod persist;
pub mod service;
pub mod stats;

pub use addr::{AF_INET, AF_INET6, IPPROTO_TCP, IPPROTO_UDP};
pub use backend::{BACKEND_F_DOWN, BACKEND_F_DRAINING, BACKEND_F_VALID, BackendEntry};
pub use config::LbConfig;
pub use decap::{DecapCounter, DecapKey, DecapSrcKey};
pub use flow::{
    FLOW_F_CLOSED, FLOW_F_COUNTED, FLOW_F_ESTABLISHED, FlowBucket, FlowEntry, FlowKey, FlowPlace,
    FlowSlot,
};
pub use persist::{PersistEntry, PersistKey};
pub use service::{Scheduler, ServiceEntry, ServiceMeta, VipAddrKey, VipKey, VipSlot};
pub use stats::{Counter, TrafficStats};

/// Implements `aya::Pod` for shared types (userspace only). bytemuck already proved them hole-free.
#[cfg(feature = "user")]
mod user_pod {
    macro_rules! aya_pod {
        ($($t:ty),* $(,)?) => { $( unsafe impl aya::Pod for $t {} )* };
    }
    aya_pod!(
        crate::VipKey,
        crate::VipAddrKey,
        crate::VipSlot,
        crate::ServiceEntry,
        crate::ServiceMeta,
        crate::BackendEntry,
        crate::FlowKey,
        crate::FlowEntry,
        crate::FlowBucket,
        crate::PersistKey,
        crate::PersistEntry,
        crate::TrafficStats,
        crate::LbConfig,
        crate::DecapKey,
        crate::DecapSrcKey,
        crate::bench::BenchTemplate,
    );
}
