//! The one error type of the config crate: what is wrong with a setting, a
//! file it names, the config file, or a connection it describes. Messages name
//! the setting (`IMIP_…`) and never carry a password.

use std::path::PathBuf;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("{setting}: {reason}")]
    Invalid {
        setting: &'static str,
        reason: String,
    },
    #[error("{setting}: cannot read {}: {source}", path.display())]
    File {
        setting: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {}: {reason}", path.display())]
    ConfigFile { path: PathBuf, reason: String },
    #[error("cannot connect to {service} at {target}: {reason}")]
    Connect {
        service: &'static str,
        target: String,
        reason: String,
    },
}
