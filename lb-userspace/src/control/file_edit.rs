//! Edits one backend of a configuration file in place: the TOML document is changed where the
//! backend is, so comments, order and layout stay, and the result is validated as a whole before
//! anyone writes it.

use std::net::SocketAddr;

use toml_edit::{DocumentMut, Item, TableLike, Value};

use crate::config::check_config;
use crate::model::{BackendState, DesiredState};

/// What to change on the backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendChange {
    Weight(u32),
    State(BackendState),
}

/// Why a file edit was refused; nothing was written.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EditError {
    #[error("{origin} is not valid TOML any more ({reason}); fix it first")]
    Unparsable { origin: String, reason: String },
    #[error("{origin} has no service named {service:?}")]
    NoService { origin: String, service: String },
    #[error("service {service} in {origin} has no backend {backend}")]
    NoBackend {
        origin: String,
        service: String,
        backend: SocketAddr,
    },
    #[error("the edited file would be invalid, nothing was written:\n{0}")]
    Invalid(String),
}

/// The file's new text and the state it describes.
#[derive(Debug)]
pub struct Edited {
    pub text: String,
    pub desired: DesiredState,
    /// The field's value before the change, as written (`None`: it was not written).
    pub was: Option<String>,
}

pub fn edit_backend(
    text: &str,
    origin: &str,
    service: &str,
    backend: SocketAddr,
    change: BackendChange,
) -> Result<Edited, EditError> {
    let mut doc: DocumentMut =
        text.parse()
            .map_err(|e: toml_edit::TomlError| EditError::Unparsable {
                origin: origin.to_owned(),
                reason: e.message().to_owned(),
            })?;
    let no_service = || EditError::NoService {
        origin: origin.to_owned(),
        service: service.to_owned(),
    };
    let services = doc.get_mut("services").ok_or_else(no_service)?;
    let (svc, _) = tables_mut(services)
        .into_iter()
        .find(|(t, _)| t.get("name").and_then(Item::as_str) == Some(service))
        .ok_or_else(no_service)?;
    let no_backend = || EditError::NoBackend {
        origin: origin.to_owned(),
        service: service.to_owned(),
        backend,
    };
    let backends = svc.get_mut("backends").ok_or_else(no_backend)?;
    let (entry, inline) = tables_mut(backends)
        .into_iter()
        .find(|(t, _)| {
            t.get("addr")
                .and_then(Item::as_str)
                .and_then(|a| a.parse::<SocketAddr>().ok())
                == Some(backend)
        })
        .ok_or_else(no_backend)?;
    let (key, value) = match change {
        BackendChange::Weight(w) => ("weight", Value::from(i64::from(w))),
        BackendChange::State(s) => ("state", Value::from(s.name())),
    };
    let was = entry.get(key).and_then(Item::as_value).map(|v| {
        let mut bare = v.clone();
        bare.decor_mut().clear();
        bare.to_string()
    });
    match entry.get_mut(key) {
        // Keep the old value's surrounding spaces and comments.
        Some(Item::Value(old)) => {
            let decor = old.decor().clone();
            *old = value;
            *old.decor_mut() = decor;
        }
        _ => {
            entry.insert(key, Item::Value(value));
            if inline {
                // `{ addr = "…" }` grows to `{ addr = "…", state = "…" }`, not `{ addr = "…" , … }`.
                entry.fmt();
            }
        }
    }
    let text = doc.to_string();
    let desired = check_config(&text, origin).map_err(|e| EditError::Invalid(e.to_string()))?;
    Ok(Edited { text, desired, was })
}

/// The tables of `[[x]]` (an array of tables) or `x = [{...}, ...]` (an array of inline tables),
/// each with whether it is inline.
fn tables_mut(item: &mut Item) -> Vec<(&mut dyn TableLike, bool)> {
    match item {
        Item::ArrayOfTables(a) => a
            .iter_mut()
            .map(|t| (t as &mut dyn TableLike, false))
            .collect(),
        Item::Value(Value::Array(a)) => a
            .iter_mut()
            .filter_map(|v| v.as_inline_table_mut())
            .map(|t| (t as &mut dyn TableLike, true))
            .collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"# production web tier
[[services]]
name = "web"
vip = "198.18.100.1:80"
backends = [
  { addr = "198.18.2.11:80", weight = 1 },   # rack a
  { addr = "198.18.2.12:80" },
]

[[services]]
name = "api"
vip = "[2001:db8::100]:443"

[[services.backends]]
addr = "[2001:db8::11]:443"
weight = 5 # canary
"#;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_weight_change_keeps_comments_and_layout() {
        let e = edit_backend(
            FILE,
            "lb.toml",
            "web",
            addr("198.18.2.11:80"),
            BackendChange::Weight(3),
        )
        .unwrap();
        assert_eq!(
            e.text,
            FILE.replace(
                "{ addr = \"198.18.2.11:80\", weight = 1 }",
                "{ addr = \"198.18.2.11:80\", weight = 3 }"
            )
        );
        assert_eq!(e.was.as_deref(), Some("1"));
        assert_eq!(
            e.desired.services["web"].backends[&addr("198.18.2.11:80")].weight,
            3
        );
    }

    #[test]
    fn a_field_not_written_is_added_and_tables_work_too() {
        let e = edit_backend(
            FILE,
            "lb.toml",
            "web",
            addr("198.18.2.12:80"),
            BackendChange::State(BackendState::Draining),
        )
        .unwrap();
        assert!(
            e.text
                .contains("{ addr = \"198.18.2.12:80\", state = \"draining\" }"),
            "{}",
            e.text
        );
        assert_eq!(e.was, None);
        assert_eq!(
            e.desired.services["web"].backends[&addr("198.18.2.12:80")].state,
            BackendState::Draining
        );
        // `[[services.backends]]` tables, an IPv6 address written another way.
        let e = edit_backend(
            FILE,
            "lb.toml",
            "api",
            addr("[2001:0db8::0011]:443"),
            BackendChange::Weight(0),
        )
        .unwrap();
        assert!(e.text.contains("weight = 0 # canary"), "{}", e.text);
        assert_eq!(e.was.as_deref(), Some("5"));
    }

    #[test]
    fn refusals_name_what_is_missing_or_wrong() {
        let err = edit_backend(
            FILE,
            "lb.toml",
            "db",
            addr("198.18.2.11:80"),
            BackendChange::Weight(1),
        )
        .unwrap_err();
        assert_eq!(err.to_string(), "lb.toml has no service named \"db\"");
        let err = edit_backend(
            FILE,
            "lb.toml",
            "web",
            addr("198.18.2.13:80"),
            BackendChange::Weight(1),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "service web in lb.toml has no backend 198.18.2.13:80"
        );
        let err = edit_backend(
            FILE,
            "lb.toml",
            "web",
            addr("198.18.2.11:80"),
            BackendChange::Weight(70_000),
        )
        .unwrap_err();
        let EditError::Invalid(why) = err else {
            panic!("{err}");
        };
        assert!(why.contains("lb.toml:6"), "{why}");
        assert!(why.contains("weight"), "{why}");
        let err = edit_backend(
            "[[services]\n",
            "lb.toml",
            "web",
            addr("198.18.2.11:80"),
            BackendChange::Weight(1),
        )
        .unwrap_err();
        assert!(matches!(err, EditError::Unparsable { .. }), "{err}");
    }
}
