//! Start-up's tables built while ZooKeeper is still read: each service's tables are built on a
//! worker thread as soon as its nodes are in, instead of all of them after the whole tree (1,000
//! Maglev tables of 65,537 entries are ~1 s of CPU; the tree of 100,000 backends takes about as
//! long to read).
//!
//! What is built here is only a guess: it uses the service's nodes alone (no last good version,
//! no VIP claims settled, no backend down). [`crate::plan::prebuild_for`] keeps a table only when
//! it is the one the accepted state needs, and builds the others.

use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use crate::plan;
use crate::tables::Prebuilt;
use crate::zk::schema::Schema;
use crate::zk::snapshot::{RawService, service_alone};
use crate::zk::source::ServiceReadHook;

enum Job {
    Build(String, RawService),
    Stop,
}

/// Builder threads fed by a [`ServiceReadHook`]; [`TablesAhead::finish`] collects what they built.
pub struct TablesAhead {
    jobs: Sender<Job>,
    workers: Vec<JoinHandle<()>>,
    built: Arc<Mutex<BTreeMap<String, Prebuilt>>>,
}

impl TablesAhead {
    /// Starts a builder thread per CPU for tables of `table_size` entries per slot and `seed`.
    pub fn start(schema: Schema, table_size: u32, seed: u32) -> TablesAhead {
        let (jobs, queue) = channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        let built = Arc::new(Mutex::new(BTreeMap::new()));
        let schema = Arc::new(schema);
        let threads = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
        let workers = (0..threads)
            .filter_map(|i| {
                let (queue, built, schema) = (queue.clone(), built.clone(), schema.clone());
                std::thread::Builder::new()
                    .name(format!("lb-tables-{i}"))
                    .spawn(move || build_until_stopped(&queue, &built, &schema, table_size, seed))
                    // No thread to spare: fewer builders (none: everything is built later).
                    .ok()
            })
            .collect();
        TablesAhead {
            jobs,
            workers,
            built,
        }
    }

    /// The hook to give the ZooKeeper source: queues each service read for a builder.
    pub fn hook(&self) -> ServiceReadHook {
        let jobs = self.jobs.clone();
        ServiceReadHook(Arc::new(move |name: &str, raw: &RawService| {
            // After `finish` no builder listens: the table is built later, as without this.
            let _ = jobs.send(Job::Build(name.to_owned(), raw.clone()));
        }))
    }

    /// Waits for the builders to finish what was queued so far and returns the tables, by
    /// service name. Services queued later are not built here.
    pub fn finish(self) -> BTreeMap<String, Prebuilt> {
        for _ in &self.workers {
            let _ = self.jobs.send(Job::Stop);
        }
        for worker in self.workers {
            // A builder that panicked leaves its tables to be built later.
            let _ = worker.join();
        }
        std::mem::take(&mut *self.built.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

fn build_until_stopped(
    queue: &Mutex<Receiver<Job>>,
    built: &Mutex<BTreeMap<String, Prebuilt>>,
    schema: &Schema,
    table_size: u32,
    seed: u32,
) {
    yield_to_the_read();
    loop {
        let job = queue.lock().unwrap_or_else(PoisonError::into_inner).recv();
        let Ok(Job::Build(name, raw)) = job else {
            return;
        };
        if let Some(spec) = service_alone(schema, &name, &raw) {
            let tables = plan::prebuild_one(&spec, table_size, seed);
            built
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(name, tables);
        }
    }
}

/// Puts this builder thread below every other (`SCHED_IDLE`): the ZooKeeper read (and, on the
/// same host, the ZooKeeper server) and the data plane's load come first, the builds take what
/// CPU they leave. A refusal is harmless: the builds then share the CPU as equals.
fn yield_to_the_read() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: a plain syscall on this thread (pid 0) with an initialised parameter struct.
    unsafe {
        libc::sched_setscheduler(0, libc::SCHED_IDLE, &param);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::DesiredState;
    use crate::zk::snapshot::build_snapshot;

    fn raw(vip: &str, backends: &[(&str, &str)]) -> RawService {
        RawService {
            data: Some(format!(r#"{{"vip": "{vip}", "scheduler": "maglev"}}"#).into_bytes()),
            backends: backends
                .iter()
                .map(|(n, d)| ((*n).to_owned(), d.as_bytes().to_vec()))
                .collect(),
        }
    }

    /// Tables built from each service's nodes as they are read are the ones the accepted state
    /// needs: `prebuild_for` keeps them (it builds nothing), and they equal what it builds itself.
    #[test]
    fn tables_built_while_reading_are_the_accepted_states_tables() {
        let schema = Schema::new("/lb").expect("schema");
        let mut tree = BTreeMap::new();
        tree.insert(
            "web".to_owned(),
            raw(
                "198.18.100.1:80",
                &[
                    ("198.18.2.11:80", ""),
                    ("198.18.2.12:80", r#"{"weight": 3}"#),
                ],
            ),
        );
        tree.insert(
            "api".to_owned(),
            raw("198.18.100.2:443", &[("198.18.2.21:443", "")]),
        );
        // Not a valid service: nothing is built ahead for it.
        tree.insert(
            "bad".to_owned(),
            RawService {
                data: Some(b"{".to_vec()),
                backends: BTreeMap::new(),
            },
        );
        let ahead = TablesAhead::start(schema.clone(), 1009, 7);
        let hook = ahead.hook();
        for (name, raw) in &tree {
            (hook.0)(name, raw);
        }
        let early = ahead.finish();
        assert_eq!(
            early.keys().map(String::as_str).collect::<Vec<_>>(),
            ["api", "web"]
        );

        let desired: DesiredState = build_snapshot(&schema, &tree, &DesiredState::default()).state;
        let health = crate::health::HealthView::default();
        let (built_here, none) = plan::prebuild_for(&desired, &health, 1009, 7, BTreeMap::new());
        assert_eq!(none, 0);
        let (kept, all) = plan::prebuild_for(&desired, &health, 1009, 7, early.clone());
        assert_eq!(all, 2, "both tables built ahead are kept");
        for (name, spec) in &desired.services {
            let backends: Vec<crate::tables::TableBackend> = spec
                .backends
                .values()
                .enumerate()
                .map(|(i, b)| crate::tables::TableBackend {
                    id: 100 + i as u32,
                    addr: b.addr,
                    weight: b.weight,
                })
                .collect();
            let kind = spec.scheduler.table_kind();
            let ours = early[name].with_ids(kind, &backends, 1009);
            assert!(ours.is_some(), "{name}: the early table does not fit");
            assert_eq!(ours, built_here[name].with_ids(kind, &backends, 1009));
            assert_eq!(ours, kept[name].with_ids(kind, &backends, 1009));
        }
    }

    /// A table built ahead for other backends (a backend's weight changed before the state was
    /// accepted) is not used: the right one is built instead.
    #[test]
    fn a_table_built_for_other_backends_is_built_again() {
        let schema = Schema::new("/lb").expect("schema");
        let read = |weight: &str| {
            let mut tree = BTreeMap::new();
            tree.insert(
                "web".to_owned(),
                raw(
                    "198.18.100.1:80",
                    &[("198.18.2.11:80", ""), ("198.18.2.12:80", weight)],
                ),
            );
            tree
        };
        let (guessed, accepted) = (read(""), read(r#"{"weight": 4}"#));
        let ahead = TablesAhead::start(schema.clone(), 1009, 7);
        (ahead.hook().0)("web", &guessed["web"]);
        let early = ahead.finish();
        let desired = build_snapshot(&schema, &accepted, &DesiredState::default()).state;
        let health = crate::health::HealthView::default();
        let (kept, none) = plan::prebuild_for(&desired, &health, 1009, 7, early.clone());
        assert_eq!(none, 0, "the table built ahead is not kept");
        let backends = [("198.18.2.11:80", 1), ("198.18.2.12:80", 4)].map(|(addr, weight)| {
            crate::tables::TableBackend {
                id: 0,
                addr: addr.parse().expect("addr"),
                weight,
            }
        });
        let kind = desired.services["web"].scheduler.table_kind();
        assert!(early["web"].with_ids(kind, &backends, 1009).is_none());
        assert!(kept["web"].with_ids(kind, &backends, 1009).is_some());
    }
}
