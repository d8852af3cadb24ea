use std::path::{Path, PathBuf};
use lb_common::*;
use lb_common::limits::Capacity;
pub struct LoadOptions { pub capacity: Capacity, pub pin_dir: Option<PathBuf>, pub kernel_log: bool }
#[derive(Clone, Copy, Debug)] pub enum AttachMode { Auto, Native, Generic }
#[derive(Debug, Clone, Copy, PartialEq, Eq)] pub enum AttachedMode { Native, Generic }
#[derive(Debug, thiserror::Error)] #[error("x")] pub struct DataplaneError;
pub struct Dataplane { m: MapsView }
pub struct MapsView;
type R<T> = Result<T, DataplaneError>;
impl Dataplane {
 pub fn load(_o: &LoadOptions) -> R<Self> { todo!() }
 pub fn attach_balancer(&mut self, _i: &str, _m: AttachMode) -> R<AttachedMode> { todo!() }
 pub fn attach_decap(&mut self, _i: &str, _m: AttachMode) -> R<AttachedMode> { todo!() }
 pub fn set_config(&mut self, _c: &LbConfig) -> R<()> { todo!() }
 pub fn put_service(&mut self, _k: &VipKey, _e: &ServiceEntry) -> R<()> { todo!() }
 pub fn delete_service(&mut self, _k: &VipKey) -> R<()> { todo!() }
 pub fn put_service_meta(&mut self, _i: u32, _m: &ServiceMeta) -> R<()> { todo!() }
 pub fn put_backend(&mut self, _i: u32, _e: &BackendEntry) -> R<()> { todo!() }
 pub fn write_table(&mut self, _o: u32, _i: &[u32]) -> R<()> { todo!() }
 pub fn set_backend_conns(&mut self, _i: u32, _c: u64) -> R<()> { todo!() }
 pub fn add_decap_addr(&mut self, _k: &DecapKey) -> R<()> { todo!() }
 pub fn delete_flow(&mut self, _k: &FlowKey) -> R<()> { todo!() }
 pub fn maps(&self) -> &MapsView { &self.m }
 pub fn remove_pins(&self) {}
}
impl MapsView {
 pub fn open_pinned(_p: &Path) -> R<Self> { todo!() }
 pub fn counters(&self) -> R<Vec<(Counter, u64)>> { todo!() }
 pub fn decap_counters(&self) -> R<Vec<(DecapCounter, u64)>> { todo!() }
 pub fn services(&self) -> R<Vec<(VipKey, ServiceEntry)>> { todo!() }
 pub fn service_meta(&self, _i: u32) -> R<ServiceMeta> { todo!() }
 pub fn backend(&self, _i: u32) -> R<BackendEntry> { todo!() }
 pub fn backend_conns(&self, _i: u32) -> R<u64> { todo!() }
 pub fn service_stats(&self, _i: u32) -> R<TrafficStats> { todo!() }
 pub fn backend_stats(&self, _i: u32) -> R<TrafficStats> { todo!() }
 pub fn flows(&self) -> R<Vec<(FlowKey, FlowEntry)>> { todo!() }
 pub fn capacity(&self) -> Capacity { todo!() }
}
pub fn now_coarse_ns() -> u64 { 0 }
