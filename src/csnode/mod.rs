//! The running Conversation Server (layer 3): its configuration file, the
//! io thread of one shard around the sans-IO [`crate::cs::server::Server`],
//! and the registration of its hosted groups with the edge.

pub mod config;
pub mod deferred_store;
pub mod node;
pub mod sync;

use crate::cs::directory::Directory;
use arc_swap::ArcSwap;
use std::sync::Arc;

pub use crate::sip::hash::random_key;

/// A shard running: its SIP thread and, when the edge's admin API is
/// configured, its group registration.
pub struct Shard {
    /// The shard's name (`[[shard]] name`).
    pub name: String,
    pub node: node::Node,
    pub sync: Option<sync::GroupSync>,
    pub directory: Arc<ArcSwap<Directory>>,
}

/// Start shard `name` of configuration `text` (`sync`: register groups).
pub fn start_shard(text: &str, name: &str, with_sync: bool) -> Result<Shard, String> {
    let valid = config::load(text, name, random_key()).map_err(|e| e.to_string())?;
    start(valid, with_sync)
}

/// Start the shard of a loaded configuration (`valid.settings.name`); the
/// caller keeps what else it needs of `valid` (`[admin]`, the shard list).
pub fn start(valid: config::Valid, with_sync: bool) -> Result<Shard, String> {
    let name = valid.settings.name.clone();
    let directory = Arc::new(ArcSwap::from_pointee(valid.directory));
    let admin = valid.edge_admin.filter(|_| with_sync);
    let sync = match admin {
        Some(a) => {
            let addr = sync::admin_addr(&a.url)
                .ok_or_else(|| format!("edge_admin.url: '{}' is no http://host:port", a.url))?;
            let s = sync::SyncSettings {
                admin: addr,
                token: a.token,
                shard: name.clone(),
                interval: std::time::Duration::from_millis(a.sync_interval_ms.max(100)),
            };
            Some(sync::GroupSync::start(s, Arc::clone(&directory)).map_err(|e| e.to_string())?)
        }
        None => None,
    };
    let store = match &valid.deferred_store {
        Some(path) => Some(
            deferred_store::DeferredStore::open(path).map_err(|e| format!("shard {name}: {e}"))?,
        ),
        None => None,
    };
    let node = node::Node::start(valid.settings, Arc::clone(&directory), store)
        .map_err(|e| format!("shard {name}: {e}"))?;
    Ok(Shard {
        name,
        node,
        sync,
        directory,
    })
}
