//! The control plane of the load balancer: configuration sources, the desired-state model, table
//! builders, the diff, and the one module that writes eBPF maps.

pub mod apply;
pub mod config;
pub mod dataplane;
pub mod model;
pub mod plan;
pub mod tables;
