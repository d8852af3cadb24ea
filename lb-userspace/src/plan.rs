use crate::model::DesiredState;
pub struct Plan { pub added: Vec<String>, pub changed: Vec<String>, pub removed: Vec<String> }
pub fn diff(_a: &DesiredState, _d: &DesiredState) -> Plan { todo!() }
impl Plan { pub fn is_empty(&self) -> bool { true } }
