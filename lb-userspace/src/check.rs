//! `lb config check`: validates a configuration file, or the tree in ZooKeeper, exactly as `lb run`
//! does (the same decoders and rules), and reports every error rather than the first. Needs no
//! root, no interface and no data plane.

use std::path::Path;
use std::time::Duration;

use crate::model::DesiredState;
use crate::zk::client::ZkTarget;
use crate::zk::registry::{self, Registry};
use crate::zk::snapshot::build_snapshot;
use crate::zk::source::read_tree;

/// What a check found.
#[derive(Debug)]
pub struct CheckReport {
    /// The services that would apply.
    pub accepted: DesiredState,
    /// One line per error: `FILE:LINE:COL: field: reason`, or `znode path: reason (outcome)`.
    pub errors: Vec<String>,
}

impl CheckReport {
    pub fn ok(&self) -> bool {
        self.errors.is_empty()
    }

    /// The report as printed: every error, then a summary line.
    pub fn render(&self, what: &str) -> String {
        let mut out: String = self.errors.iter().map(|e| format!("{e}\n")).collect();
        let services = self.accepted.services.len();
        let backends: usize = self
            .accepted
            .services
            .values()
            .map(|s| s.backends.len())
            .sum();
        if self.ok() {
            out.push_str(&format!(
                "{what}: ok: {services} service(s), {backends} backend(s)\n"
            ));
        } else {
            out.push_str(&format!("{what}: {} error(s)\n", self.errors.len()));
        }
        out
    }
}

/// Checks a TOML configuration file. A file with any error is rejected as a whole by `lb run`, so
/// no service is listed as accepted then.
pub fn file(path: &Path) -> CheckReport {
    match crate::config::check_config_file(path) {
        Ok(accepted) => CheckReport {
            accepted,
            errors: Vec::new(),
        },
        Err(errors) => CheckReport {
            accepted: DesiredState::default(),
            errors: errors.errors().iter().map(ToString::to_string).collect(),
        },
    }
}

/// Checks the tree under the target's root: every node `lb run` would reject or only partly take.
/// With a `registry` (`--zk-format curator|serverset`), the registry's instances of each mapped
/// service, decoded as the daemon decodes them.
pub async fn zookeeper(
    target: &ZkTarget,
    session_timeout: Duration,
    registry: Option<&Registry>,
) -> anyhow::Result<CheckReport> {
    let client = target.connect(session_timeout).await?;
    let schema = &target.schema;
    let previous = DesiredState::default();
    let snapshot = match registry {
        None => {
            let Some(raw) = read_tree(&client, schema).await? else {
                anyhow::bail!(
                    "{} does not exist: there is nothing to check (create it with `lb service put`)",
                    schema.services_dir()
                );
            };
            build_snapshot(schema, &raw, &previous)
        }
        Some(registry) => {
            let Some(raw) = registry::read_instances(&client, schema, registry).await? else {
                anyhow::bail!(
                    "{} does not exist: there is no {} registry there (check --zk-root)",
                    schema.root(),
                    registry.format().name()
                );
            };
            registry::build_snapshot(registry, schema, &raw, &previous)
        }
    };
    let mut errors: Vec<String> = snapshot
        .rejections
        .iter()
        .map(|r| format!("{}: {} ({})", r.path, r.reason, r.outcome))
        .collect();
    errors.sort();
    Ok(CheckReport {
        accepted: snapshot.state,
        errors,
    })
}
