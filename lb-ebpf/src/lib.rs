//! Code shared by the XDP programs (this crate's binary) and the bench programs (`lb-bench-ebpf`):
//! header parsing, the IPv4 header checksum, IPIP / ip6ip6 encapsulation, and the flow table's
//! logic over a map its user owns. No maps and no programs live here, so an object that links it
//! gets only the code it calls.
//!
//! On the host (lb-userspace's build-dependency, which makes cargo rebuild the embedded object when
//! `lb-common` changes) the crate is empty: this code only builds for the BPF target.
#![no_std]
// Inline BPF assembly (`parse::opaque`) is unstable; the eBPF crates build with nightly anyway.
#![cfg_attr(target_arch = "bpf", feature(asm_experimental_arch))]

#[cfg(target_arch = "bpf")]
pub mod csum;
#[cfg(target_arch = "bpf")]
pub mod encap;
#[cfg(target_arch = "bpf")]
pub mod flow_table;
#[cfg(target_arch = "bpf")]
pub mod parse;
#[cfg(target_arch = "bpf")]
pub mod stack;
