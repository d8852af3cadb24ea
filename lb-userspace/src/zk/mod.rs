//! The ZooKeeper control plane: the schema, the pure snapshot builder and mass-removal guard, the
//! source that watches ZooKeeper and sends desired states to the daemon, and what `lb register` and
//! the admin CLI share (connection, credentials, ACLs).
//!
//! # Schema (a public contract; README.md documents the same)
//!
//! Root: `--zk-root`, default `/lb` (a chroot in the connect string, `HOST:PORT,.../chroot`, comes
//! on top of it).
//!
//! `<root>/services/<name>`: a service. `<name>` is 1-63 bytes of `[A-Za-z0-9._-]`. Data is JSON:
//!
//! | field | type | default |
//! |---|---|---|
//! | `vip` | `"IP:PORT"`, IPv6 as `"[2001:db8::100]:80"` | required |
//! | `proto` | `"tcp"` | `"tcp"` (the only one) |
//! | `scheduler` | `rr`, `wrr`, `random`, `wrandom`, `least-conn`, `maglev` | `maglev` |
//! | `persistence_timeout_s` | integer seconds | `0` (off) |
//! | `persistence_netmask` | prefix length | the whole address |
//! | `health_check` | object, below | none |
//! | `panic_threshold` | percent of backends, 0-100 | `0` (panic mode off) |
//!
//! `health_check`: `{"kind": "tcp"|"http", "path": "/healthz", "expect": "200-399",
//! "interval_ms": 1000, "timeout_ms": 500, "rise": 2, "fall": 3}`, every field optional with the
//! default shown (`kind` defaults to `tcp`).
//!
//! `<root>/services/<name>/backends/<address>`: a backend. The node name is the address in canonical
//! form (`198.18.2.11:80`, `[2001:db8::11]:80`); data is empty (weight 1, active) or JSON
//! `{"weight": 0..=65535 (default 1), "state": "active"|"draining" (default active)}`. Persistent
//! nodes are written by operators (`lb backend put`, `zkCli.sh`), ephemeral ones by `lb register`.
//!
//! Rules: a backend's port must equal its service's VIP port and its family the VIP's (DSR keeps
//! the inner packet as the client sent it). Unknown fields are ignored with a warning; wrong types,
//! bad addresses, non-canonical node names, weights above 65535 and unknown schedulers are rejected.
//! A VIP claimed by a second service is rejected for the newcomer. Each rejection is per znode: a
//! bad backend is skipped, a bad service keeps its last good version (see [`snapshot`]).
//!
//! A missing `<root>/services` node is not read as "no services" once services are applied (that is
//! more likely a wrong `--zk-root` or an accident): the daemon keeps its state and logs an error. An
//! existing `services` node with no children removes every service.
//!
//! Credentials: `--zk-auth-file FILE` (one line `user:password`) or `$LB_ZK_AUTH`, ZooKeeper's
//! `digest` scheme. Nodes `lb` creates with credentials get the ACL "creator: all, anyone: read", so
//! daemons read without credentials and only that identity writes; without credentials nodes are
//! open (`world:anyone` all), as ZooKeeper's default.

pub mod acl;
pub mod auth;
pub mod backoff;
pub mod client;
pub mod guard;
pub mod registry;
pub mod schema;
pub mod snapshot;
pub mod source;
