use std::path::Path;
#[derive(Debug, thiserror::Error)] #[error("x")] pub struct ConfigError;
pub fn load_config_file(_p: &Path) -> Result<crate::model::DesiredState, ConfigError> { todo!() }
