//! Support for `BPF_PROG_TEST_RUN` runs of the XDP balancer, shared by the XDP fixture tests and
//! `lb-xdp-bench`: the network they run in ([`lab`]), frames ([`frames`]) and map entries written
//! the way `apply` writes them ([`maps`]).

pub mod frames;
pub mod lab;
pub mod maps;

pub use lab::{IFACE, LB_MAC, NEXT_HOP_MAC, XdpLab, with_xdp_lab};
