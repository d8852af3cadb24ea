//! Other service registries in ZooKeeper: `lb run --zk-format curator|serverset`. The services
//! (VIP, scheduler, health check) come from a static mapping (`--zk-services FILE`, see
//! `config::check_mapping`); their backends are the registry's instances under
//! `<root>/<registry_name>`, one file per format ([`curator`], [`serverset`]).
//!
//! The registry tree is read into the same [`RawTree`] as our own schema and built into the same
//! [`Snapshot`]: an instance node that cannot be read, or that does not fit its service (port,
//! family), is rejected on its own (logged once, counted) and never takes the others down; the
//! source then runs the state through the same mass-removal guard and fails static the same way.

pub mod curator;
pub mod serverset;

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::de::DeserializeOwned;
use zookeeper_client::Client;

use super::client::ZkError;
use super::schema::Schema;
use super::snapshot::{RawService, RawTree, Rejection, Snapshot, Warning};
use crate::model::{BackendSpec, BackendState, DesiredState, ServiceSpec};

/// `--zk-format`'s registries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegistryFormat {
    Curator,
    Serverset,
}

impl RegistryFormat {
    pub fn name(self) -> &'static str {
        match self {
            RegistryFormat::Curator => "curator",
            RegistryFormat::Serverset => "serverset",
        }
    }
}

/// One service of the mapping: our service (without backends) and where its instances are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegistryService {
    pub spec: ServiceSpec,
    /// Curator: the service name (one node under the root); serverset: the path under the root.
    pub registry_name: String,
    /// Curator: `port` (default) or `sslPort`; serverset: an `additionalEndpoints` name.
    pub endpoint: Option<String>,
}

/// What a registry instance gives a backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Instance {
    pub addr: SocketAddr,
    pub weight: u32,
    pub state: BackendState,
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error(
        "the service mapping lists no services; add [[services]] entries with name, vip and registry_name"
    )]
    NoServices,
    #[error("service \"{service}\": registry_name \"{registry_name}\" is invalid: {reason}")]
    InvalidRegistryName {
        service: String,
        registry_name: String,
        reason: &'static str,
    },
    #[error(
        "service \"{service}\": endpoint \"{endpoint}\" is not one of {expected} (for --zk-format {format})"
    )]
    InvalidEndpoint {
        service: String,
        endpoint: String,
        expected: String,
        format: &'static str,
    },
}

/// A registry format and the services mapped onto it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Registry {
    format: RegistryFormat,
    services: BTreeMap<String, RegistryService>,
}

impl Registry {
    /// Checks the registry names and endpoints against the format (the services themselves were
    /// validated with the model when the mapping was read).
    pub fn new(
        format: RegistryFormat,
        services: Vec<RegistryService>,
    ) -> Result<Registry, RegistryError> {
        if services.is_empty() {
            return Err(RegistryError::NoServices);
        }
        for s in &services {
            check_registry_name(format, &s.spec.name, &s.registry_name)?;
            if let Some(endpoint) = &s.endpoint {
                let valid = match format {
                    RegistryFormat::Curator => curator::ENDPOINTS.contains(&endpoint.as_str()),
                    RegistryFormat::Serverset => !endpoint.is_empty(),
                };
                if !valid {
                    return Err(RegistryError::InvalidEndpoint {
                        service: s.spec.name.clone(),
                        endpoint: endpoint.clone(),
                        expected: match format {
                            RegistryFormat::Curator => curator::ENDPOINTS.join(", "),
                            RegistryFormat::Serverset => "the additionalEndpoints names".into(),
                        },
                        format: format.name(),
                    });
                }
            }
        }
        Ok(Registry {
            format,
            services: services
                .into_iter()
                .map(|s| (s.spec.name.clone(), s))
                .collect(),
        })
    }

    pub fn format(&self) -> RegistryFormat {
        self.format
    }

    pub fn services(&self) -> impl Iterator<Item = &RegistryService> {
        self.services.values()
    }

    /// Where a service's instances are: `<root>/<registry_name>`.
    pub fn instances_dir(&self, schema: &Schema, service: &RegistryService) -> String {
        schema.child_path(&service.registry_name)
    }

    /// Is this child of the instances directory an instance at all?
    fn is_instance_node(&self, node_name: &str) -> bool {
        match self.format {
            RegistryFormat::Curator => true,
            RegistryFormat::Serverset => node_name.starts_with(serverset::MEMBER_PREFIX),
        }
    }

    /// Reads one instance node; `Ok(None)` for one that does not count (a serverset member that is
    /// not `ALIVE`).
    fn parse(
        &self,
        service: &RegistryService,
        data: &[u8],
    ) -> Result<Option<(Instance, Vec<String>)>, String> {
        match self.format {
            RegistryFormat::Curator => curator::parse_instance(
                &service.registry_name,
                data,
                service.endpoint.as_deref() == Some("sslPort"),
            )
            .map(Some),
            RegistryFormat::Serverset => serverset::parse_member(data, service.endpoint.as_deref())
                .map(|m| m.map(|i| (i, Vec::new()))),
        }
    }
}

fn check_registry_name(
    format: RegistryFormat,
    service: &str,
    name: &str,
) -> Result<(), RegistryError> {
    let invalid = |reason| RegistryError::InvalidRegistryName {
        service: service.to_owned(),
        registry_name: name.to_owned(),
        reason,
    };
    if name.is_empty() {
        return Err(invalid("it is empty"));
    }
    if format == RegistryFormat::Curator && name.contains('/') {
        return Err(invalid(
            "a Curator service name is one node under --zk-root, without '/'",
        ));
    }
    for part in name.split('/') {
        if part.is_empty() {
            return Err(invalid(
                "it has an empty path component (a leading, trailing or double '/')",
            ));
        }
        if part == "." || part == ".." || part.chars().any(char::is_control) {
            return Err(invalid(
                "'.', '..' and control characters are not allowed in ZooKeeper paths",
            ));
        }
    }
    Ok(())
}

/// Decodes one node's JSON into `T`; an error names the field it is about.
fn decode<T: DeserializeOwned>(data: &[u8], what: &str) -> Result<T, String> {
    let mut json = serde_json::Deserializer::from_slice(data);
    let value: T = serde_path_to_error::deserialize(&mut json).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            format!("not valid JSON ({inner}); expected a {what}")
        } else if path == "." {
            format!("not a {what}: {inner}")
        } else {
            format!("{path}: {inner}")
        }
    })?;
    json.end()
        .map_err(|e| format!("not valid JSON ({e}); expected one {what}"))?;
    Ok(value)
}

const INSTANCE_SKIPPED: &str = "instance skipped";
const NOT_APPLIED: &str = "service not applied (no good version yet)";
const KEPT_LAST_GOOD: &str = "last good version kept";

/// Builds the desired state: every mapped service with the instances of `raw` (keyed by service
/// name; a service missing from `raw` has no instances, as a Curator service whose container node
/// ZooKeeper removed with its last instance).
pub fn build_snapshot(
    registry: &Registry,
    schema: &Schema,
    raw: &RawTree,
    previous: &DesiredState,
) -> Snapshot {
    let mut out = Snapshot::default();
    let empty = RawService::default();
    for service in registry.services() {
        let name = &service.spec.name;
        let dir = registry.instances_dir(schema, service);
        let node = raw.get(name).unwrap_or(&empty);
        let mut spec = service.spec.clone();
        // Address → the node that gave it, so a second instance at one address is named.
        let mut taken: BTreeMap<SocketAddr, &str> = BTreeMap::new();
        for (node_name, data) in &node.backends {
            if !registry.is_instance_node(node_name) {
                continue;
            }
            let path = format!("{dir}/{node_name}");
            let reject = |reason: String, out: &mut Snapshot| {
                out.rejections.push(Rejection {
                    path: path.clone(),
                    reason,
                    outcome: INSTANCE_SKIPPED,
                });
            };
            let (instance, warnings) = match registry.parse(service, data) {
                Ok(Some(parsed)) => parsed,
                Ok(None) => continue,
                Err(reason) => {
                    reject(reason, &mut out);
                    continue;
                }
            };
            if let Some(first) = taken.get(&instance.addr) {
                reject(
                    format!(
                        "{} is registered by instance {first} already; one backend per address",
                        instance.addr
                    ),
                    &mut out,
                );
                continue;
            }
            let backend = BackendSpec {
                addr: instance.addr,
                weight: instance.weight,
                state: instance.state,
            };
            // Port and family against the VIP, as our own schema checks a backend node.
            if let Err(e) = service
                .spec
                .clone()
                .with_backend(backend.clone())
                .validate()
            {
                reject(e.to_string(), &mut out);
                continue;
            }
            out.warnings
                .extend(warnings.into_iter().map(|message| Warning {
                    path: path.clone(),
                    message,
                }));
            taken.insert(instance.addr, node_name);
            spec.backends.insert(backend.addr, backend);
        }
        // Rules about the whole service (the backend count).
        if let Err(e) = spec.validate() {
            let last_good = previous.services.get(name);
            out.rejections.push(Rejection {
                path: dir,
                reason: e.to_string(),
                outcome: if last_good.is_some() {
                    KEPT_LAST_GOOD
                } else {
                    NOT_APPLIED
                },
            });
            if let Some(last_good) = last_good {
                out.state.services.insert(name.clone(), last_good.clone());
            }
            continue;
        }
        out.state.insert(spec);
    }
    out
}

/// Instance lists per multi-read (as the native schema's backend lists).
const SERVICES_PER_READ: usize = 8;
/// Instance nodes per multi-read.
const INSTANCES_PER_READ: usize = 512;

/// Reads every mapped service's instance nodes; `None` when the root itself does not exist (a
/// wrong `--zk-root` must not empty the fleet). A missing instances directory is no instances;
/// nodes that vanish during the read are left out (their deletion's event triggers another read).
pub async fn read_instances(
    client: &Client,
    schema: &Schema,
    registry: &Registry,
) -> Result<Option<RawTree>, ZkError> {
    use zookeeper_client::{Error as E, MultiReadResult as R};
    let root = schema.root();
    match client.check_stat(root).await {
        Ok(Some(_)) => {}
        Ok(None) => return Ok(None),
        Err(e) => return Err(ZkError::op("stat", root)(e)),
    }
    let services: Vec<&RegistryService> = registry.services().collect();
    let mut paths: Vec<(&str, String, String)> = Vec::new();
    for chunk in services.chunks(SERVICES_PER_READ) {
        let mut reader = client.new_multi_reader();
        for service in chunk {
            let dir = registry.instances_dir(schema, service);
            reader
                .add_get_children(&dir)
                .map_err(ZkError::op("multi-read", &dir))?;
        }
        let lists = reader
            .commit()
            .await
            .map_err(ZkError::op("multi-read", root))?;
        if lists.len() != chunk.len() {
            return Err(ZkError::op("multi-read", root)(E::UnexpectedError(
                "short multi-read".into(),
            )));
        }
        for (service, list) in chunk.iter().zip(lists) {
            let dir = registry.instances_dir(schema, service);
            match list {
                R::Children { children } => {
                    for child in children {
                        if registry.is_instance_node(&child) {
                            paths.push((&service.spec.name, format!("{dir}/{child}"), child));
                        }
                    }
                }
                R::Error { err: E::NoNode } => {}
                R::Error { err } => return Err(ZkError::op("list", &dir)(err)),
                _ => {
                    return Err(ZkError::op("multi-read", root)(E::UnexpectedError(
                        "unexpected multi-read result".into(),
                    )));
                }
            }
        }
    }
    let mut tree: RawTree = services
        .iter()
        .map(|s| (s.spec.name.clone(), RawService::default()))
        .collect();
    let mut pending = Vec::new();
    for chunk in paths.chunks(INSTANCES_PER_READ) {
        let mut reader = client.new_multi_reader();
        for (_, path, _) in chunk {
            reader
                .add_get_data(path)
                .map_err(ZkError::op("multi-read", path))?;
        }
        pending.push((chunk, reader.commit()));
    }
    for (chunk, read) in pending {
        let results = read.await.map_err(ZkError::op("multi-read", root))?;
        if results.len() != chunk.len() {
            return Err(ZkError::op("multi-read", root)(E::UnexpectedError(
                "short multi-read".into(),
            )));
        }
        for ((service, path, child), result) in chunk.iter().zip(results) {
            match result {
                R::Data { data, .. } => {
                    if let Some(raw) = tree.get_mut(*service) {
                        raw.backends.insert(child.clone(), data);
                    }
                }
                R::Error { err: E::NoNode } => {}
                R::Error { err } => return Err(ZkError::op("read", path)(err)),
                _ => {
                    return Err(ZkError::op("multi-read", root)(E::UnexpectedError(
                        "unexpected multi-read result".into(),
                    )));
                }
            }
        }
    }
    Ok(Some(tree))
}

#[cfg(test)]
mod tests;
