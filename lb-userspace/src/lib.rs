//! The control plane of the load balancer: configuration sources, the desired-state model, table
//! builders, the diff, and the one module that writes eBPF maps.

pub mod admin;
pub mod announce;
pub mod apply;
pub mod atomic_file;
pub mod check;
pub mod config;
pub mod control;
pub mod daemon;
pub mod dataplane;
pub mod decap;
pub mod detach;
pub mod execute;
pub mod flows;
pub mod health;
pub mod log_values;
pub mod metrics;
pub mod model;
pub mod netif;
pub mod nexthop;
pub mod owner;
pub mod plan;
pub mod privilege;
pub mod register;
pub mod report;
pub mod source;
pub mod state_file;
pub mod status;
pub mod sweeper;
pub mod tables;
pub mod telemetry;
pub mod top;
pub mod zk;
