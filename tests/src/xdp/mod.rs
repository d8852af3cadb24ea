//! Support for `BPF_PROG_TEST_RUN` runs of the XDP balancer, shared by the XDP fixture tests and
//! `lb-xdp-bench`, and the fuzzer ([`fuzz`], `lb-xdp-fuzz`): the network they run in ([`lab`]), frames ([`frames`]) and map entries written
//! the way `apply` writes them ([`maps`]).

pub mod frames;
pub mod fuzz;
pub mod lab;
pub mod maps;

pub use lab::{
    CLIENT4, CLIENT6, IFACE, LB_MAC, NEXT_HOP_MAC, SRC4, SRC6, VIP4, VIP6, XdpLab, with_xdp_lab,
};

/// XDP verdicts (`xdp_action`).
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
