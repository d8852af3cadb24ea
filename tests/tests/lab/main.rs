//! The namespace lab: real TCP from the lab's client through `lb run` (file or ZooKeeper source) to
//! the backends. Labs of this binary run one at a time (the lab lock). Needs root, bpffs, `LB_BIN`
//! and, for `zk`, Debian's `zookeeper` package (`cargo xtask test` provides them).

mod abuse;
mod apply_isolation;
mod balancing;
mod bgp;
mod control;
mod decap_allow;
mod decap_check;
mod flows;
mod health;
mod hitless;
mod icmp;
mod metrics;
mod nexthop;
mod privilege;
mod processes;
mod registry;
mod smoke;
mod state_file;
mod zk;
mod zk_ensemble;
