//! The configuration with what it names (the accounts file, the host key), read at start and
//! again on SIGHUP, and what a reload applies to a running broker.
//!
//! A reload is all or nothing: the file, the accounts and the host key must all read; every
//! key that changed must be one a running broker can take (the limits, the mechanisms, the
//! realm, the redirect list…: [`crate::config::Changes`]); then the new values apply to the
//! sessions that start afterwards, and the tunnels carried, the sessions under way and the
//! address assignments stay. Anything else leaves the running configuration as it was.

use std::path::Path;
use std::sync::Arc;

use crate::Broker;
use crate::accounts::Accounts;
use crate::config::BrokerConfig;
use crate::serve::Shared;
use tsp_proto::sasl::passdss::HostKeyPair;

/// A configuration and the files it names, read and checked.
#[derive(Debug)]
pub struct Loaded {
    pub cfg: BrokerConfig,
    pub accounts: Accounts,
    pub host_key: Option<HostKeyPair>,
}

impl Loaded {
    /// Reads the configuration file (`None`: the defaults), its accounts file and host key.
    pub fn read(path: Option<&Path>) -> Result<Self, String> {
        let cfg = match path {
            Some(p) => BrokerConfig::load(p).map_err(|e| e.to_string())?,
            None => BrokerConfig::default(),
        };
        let accounts = match &cfg.accounts_file {
            Some(p) => Accounts::load(p, &cfg.realm).map_err(|e| e.to_string())?,
            None => Accounts::default(),
        };
        let host_key = load_host_key(&cfg)?;
        Ok(Self {
            cfg,
            accounts,
            host_key,
        })
    }
}

fn load_host_key(cfg: &BrokerConfig) -> Result<Option<HostKeyPair>, String> {
    let Some(path) = &cfg.host_key_file else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(path).map_err(|e| {
        format!(
            "cannot read host key {}: {e} (create one with `tsp-broker gen-host-key {}`)",
            path.display(),
            path.display()
        )
    })?;
    HostKeyPair::from_text(&text)
        .map(Some)
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// What a reload applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reloaded {
    /// The keys whose values changed.
    pub changed: Vec<&'static str>,
    /// Accounts read from the accounts file (`None` without one: anonymous only, or a fleet's
    /// database).
    pub accounts: Option<usize>,
}

impl Shared {
    /// Applies a reloaded configuration, or changes nothing and says why: the keys that only
    /// a restart can change.
    pub fn reload(&self, new: Loaded) -> Result<Reloaded, String> {
        let changes = self.lock().config().changes(&new.cfg);
        if !changes.restart.is_empty() {
            return Err(format!(
                "{} cannot change while the broker runs (restart it to apply); nothing was changed",
                changes.restart.join(", ")
            ));
        }
        let cfg = Arc::new(new.cfg);
        let protocol = Broker::server_config(&cfg, new.host_key);
        // A master's redirect list is the live brokers it reads, and `busy` follows the
        // database: both are the fleet's, not the file's.
        let master = cfg.fleet.as_ref().is_some_and(|f| f.master);
        self.update_protocol(|p| {
            p.capabilities = protocol.capabilities;
            p.versions = protocol.versions;
            p.realm = protocol.realm;
            p.host_key = protocol.host_key;
            if !master {
                p.redirect = protocol.redirect;
            }
        });
        let accounts = cfg.accounts_file.as_ref().map(|_| new.accounts.len());
        self.lock().reconfigure(cfg.clone(), new.accounts);
        if let Some(f) = &self.fleet {
            f.set_config(cfg);
        }
        Ok(Reloaded {
            changed: changes.live,
            accounts,
        })
    }
}
