//! The ZooKeeper control plane: the schema, the pure snapshot builder and mass-removal guard, and
//! the source that watches ZooKeeper and sends desired states to the daemon.

pub mod acl;
pub mod auth;
pub mod backoff;
pub mod client;
pub mod guard;
pub mod schema;
pub mod snapshot;
pub mod source;
