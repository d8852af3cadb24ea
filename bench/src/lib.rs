//! The benchmarks of `cargo xtask bench`, outside the product: `lb-xdp-bench` measures the XDP
//! balancer with `BPF_PROG_TEST_RUN` through [`harness`], whose programs (`lb-bench-ebpf`) live in
//! an object of their own that `lb run` never loads, and compares it with Katran
//! ([`katran`], [`side_by_side`], [`report`]); `lb-zk-bench` measures the ZooKeeper control
//! plane in the namespace lab of `lb-tests`; `lb-e2e-bench` ([`e2e`]) measures real TCP through
//! that lab, `lb` next to nftables and HAProxy; `lb-flowtable-bench` ([`flowtable`]) measures the
//! flow-table operation alone on each candidate table.

pub mod e2e;
pub mod fixture;
pub mod flowtable;
pub mod harness;
pub mod katran;
pub mod report;
pub mod side_by_side;
