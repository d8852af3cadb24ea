//! Which services differ between the applied state and the desired one (by name and spec).

use crate::model::DesiredState;

/// Service names to add, change and remove, each list sorted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NameDiff {
    pub added: Vec<String>,
    /// In both states but with any field, backend, weight or state different.
    pub changed: Vec<String>,
    pub removed: Vec<String>,
}

impl NameDiff {
    /// Nothing to do.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.changed.is_empty() && self.removed.is_empty()
    }
}

/// Compares the applied state with the desired one, service by service.
pub fn diff(applied: &DesiredState, desired: &DesiredState) -> NameDiff {
    let mut plan = NameDiff::default();
    // BTreeMap iteration is in name order, so every list comes out sorted.
    for (name, want) in &desired.services {
        match applied.services.get(name) {
            None => plan.added.push(name.clone()),
            Some(have) if have != want => plan.changed.push(name.clone()),
            Some(_) => {}
        }
    }
    plan.removed = applied
        .services
        .keys()
        .filter(|name| !desired.services.contains_key(*name))
        .cloned()
        .collect();
    plan
}

#[cfg(test)]
mod tests {
    use lb_common::Scheduler;

    use super::*;
    use std::net::SocketAddr;

    use crate::model::{BackendSpec, BackendState, HealthCheckSpec, ServiceSpec};

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("test address")
    }

    fn service(name: &str, vip: &str, backends: &[&str]) -> ServiceSpec {
        backends
            .iter()
            .fold(ServiceSpec::new(name, addr(vip)), |s, b| {
                s.with_backend(BackendSpec::new(addr(b)))
            })
    }

    fn state(services: &[ServiceSpec]) -> DesiredState {
        DesiredState::of(services.iter().cloned())
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn identical_states_need_nothing() {
        let s = state(&[service("web", "198.18.100.1:80", &["198.18.2.11:80"])]);
        assert!(diff(&s, &s).is_empty());
        assert!(diff(&DesiredState::default(), &DesiredState::default()).is_empty());
    }

    #[test]
    fn sorts_added_changed_and_removed_services() {
        let web = service("web", "198.18.100.1:80", &["198.18.2.11:80"]);
        let api = service("api", "198.18.100.2:80", &["198.18.2.21:80"]);
        let old = service("old", "198.18.100.3:80", &[]);
        let zed = service("zed", "198.18.100.4:80", &[]);
        let applied = state(&[web.clone(), api.clone(), old, zed]);
        let new_web = web.with_backend(BackendSpec::new(addr("198.18.2.12:80")));
        let b = service("b", "198.18.100.5:80", &[]);
        let a = service("a", "198.18.100.6:80", &[]);
        let desired = state(&[new_web, api, b, a]);
        let plan = diff(&applied, &desired);
        assert_eq!(plan.added, names(&["a", "b"]));
        assert_eq!(plan.changed, names(&["web"]));
        assert_eq!(plan.removed, names(&["old", "zed"]));
        assert!(!plan.is_empty());
        let back = diff(&desired, &applied);
        assert_eq!(
            (back.added, back.removed),
            (names(&["old", "zed"]), names(&["a", "b"]))
        );
    }

    #[test]
    fn every_field_counts_as_a_change() {
        let base = service("web", "198.18.100.1:80", &["198.18.2.11:80"]);
        let b = addr("198.18.2.11:80");
        type Edit = Box<dyn Fn(&mut ServiceSpec)>;
        let edits: Vec<(&str, Edit)> = vec![
            ("vip", Box::new(|s| s.vip = addr("198.18.100.9:80"))),
            (
                "scheduler",
                Box::new(|s| s.scheduler = Scheduler::RoundRobin),
            ),
            (
                "persistence timeout",
                Box::new(|s| s.persistence_timeout_s = 60),
            ),
            (
                "persistence netmask",
                Box::new(|s| s.persistence_netmask = Some(24)),
            ),
            (
                "health check",
                Box::new(|s| s.health_check = Some(HealthCheckSpec::default())),
            ),
            (
                "weight",
                Box::new(move |s| s.backends.get_mut(&b).expect("b").weight = 5),
            ),
            (
                "state",
                Box::new(move |s| {
                    s.backends.get_mut(&b).expect("b").state = BackendState::Draining
                }),
            ),
            (
                "backend set",
                Box::new(move |s| {
                    s.backends.remove(&b);
                }),
            ),
        ];
        for (what, edit) in edits {
            let mut changed = base.clone();
            edit(&mut changed);
            let plan = diff(&state(std::slice::from_ref(&base)), &state(&[changed]));
            assert_eq!(plan.changed, names(&["web"]), "{what}");
            assert!(plan.added.is_empty() && plan.removed.is_empty(), "{what}");
        }
    }
}
