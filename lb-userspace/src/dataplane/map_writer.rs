//! The map writes the control plane makes, as a trait: the [`Dataplane`] writes its maps, a unit
//! test writes into a recording fake.

use lb_common::{BackendEntry, ServiceEntry, ServiceMeta, VipKey};

use super::{Dataplane, DataplaneError};

/// Every write `apply` makes to the maps.
pub trait MapWriter {
    fn put_backend(&mut self, id: u32, entry: &BackendEntry) -> Result<(), DataplaneError>;
    /// Many backend entries at once (a cold start writes 100,000); on an error some of them may
    /// be written.
    fn put_backends(&mut self, entries: &[(u32, BackendEntry)]) -> Result<(), DataplaneError> {
        entries
            .iter()
            .try_for_each(|(id, entry)| self.put_backend(*id, entry))
    }
    fn set_backend_conns(&mut self, id: u32, conns: u64) -> Result<(), DataplaneError>;
    /// Backend ids into the schedule pool at `offset`.
    fn write_table(&mut self, offset: u32, ids: &[u32]) -> Result<(), DataplaneError>;
    fn put_service_meta(&mut self, id: u32, meta: &ServiceMeta) -> Result<(), DataplaneError>;
    /// Adds or replaces a service in one atomic map update.
    fn put_service(&mut self, key: &VipKey, entry: &ServiceEntry) -> Result<(), DataplaneError>;
    fn delete_service(&mut self, key: &VipKey) -> Result<(), DataplaneError>;
}

impl MapWriter for Dataplane {
    fn put_backend(&mut self, id: u32, entry: &BackendEntry) -> Result<(), DataplaneError> {
        Dataplane::put_backend(self, id, entry)
    }
    fn put_backends(&mut self, entries: &[(u32, BackendEntry)]) -> Result<(), DataplaneError> {
        Dataplane::put_backends(self, entries)
    }
    fn set_backend_conns(&mut self, id: u32, conns: u64) -> Result<(), DataplaneError> {
        Dataplane::set_backend_conns(self, id, conns)
    }
    fn write_table(&mut self, offset: u32, ids: &[u32]) -> Result<(), DataplaneError> {
        Dataplane::write_table(self, offset, ids)
    }
    fn put_service_meta(&mut self, id: u32, meta: &ServiceMeta) -> Result<(), DataplaneError> {
        Dataplane::put_service_meta(self, id, meta)
    }
    fn put_service(&mut self, key: &VipKey, entry: &ServiceEntry) -> Result<(), DataplaneError> {
        Dataplane::put_service(self, key, entry)
    }
    fn delete_service(&mut self, key: &VipKey) -> Result<(), DataplaneError> {
        Dataplane::delete_service(self, key)
    }
}
