//! Runs the planner's ops against a [`MapWriter`], in order. A failed step takes back the steps
//! before it (their undo ops, newest first), so a service is either written in full or left as it
//! was.

use lb_common::BackendEntry;
use tracing::warn;

use crate::dataplane::{DataplaneError, MapWriter};
use crate::plan::{Op, Step};

/// One op.
pub fn write<W: MapWriter + ?Sized>(w: &mut W, op: &Op) -> Result<(), DataplaneError> {
    match op {
        Op::SetBackendConns { id, conns } => w.set_backend_conns(*id, *conns),
        Op::PutBackend { id, entry } => w.put_backend(*id, entry),
        Op::WriteTable { offset, ids } => w.write_table(*offset, ids),
        Op::PutServiceMeta { id, meta } => w.put_service_meta(*id, meta),
        Op::PutService { key, entry } => w.put_service(key, entry),
        Op::DeleteService { key } => w.delete_service(key),
    }
}

/// Every step, or none: on the first failure the steps already written are undone and the
/// failure is returned. Consecutive backend entries go in one batch (`MapWriter::put_backends`).
pub fn write_steps<W: MapWriter + ?Sized>(w: &mut W, steps: &[Step]) -> Result<(), DataplaneError> {
    let mut i = 0;
    while i < steps.len() {
        let batch = backend_batch(&steps[i..]);
        let (next, written) = if batch.len() > 1 {
            (i + batch.len(), w.put_backends(&batch))
        } else {
            (i + 1, write(w, &steps[i].op))
        };
        if let Err(e) = written {
            // A failed batch may be written in part: all of it is taken back too (taking back an
            // entry that was not written writes what it holds).
            let done = if batch.len() > 1 { next } else { i };
            for done in steps[..done].iter().rev() {
                if let Some(undo) = &done.undo
                    && let Err(undo_err) = write(w, undo)
                {
                    warn!("taking back a partial map update failed: {undo_err}");
                }
            }
            return Err(e);
        }
        i = next;
    }
    Ok(())
}

/// The backend entries `steps` start with.
fn backend_batch(steps: &[Step]) -> Vec<(u32, BackendEntry)> {
    steps
        .iter()
        .map_while(|step| match &step.op {
            Op::PutBackend { id, entry } => Some((*id, *entry)),
            _ => None,
        })
        .collect()
}

/// Every op, even past a failure (each stands alone); returns the first failure.
pub fn write_all<W: MapWriter + ?Sized>(w: &mut W, ops: &[Op]) -> Result<(), DataplaneError> {
    let mut first = None;
    for op in ops {
        if let Err(e) = write(w, op) {
            first.get_or_insert(e);
        }
    }
    first.map_or(Ok(()), Err)
}

#[cfg(test)]
pub mod fake {
    //! A recording [`MapWriter`] that models the maps and fails the ops it is told to.

    use std::collections::BTreeMap;

    use lb_common::{BackendEntry, ServiceEntry, ServiceMeta, VipKey};

    use super::*;

    type FailWhen = Box<dyn Fn(&Op) -> bool>;

    /// What the maps hold; what was written, in order.
    #[derive(Default)]
    pub struct RecordingWriter {
        /// Every op that succeeded, in order.
        pub written: Vec<Op>,
        /// Ops that were refused.
        pub refused: Vec<Op>,
        pub maps: FakeMaps,
        fail: Option<FailWhen>,
    }

    /// The maps a packet can see (the schedule pool is kept by offset).
    #[derive(Clone, Debug, Default, PartialEq, Eq)]
    pub struct FakeMaps {
        pub backends: BTreeMap<u32, BackendEntry>,
        pub conns: BTreeMap<u32, u64>,
        pub services: BTreeMap<VipKey, ServiceEntry>,
        pub meta: BTreeMap<u32, ServiceMeta>,
        pub tables: BTreeMap<u32, Vec<u32>>,
    }

    impl FakeMaps {
        /// Everything but the schedule pool: what packets observe besides the live tables.
        pub fn without_tables(&self) -> FakeMaps {
            FakeMaps {
                tables: BTreeMap::new(),
                ..self.clone()
            }
        }

        /// What the service at `key` uses of its slot (its table, then its hash table), as
        /// `DataplaneView::slot_contents` reads it.
        pub fn slot_contents(&self, key: &VipKey) -> Option<Vec<u32>> {
            let e = self.services.get(key)?;
            let t = self.tables.get(&e.table_offset)?;
            t.get(..e.slot_span() as usize).map(<[u32]>::to_vec)
        }

        /// The table the service at `key` schedules from.
        pub fn live_table(&self, key: &VipKey) -> Option<&[u32]> {
            let e = self.services.get(key)?;
            let t = self.tables.get(&e.table_offset)?;
            t.get(..e.table_len as usize)
        }
    }

    impl RecordingWriter {
        /// A writer over maps that already hold `maps` (nothing written yet).
        pub fn over(maps: FakeMaps) -> RecordingWriter {
            RecordingWriter {
                maps,
                ..Default::default()
            }
        }

        /// Refuses every op `when` matches (until [`RecordingWriter::succeed`]).
        pub fn fail_when(&mut self, when: impl Fn(&Op) -> bool + 'static) {
            self.fail = Some(Box::new(when));
        }

        pub fn succeed(&mut self) {
            self.fail = None;
        }

        fn record(&mut self, op: Op) -> Result<(), DataplaneError> {
            if self.fail.as_ref().is_some_and(|f| f(&op)) {
                self.refused.push(op);
                return Err(DataplaneError::OutOfRange {
                    map: "fake",
                    index: 0,
                    len: 0,
                    capacity: 0,
                });
            }
            let m = &mut self.maps;
            match &op {
                Op::SetBackendConns { id, conns } => {
                    m.conns.insert(*id, *conns);
                }
                Op::PutBackend { id, entry } => {
                    m.backends.insert(*id, *entry);
                }
                Op::WriteTable { offset, ids } => {
                    m.tables.insert(*offset, ids.clone());
                }
                Op::PutServiceMeta { id, meta } => {
                    m.meta.insert(*id, *meta);
                }
                Op::PutService { key, entry } => {
                    m.services.insert(*key, *entry);
                }
                Op::DeleteService { key } => {
                    m.services.remove(key);
                }
            }
            self.written.push(op);
            Ok(())
        }
    }

    impl MapWriter for RecordingWriter {
        fn put_backend(&mut self, id: u32, entry: &BackendEntry) -> Result<(), DataplaneError> {
            self.record(Op::PutBackend { id, entry: *entry })
        }
        fn set_backend_conns(&mut self, id: u32, conns: u64) -> Result<(), DataplaneError> {
            self.record(Op::SetBackendConns { id, conns })
        }
        fn write_table(&mut self, offset: u32, ids: &[u32]) -> Result<(), DataplaneError> {
            self.record(Op::WriteTable {
                offset,
                ids: ids.to_vec(),
            })
        }
        fn put_service_meta(&mut self, id: u32, meta: &ServiceMeta) -> Result<(), DataplaneError> {
            self.record(Op::PutServiceMeta { id, meta: *meta })
        }
        fn put_service(
            &mut self,
            key: &VipKey,
            entry: &ServiceEntry,
        ) -> Result<(), DataplaneError> {
            self.record(Op::PutService {
                key: *key,
                entry: *entry,
            })
        }
        fn delete_service(&mut self, key: &VipKey) -> Result<(), DataplaneError> {
            self.record(Op::DeleteService { key: *key })
        }
    }
}

#[cfg(test)]
mod tests {
    use lb_common::BackendEntry;

    use super::fake::RecordingWriter;
    use super::*;

    fn put(id: u32, weight: u32) -> Op {
        Op::PutBackend {
            id,
            entry: BackendEntry {
                weight,
                ..Default::default()
            },
        }
    }

    #[test]
    fn a_failed_step_takes_back_the_steps_before_it_newest_first() {
        let mut w = RecordingWriter::default();
        w.fail_when(|op| matches!(op, Op::WriteTable { .. }));
        let steps = [
            Step::new(put(1, 5), Some(put(1, 1))),
            Step::new(Op::SetBackendConns { id: 2, conns: 0 }, None),
            Step::new(put(2, 5), Some(put(2, 2))),
            Step::new(
                Op::WriteTable {
                    offset: 0,
                    ids: vec![1, 2],
                },
                None,
            ),
            Step::new(put(3, 5), Some(put(3, 3))),
        ];
        assert!(write_steps(&mut w, &steps).is_err());
        let expected = [
            put(1, 5),
            Op::SetBackendConns { id: 2, conns: 0 },
            put(2, 5),
            put(2, 2),
            put(1, 1),
        ];
        assert_eq!(w.written, expected);
        assert_eq!(w.refused.len(), 1);
    }

    #[test]
    fn a_failed_batch_of_backends_is_taken_back_whole_with_the_steps_before_it() {
        let mut w = RecordingWriter::default();
        w.fail_when(|op| *op == put(3, 5));
        let steps = [
            Step::new(Op::SetBackendConns { id: 9, conns: 0 }, None),
            Step::new(put(1, 5), Some(put(1, 1))),
            Step::new(put(2, 5), Some(put(2, 2))),
            Step::new(put(3, 5), Some(put(3, 3))),
            Step::new(put(4, 5), Some(put(4, 4))),
            Step::new(
                Op::WriteTable {
                    offset: 0,
                    ids: vec![1, 2],
                },
                None,
            ),
        ];
        assert!(write_steps(&mut w, &steps).is_err());
        let expected = [
            Op::SetBackendConns { id: 9, conns: 0 },
            put(1, 5),
            put(2, 5),
            put(4, 4),
            put(3, 3),
            put(2, 2),
            put(1, 1),
        ];
        assert_eq!(w.written, expected);
        w.succeed();
        w.written.clear();
        assert!(write_steps(&mut w, &steps).is_ok());
        assert_eq!(
            w.written,
            steps.iter().map(|s| s.op.clone()).collect::<Vec<_>>()
        );
    }

    #[test]
    fn cleanup_ops_all_run_past_a_failure() {
        let mut w = RecordingWriter::default();
        w.fail_when(|op| *op == put(1, 0));
        assert!(write_all(&mut w, &[put(0, 0), put(1, 0), put(2, 0)]).is_err());
        assert_eq!(w.written, [put(0, 0), put(2, 0)]);
        w.succeed();
        assert!(write_all(&mut w, &[put(1, 0)]).is_ok());
    }
}
