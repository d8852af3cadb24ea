//! The bench programs, in an object of their own that `lb run` never loads: `lb-bench`'s harness
//! loads it next to the production object and runs them with `BPF_PROG_TEST_RUN`; they are never
//! attached to an interface.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

// On the host (`cargo clippy --workspace`, `cargo test --workspace`) this binary is empty.
#[cfg(target_arch = "bpf")]
mod floor;
#[cfg(target_arch = "bpf")]
mod flowtable;
#[cfg(target_arch = "bpf")]
mod programs;
#[cfg(target_arch = "bpf")]
mod reset;

#[cfg(not(target_arch = "bpf"))]
fn main() {}
