use std::collections::BTreeMap;
use std::net::SocketAddr;
use lb_common::Scheduler;
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct DesiredState { pub services: BTreeMap<String, ServiceSpec> }
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceSpec { pub name: String, pub vip: SocketAddr, pub scheduler: Scheduler, pub persistence_timeout_s: u32, pub backends: BTreeMap<SocketAddr, BackendSpec> }
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendSpec { pub addr: SocketAddr, pub weight: u32 }
impl BackendSpec { pub fn takes_new_flows(&self) -> bool { true } }
impl ServiceSpec { pub fn vip_key(&self) -> lb_common::VipKey { todo!() } pub fn persist_prefix_len(&self) -> u32 { 0 } }
