//! `lb service put|rm|ls` and `lb backend put|rm|weight|ls`: an operator's CLI over the ZooKeeper
//! schema. Everything is validated with the same model code the daemon uses before it is written;
//! changes to several nodes go in one multi-op transaction, guarded by the version of the node the
//! validation read, so a concurrent edit makes the write fail instead of slipping past validation.
//! Hand edits with `zkCli.sh` produce the same nodes and are read the same way.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::Serialize;
use zookeeper_client::{Client, CreateMode, Error as ZkErr, MultiWriteError};

use crate::model::{
    BackendSpec, BackendState, MAX_WEIGHT, ModelError, ServiceSpec, backend_from_json,
    service_from_json,
};
use crate::zk::acl::node_acls;
use crate::zk::client::{ZkError, ZkTarget};
use crate::zk::schema::{Schema, backend_node_name, parse_backend_node_name};
use crate::zk::snapshot::{RawTree, build_snapshot};
use crate::zk::source::read_tree;

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("refused, nothing was written: {0}")]
    Invalid(#[from] ModelError),
    #[error("refused, nothing was written: {0}")]
    Refused(String),
    #[error(
        "service {service} does not exist ({path} is missing); create it with `lb service put {service} --vip IP:PORT`"
    )]
    NoService { service: String, path: String },
    #[error("backend {backend} of service {service} does not exist ({path} is missing)")]
    NoBackend {
        service: String,
        backend: SocketAddr,
        path: String,
    },
    #[error(
        "{path} changed while this command ran (another writer); nothing was written, run the command again"
    )]
    Concurrent { path: String },
    #[error(transparent)]
    Zk(#[from] ZkError),
}

fn op(op: &'static str, path: &str) -> impl FnOnce(ZkErr) -> AdminError {
    let f = ZkError::op(op, path);
    move |e| AdminError::Zk(f(e))
}

/// Whether a put created the node or replaced its data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PutOutcome {
    Created,
    Updated,
}

impl PutOutcome {
    pub fn verb(self) -> &'static str {
        match self {
            PutOutcome::Created => "created",
            PutOutcome::Updated => "updated",
        }
    }
}

/// A service field that `--unset` takes back to its documented default.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServiceField {
    Scheduler,
    PersistenceTimeout,
    PersistenceNetmask,
    HealthCheck,
    PanicThreshold,
}

impl ServiceField {
    const ALL: [ServiceField; 5] = [
        ServiceField::Scheduler,
        ServiceField::PersistenceTimeout,
        ServiceField::PersistenceNetmask,
        ServiceField::HealthCheck,
        ServiceField::PanicThreshold,
    ];

    /// The node's JSON key (and the name `--unset` takes).
    pub fn key(self) -> &'static str {
        match self {
            ServiceField::Scheduler => "scheduler",
            ServiceField::PersistenceTimeout => "persistence_timeout_s",
            ServiceField::PersistenceNetmask => "persistence_netmask",
            ServiceField::HealthCheck => "health_check",
            ServiceField::PanicThreshold => "panic_threshold",
        }
    }
}

impl std::str::FromStr for ServiceField {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let key = s.replace('-', "_");
        ServiceField::ALL
            .into_iter()
            .find(|f| f.key() == key)
            .ok_or_else(|| {
                let names: Vec<&str> = ServiceField::ALL.iter().map(|f| f.key()).collect();
                format!(
                    "`{s}` is not a field that can be unset; expected one of {} (the VIP stays)",
                    names.join(", ")
                )
            })
    }
}

/// A change to a service node: the fields given replace the node's, the `unset` ones go back to
/// their defaults, and every other field of the node stays as it is. With `replace` the node is
/// rewritten from the fields given alone (what `put` did before edits were partial).
#[derive(Clone, Debug, Default)]
pub struct ServiceEdit {
    pub vip: Option<SocketAddr>,
    pub scheduler: Option<String>,
    pub persistence_timeout_s: Option<u32>,
    pub persistence_netmask: Option<u8>,
    /// The `health_check` object as JSON.
    pub health_check: Option<serde_json::Value>,
    /// Panic threshold in percent (0: off).
    pub panic_threshold: Option<u8>,
    pub unset: Vec<ServiceField>,
    pub replace: bool,
}

/// Where the edit's check put the VIP it did not know yet: any VIP takes every field's bounds.
const PLACEHOLDER_VIP: &str = "[2001:db8::]:1";

impl ServiceEdit {
    /// Checks the fields given on their own, before anything is read: a bad scheduler or health
    /// check fails without a ZooKeeper connection. The merged node is checked again before the write.
    pub fn check(&self, name: &str) -> Result<(), AdminError> {
        for field in &self.unset {
            if self.given().contains(&field.key()) {
                return Err(AdminError::Refused(format!(
                    "--unset {} and a value for it were both given; give one",
                    field.key()
                )));
            }
        }
        let mut alone = serde_json::Map::new();
        self.write_into(&mut alone);
        if !alone.contains_key("vip") {
            alone.insert("vip".into(), PLACEHOLDER_VIP.into());
        }
        let bytes = serde_json::to_vec(&alone).map_err(|e| AdminError::Refused(e.to_string()))?;
        service_from_json(name, &bytes)?;
        Ok(())
    }

    fn given(&self) -> Vec<&'static str> {
        let mut o = serde_json::Map::new();
        self.write_into(&mut o);
        ServiceField::ALL
            .iter()
            .map(|f| f.key())
            .filter(|k| o.contains_key(*k))
            .collect()
    }

    fn write_into(&self, o: &mut serde_json::Map<String, serde_json::Value>) {
        if let Some(vip) = self.vip {
            o.insert("vip".into(), vip.to_string().into());
        }
        if let Some(s) = &self.scheduler {
            o.insert("scheduler".into(), s.clone().into());
        }
        if let Some(t) = self.persistence_timeout_s {
            o.insert("persistence_timeout_s".into(), t.into());
        }
        if let Some(m) = self.persistence_netmask {
            o.insert("persistence_netmask".into(), m.into());
        }
        if let Some(h) = &self.health_check {
            o.insert("health_check".into(), h.clone());
        }
        if let Some(p) = self.panic_threshold {
            o.insert("panic_threshold".into(), p.into());
        }
    }

    /// The node's new JSON: the existing node (if any, and unless `replace`) with the edit applied.
    pub fn apply_to(
        &self,
        name: &str,
        existing: Option<&[u8]>,
    ) -> Result<serde_json::Value, AdminError> {
        let mut o = match existing {
            Some(data) if !self.replace => match serde_json::from_slice(data) {
                Ok(serde_json::Value::Object(o)) => o,
                _ => {
                    return Err(AdminError::Refused(format!(
                        "the node of service {name} does not hold a JSON object; rewrite it whole with `lb service put {name} --replace --vip IP:PORT ...`"
                    )));
                }
            },
            _ => serde_json::Map::new(),
        };
        self.write_into(&mut o);
        for field in &self.unset {
            o.remove(field.key());
        }
        if !o.contains_key("vip") {
            return Err(AdminError::Refused(match existing {
                None => format!("service {name} does not exist; creating it needs --vip IP:PORT"),
                Some(_) => {
                    format!("--replace rewrites service {name} whole, so it needs --vip IP:PORT")
                }
            }));
        }
        o.entry("proto").or_insert_with(|| "tcp".into());
        Ok(serde_json::Value::Object(o))
    }
}

/// Creates a service or edits its fields (its backends stay): a read-modify-write of the node,
/// written with the version it was read at, so a concurrent edit fails instead of being lost.
/// Refused when the result would be invalid, when an existing backend would no longer fit the VIP,
/// or when another service holds the VIP.
pub async fn put_service(
    client: &Client,
    target: &ZkTarget,
    name: &str,
    edit: &ServiceEdit,
) -> Result<PutOutcome, AdminError> {
    edit.check(name)?;
    let schema = &target.schema;
    let path = schema.service_path(name);
    let existing = match client.get_data(&path).await {
        Ok((data, stat)) => Some((data, stat.version)),
        Err(ZkErr::NoNode) => None,
        Err(e) => return Err(op("read", &path)(e)),
    };
    let data = edit.apply_to(name, existing.as_ref().map(|(d, _)| d.as_slice()))?;
    let bytes = serde_json::to_vec(&data).map_err(|e| AdminError::Refused(e.to_string()))?;
    let (spec, _warnings) = service_from_json(name, &bytes)?;
    let tree = read_tree(client, schema).await?.unwrap_or_default();

    for (other, raw) in &tree {
        if other == name {
            continue;
        }
        let Some(other_data) = &raw.data else {
            continue;
        };
        if let Ok((other_spec, _)) = service_from_json(other, other_data)
            && other_spec.vip_key() == spec.vip_key()
        {
            return Err(ModelError::DuplicateVip {
                first: other.clone(),
                second: name.to_owned(),
                vip: spec.vip,
            }
            .into());
        }
    }
    if let Some(existing) = tree.get(name) {
        for node in existing.backends.keys() {
            if let Ok(addr) = parse_backend_node_name(node) {
                spec.clone()
                    .with_backend(BackendSpec::new(addr))
                    .validate()
                    .map_err(|e| {
                        AdminError::Refused(format!(
                            "{e} (backend {addr} is already registered; change or remove it first)"
                        ))
                    })?;
            }
        }
    }

    let acls = node_acls(target.auth.is_some());
    match existing {
        Some((_, version)) => {
            client
                .set_data(&path, &bytes, Some(version))
                .await
                .map_err(|e| match e {
                    ZkErr::BadVersion => AdminError::Concurrent { path: path.clone() },
                    e => op("write", &path)(e),
                })?;
            Ok(PutOutcome::Updated)
        }
        None => {
            let options = CreateMode::Persistent.with_acls(acls);
            // The parents first (idempotent), then the service and its backends directory together.
            client
                .mkdir(&schema.services_dir(), &options)
                .await
                .map_err(op("create", &schema.services_dir()))?;
            let mut multi = client.new_multi_writer();
            let backends = schema.backends_dir(name);
            multi
                .add_create(&path, &bytes, &options)
                .map_err(op("create", &path))?;
            multi
                .add_create(&backends, &[], &options)
                .map_err(op("create", &backends))?;
            multi.commit().await.map_err(|e| match e {
                MultiWriteError::OperationFailed {
                    source: ZkErr::NodeExists,
                    ..
                } => AdminError::Concurrent { path: path.clone() },
                e => op("create", &path)(e.into()),
            })?;
            Ok(PutOutcome::Created)
        }
    }
}

/// Deletes a service with all its backends in one transaction. Returns the backend node names
/// removed. A backend registering meanwhile makes the transaction fail; it is retried (3 times).
pub async fn remove_service(
    client: &Client,
    target: &ZkTarget,
    name: &str,
) -> Result<Vec<String>, AdminError> {
    let schema = &target.schema;
    let path = schema.service_path(name);
    let dir = schema.backends_dir(name);
    for _ in 0..3 {
        let (_, stat) = match client.get_data(&path).await {
            Ok(x) => x,
            Err(ZkErr::NoNode) => {
                return Err(AdminError::NoService {
                    service: name.to_owned(),
                    path,
                });
            }
            Err(e) => return Err(op("read", &path)(e)),
        };
        let (backends, has_dir) = match client.list_children(&dir).await {
            Ok(children) => (children, true),
            Err(ZkErr::NoNode) => (Vec::new(), false),
            Err(e) => return Err(op("list", &dir)(e)),
        };
        let mut multi = client.new_multi_writer();
        for b in &backends {
            let p = schema.backend_node_path(name, b);
            multi.add_delete(&p, None).map_err(op("delete", &p))?;
        }
        if has_dir {
            multi.add_delete(&dir, None).map_err(op("delete", &dir))?;
        }
        multi
            .add_delete(&path, Some(stat.version))
            .map_err(op("delete", &path))?;
        match multi.commit().await {
            Ok(_) => return Ok(backends),
            // A child appeared or vanished, or the service changed: read again.
            Err(MultiWriteError::OperationFailed {
                source: ZkErr::NotEmpty | ZkErr::NoNode | ZkErr::BadVersion,
                ..
            }) => continue,
            Err(e) => return Err(op("delete", &path)(e.into())),
        }
    }
    Err(AdminError::Concurrent { path })
}

/// One row of `lb service ls`.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct ServiceRow {
    pub name: String,
    pub vip: Option<String>,
    pub scheduler: Option<String>,
    pub persistence_timeout_s: Option<u32>,
    /// Backends the daemon would use.
    pub backends: usize,
    /// Why nodes of this service are rejected, if any are.
    pub errors: Vec<String>,
}

/// Every service, as the daemon would read it (with the reasons for anything it would reject).
pub async fn list_services(
    client: &Client,
    target: &ZkTarget,
) -> Result<Vec<ServiceRow>, AdminError> {
    let schema = &target.schema;
    let tree: RawTree = read_tree(client, schema).await?.unwrap_or_default();
    let snapshot = build_snapshot(schema, &tree, &Default::default());
    let mut rows = Vec::new();
    for name in tree.keys() {
        let spec: Option<&ServiceSpec> = snapshot.state.services.get(name).map(|s| &**s);
        let prefix = schema.service_path(name);
        let errors = snapshot
            .rejections
            .iter()
            .filter(|r| r.path == prefix || r.path.starts_with(&format!("{prefix}/")))
            .map(|r| format!("{}: {}", r.path, r.reason))
            .collect();
        rows.push(ServiceRow {
            name: name.clone(),
            vip: spec.map(|s| s.vip.to_string()),
            scheduler: spec.map(|s| s.scheduler.name().to_owned()),
            persistence_timeout_s: spec.map(|s| s.persistence_timeout_s),
            backends: spec.map_or(0, |s| s.backends.len()),
            errors,
        });
    }
    Ok(rows)
}

/// Reads and validates a service node; the version guards the write that follows.
async fn read_service(
    client: &Client,
    schema: &Schema,
    name: &str,
) -> Result<(ServiceSpec, i32), AdminError> {
    let path = schema.service_path(name);
    match client.get_data(&path).await {
        Ok((data, stat)) => {
            let (spec, _) = service_from_json(name, &data).map_err(|e| {
                AdminError::Refused(format!(
                    "the service node {path} is invalid ({e}); fix it with `lb service put` first"
                ))
            })?;
            Ok((spec, stat.version))
        }
        Err(ZkErr::NoNode) => Err(AdminError::NoService {
            service: name.to_owned(),
            path,
        }),
        Err(e) => Err(op("read", &path)(e)),
    }
}

/// A change to a backend node: the fields given replace the node's, the others stay (a new node
/// starts from weight 1, active).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackendEdit {
    pub weight: Option<u32>,
    pub state: Option<BackendState>,
}

impl BackendEdit {
    /// Checks the fields given on their own, before anything is read.
    pub fn check(&self) -> Result<(), AdminError> {
        match self.weight {
            Some(w) if w > MAX_WEIGHT => Err(AdminError::Refused(format!(
                "--weight {w} is above the maximum {MAX_WEIGHT} (weights go from 0 to {MAX_WEIGHT})"
            ))),
            _ => Ok(()),
        }
    }

    /// The node's new JSON: the existing node's object (or `{}`) with the edit applied; other
    /// fields of the node stay.
    fn apply_to(&self, path: &str, existing: Option<&[u8]>) -> Result<Vec<u8>, AdminError> {
        let mut o = match existing {
            Some(data) if data.iter().all(u8::is_ascii_whitespace) => serde_json::Map::new(),
            Some(data) => match serde_json::from_slice(data) {
                Ok(serde_json::Value::Object(o)) => o,
                _ => {
                    return Err(AdminError::Refused(format!(
                        "{path} does not hold a JSON object; remove it with `lb backend rm` and put it again"
                    )));
                }
            },
            None => serde_json::Map::new(),
        };
        o.entry("weight").or_insert_with(|| 1.into());
        o.entry("state")
            .or_insert_with(|| BackendState::Active.name().into());
        if let Some(w) = self.weight {
            o.insert("weight".into(), w.into());
        }
        if let Some(state) = self.state {
            o.insert("state".into(), state.name().into());
        }
        serde_json::to_vec(&o).map_err(|e| AdminError::Refused(e.to_string()))
    }
}

/// Creates a persistent backend node or edits its fields (see [`BackendEdit`]; an ephemeral,
/// registered node stays ephemeral), checked against its service (port, family, weight) in a
/// transaction that also checks neither node changed since it was read.
pub async fn put_backend(
    client: &Client,
    target: &ZkTarget,
    service: &str,
    addr: SocketAddr,
    edit: &BackendEdit,
) -> Result<PutOutcome, AdminError> {
    edit_backend(client, target, service, addr, edit, true).await
}

/// Changes a backend's weight, keeping everything else; the backend must exist.
pub async fn set_backend_weight(
    client: &Client,
    target: &ZkTarget,
    service: &str,
    addr: SocketAddr,
    weight: u32,
) -> Result<(), AdminError> {
    let edit = BackendEdit {
        weight: Some(weight),
        state: None,
    };
    edit_backend(client, target, service, addr, &edit, false)
        .await
        .map(drop)
}

/// Changes an existing backend (`lb backend drain`); unlike [`put_backend`] it creates none.
pub async fn change_backend(
    client: &Client,
    target: &ZkTarget,
    service: &str,
    addr: SocketAddr,
    edit: &BackendEdit,
) -> Result<(), AdminError> {
    edit_backend(client, target, service, addr, edit, false)
        .await
        .map(drop)
}

async fn edit_backend(
    client: &Client,
    target: &ZkTarget,
    service: &str,
    addr: SocketAddr,
    edit: &BackendEdit,
    create: bool,
) -> Result<PutOutcome, AdminError> {
    edit.check()?;
    let schema = &target.schema;
    let (spec, version) = read_service(client, schema, service).await?;
    let service_path = schema.service_path(service);
    let dir = schema.backends_dir(service);
    let path = schema.backend_path(service, addr);
    let existing = match client.get_data(&path).await {
        Ok((data, stat)) => Some((data, stat.version)),
        Err(ZkErr::NoNode) if create => None,
        Err(ZkErr::NoNode) => {
            return Err(AdminError::NoBackend {
                service: service.to_owned(),
                backend: addr,
                path,
            });
        }
        Err(e) => return Err(op("read", &path)(e)),
    };
    let data = edit.apply_to(&path, existing.as_ref().map(|(d, _)| d.as_slice()))?;
    let (backend, _) = backend_from_json(&backend_node_name(addr), &data)?;
    spec.with_backend(backend).validate()?;
    let options = CreateMode::Persistent.with_acls(node_acls(target.auth.is_some()));
    let has_dir = client
        .check_stat(&dir)
        .await
        .map_err(op("read", &dir))?
        .is_some();
    let mut multi = client.new_multi_writer();
    multi
        .add_check_version(&service_path, version)
        .map_err(op("check", &service_path))?;
    let outcome = match existing {
        Some((_, node_version)) => {
            multi
                .add_set_data(&path, &data, Some(node_version))
                .map_err(op("write", &path))?;
            PutOutcome::Updated
        }
        None => {
            if !has_dir {
                multi
                    .add_create(&dir, &[], &options)
                    .map_err(op("create", &dir))?;
            }
            multi
                .add_create(&path, &data, &options)
                .map_err(op("create", &path))?;
            PutOutcome::Created
        }
    };
    multi.commit().await.map_err(|e| match e {
        MultiWriteError::OperationFailed {
            source: ZkErr::BadVersion | ZkErr::NodeExists | ZkErr::NoNode,
            ..
        } => AdminError::Concurrent { path: path.clone() },
        e => op("write", &path)(e.into()),
    })?;
    Ok(outcome)
}

pub async fn remove_backend(
    client: &Client,
    target: &ZkTarget,
    service: &str,
    backend: SocketAddr,
) -> Result<(), AdminError> {
    let schema = &target.schema;
    let path = schema.backend_path(service, backend);
    match client.delete(&path, None).await {
        Ok(()) => Ok(()),
        Err(ZkErr::NoNode) => Err(AdminError::NoBackend {
            service: service.to_owned(),
            backend,
            path,
        }),
        Err(e) => Err(op("delete", &path)(e)),
    }
}

/// One row of `lb backend ls`.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct BackendRow {
    pub node: String,
    pub weight: Option<u32>,
    pub state: Option<String>,
    /// `ephemeral` (kept by `lb register`) or `persistent` (written by an operator).
    pub kind: &'static str,
    pub error: Option<String>,
}

pub async fn list_backends(
    client: &Client,
    target: &ZkTarget,
    service: &str,
) -> Result<Vec<BackendRow>, AdminError> {
    let schema = &target.schema;
    let (spec, _) = read_service(client, schema, service).await?;
    let dir = schema.backends_dir(service);
    let children = match client.list_children(&dir).await {
        Ok(c) => c,
        Err(ZkErr::NoNode) => Vec::new(),
        Err(e) => return Err(op("list", &dir)(e)),
    };
    let reads: Vec<_> = children
        .iter()
        .map(|c| client.get_data(&schema.backend_node_path(service, c)))
        .collect();
    let mut rows = BTreeMap::new();
    for (node, read) in children.into_iter().zip(reads) {
        let (data, stat) = match read.await {
            Ok(x) => x,
            Err(ZkErr::NoNode) => continue,
            Err(e) => return Err(op("read", &schema.backend_node_path(service, &node))(e)),
        };
        let checked = parse_backend_node_name(&node)
            .map_err(|e| e.to_string())
            .and_then(|_| backend_from_json(&node, &data).map_err(|e| e.to_string()))
            .and_then(|(b, _)| {
                spec.clone()
                    .with_backend(b.clone())
                    .validate()
                    .map(|()| b)
                    .map_err(|e| e.to_string())
            });
        let kind = if stat.ephemeral_owner != 0 {
            "ephemeral"
        } else {
            "persistent"
        };
        let row = match checked {
            Ok(b) => BackendRow {
                node: node.clone(),
                weight: Some(b.weight),
                state: Some(b.state.name().to_owned()),
                kind,
                error: None,
            },
            Err(e) => BackendRow {
                node: node.clone(),
                weight: None,
                state: None,
                kind,
                error: Some(e),
            },
        };
        rows.insert(node, row);
    }
    Ok(rows.into_values().collect())
}

pub fn render_services(rows: &[ServiceRow]) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "{:<24} {:<28} {:<10} {:>8} {:>8}",
        "SERVICE", "VIP", "SCHEDULER", "PERSIST", "BACKENDS"
    );
    for r in rows {
        let _ = writeln!(
            o,
            "{:<24} {:<28} {:<10} {:>8} {:>8}",
            r.name,
            r.vip.as_deref().unwrap_or("-"),
            r.scheduler.as_deref().unwrap_or("-"),
            r.persistence_timeout_s
                .map_or("-".to_owned(), |t| t.to_string()),
            r.backends
        );
        for e in &r.errors {
            let _ = writeln!(o, "  ! rejected: {e}");
        }
    }
    o
}

pub fn render_backends(rows: &[BackendRow]) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "{:<42} {:>6} {:<9} {:<10}",
        "BACKEND", "WEIGHT", "STATE", "KIND"
    );
    for r in rows {
        let _ = writeln!(
            o,
            "{:<42} {:>6} {:<9} {:<10}",
            r.node,
            r.weight.map_or("-".to_owned(), |w| w.to_string()),
            r.state.as_deref().unwrap_or("-"),
            r.kind
        );
        if let Some(e) = &r.error {
            let _ = writeln!(o, "  ! rejected: {e}");
        }
    }
    o
}
