//! Where things live in ZooKeeper (a public contract, documented in README.md):
//!
//! ```text
//! <root>/services/<name>                      service JSON ({"vip": "198.18.100.1:80", ...})
//! <root>/services/<name>/backends/<IP:PORT>   backend JSON ({"weight": 3, "state": "active"}) or empty
//! ```
//!
//! The root defaults to `/lb` (`--zk-root`); a chroot in the connect string comes on top of it.

use std::net::SocketAddr;

/// The default `--zk-root`.
pub const DEFAULT_ROOT: &str = "/lb";
const SERVICES: &str = "services";
const BACKENDS: &str = "backends";

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SchemaError {
    #[error(
        "ZooKeeper root \"{root}\" is invalid: {reason}; give an absolute path such as \"/lb\""
    )]
    InvalidRoot { root: String, reason: &'static str },
    #[error(
        "backend node name \"{name}\" is not an address: expected IP:PORT such as 198.18.2.11:80 or [2001:db8::11]:80"
    )]
    NotAnAddress { name: String },
    #[error(
        "backend node name \"{name}\" is not written canonically; name the node \"{canonical}\""
    )]
    NotCanonical { name: String, canonical: String },
}

/// The node paths under one root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schema {
    /// Absolute, without a trailing slash; `""` stands for the ZooKeeper root `/`.
    root: String,
}

impl Schema {
    /// Checks the root: absolute, no empty, `.` or `..` components, no trailing slash (but `/` alone).
    pub fn new(root: &str) -> Result<Schema, SchemaError> {
        let invalid = |reason| SchemaError::InvalidRoot {
            root: root.to_owned(),
            reason,
        };
        if !root.starts_with('/') {
            return Err(invalid("it does not start with '/'"));
        }
        if root == "/" {
            return Ok(Schema {
                root: String::new(),
            });
        }
        if root.ends_with('/') {
            return Err(invalid("it ends with '/'"));
        }
        for part in root[1..].split('/') {
            if part.is_empty() {
                return Err(invalid("it has an empty path component (\"//\")"));
            }
            if part == "." || part == ".." {
                return Err(invalid("'.' and '..' are not allowed in ZooKeeper paths"));
            }
            if part.chars().any(|c| c.is_control()) {
                return Err(invalid("it holds control characters"));
            }
        }
        Ok(Schema {
            root: root.to_owned(),
        })
    }

    /// The root as given (`/` for the ZooKeeper root).
    pub fn root(&self) -> &str {
        if self.root.is_empty() {
            "/"
        } else {
            &self.root
        }
    }

    /// `<root>/<relative>` (`relative` has no leading '/').
    pub fn child_path(&self, relative: &str) -> String {
        format!("{}/{relative}", self.root)
    }

    /// `<root>/services`: its children are the services.
    pub fn services_dir(&self) -> String {
        format!("{}/{SERVICES}", self.root)
    }

    /// `<root>/services/<name>`.
    pub fn service_path(&self, name: &str) -> String {
        format!("{}/{SERVICES}/{name}", self.root)
    }

    /// `<root>/services/<name>/backends`: its children are the backends.
    pub fn backends_dir(&self, service: &str) -> String {
        format!("{}/{SERVICES}/{service}/{BACKENDS}", self.root)
    }

    /// `<root>/services/<name>/backends/<IP:PORT>`.
    pub fn backend_path(&self, service: &str, backend: SocketAddr) -> String {
        self.backend_node_path(service, &backend_node_name(backend))
    }

    /// The path of a backend node by its (possibly malformed) node name.
    pub fn backend_node_path(&self, service: &str, node: &str) -> String {
        format!("{}/{node}", self.backends_dir(service))
    }
}

/// The node name of a backend: `198.18.2.11:80`, `[2001:db8::11]:80` (Rust's canonical form, which
/// is RFC 5952 for IPv6: lower case, longest zero run compressed).
pub fn backend_node_name(addr: SocketAddr) -> String {
    addr.to_string()
}

/// Reads a backend node name. Only the canonical spelling is accepted, so two nodes can never name
/// the same backend (`[2001:DB8::11]:80` and `[2001:db8::11]:80`).
pub fn parse_backend_node_name(name: &str) -> Result<SocketAddr, SchemaError> {
    let addr: SocketAddr = name.parse().map_err(|_| SchemaError::NotAnAddress {
        name: name.to_owned(),
    })?;
    let canonical = backend_node_name(addr);
    if canonical != name {
        return Err(SchemaError::NotCanonical {
            name: name.to_owned(),
            canonical,
        });
    }
    Ok(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_under_the_default_root() {
        let schema = Schema::new(DEFAULT_ROOT).unwrap();
        assert_eq!(schema.services_dir(), "/lb/services");
        assert_eq!(schema.service_path("web"), "/lb/services/web");
        assert_eq!(schema.backends_dir("web"), "/lb/services/web/backends");
        let v4: SocketAddr = "198.18.2.11:80".parse().unwrap();
        let v6: SocketAddr = "[2001:db8::11]:80".parse().unwrap();
        assert_eq!(
            schema.backend_path("web", v4),
            "/lb/services/web/backends/198.18.2.11:80"
        );
        assert_eq!(
            schema.backend_path("web", v6),
            "/lb/services/web/backends/[2001:db8::11]:80"
        );
    }

    #[test]
    fn the_zookeeper_root_and_nested_roots() {
        let top = Schema::new("/").unwrap();
        assert_eq!(top.root(), "/");
        assert_eq!(top.service_path("a"), "/services/a");
        let nested = Schema::new("/prod/lb").unwrap();
        assert_eq!(nested.services_dir(), "/prod/lb/services");
    }

    #[test]
    fn bad_roots_are_refused() {
        for root in ["lb", "/lb/", "/lb//x", "/lb/..", "/./lb", ""] {
            let err = Schema::new(root).unwrap_err();
            assert!(
                matches!(err, SchemaError::InvalidRoot { .. }),
                "{root}: {err}"
            );
        }
    }

    #[test]
    fn node_names_round_trip() {
        for name in [
            "198.18.2.11:80",
            "[2001:db8::11]:80",
            "[2001:db8::1:0:0:1]:443",
        ] {
            let addr = parse_backend_node_name(name).unwrap();
            assert_eq!(backend_node_name(addr), name);
        }
    }

    #[test]
    fn non_canonical_names_say_the_canonical_one() {
        let err = parse_backend_node_name("[2001:DB8:0::11]:80").unwrap_err();
        assert_eq!(
            err,
            SchemaError::NotCanonical {
                name: "[2001:DB8:0::11]:80".into(),
                canonical: "[2001:db8::11]:80".into()
            }
        );
        assert!(matches!(
            parse_backend_node_name("198.18.2.11:080"),
            Err(SchemaError::NotCanonical { .. })
        ));
    }

    #[test]
    fn non_addresses_are_refused() {
        for name in [
            "web",
            "198.18.2.11",
            "2001:db8::11:80",
            "198.18.2.300:80",
            "",
        ] {
            assert!(
                matches!(
                    parse_backend_node_name(name),
                    Err(SchemaError::NotAnAddress { .. })
                ),
                "{name}"
            );
        }
    }
}
