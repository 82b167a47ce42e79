//! Plugins uploaded through the API: kept in the store ([`PluginBlobs`]) so that every replica
//! loads them, and announced on the bus (`sys.plugins.changed`) so that the others load them at
//! once rather than at their next look. The registry itself knows neither the store nor the bus;
//! these functions keep its API-sourced plugins in step with both.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;

use crate::bus::{SharedBus, publish_json};
use crate::plugins::{LoadError, PluginInfo, PluginRegistry, Source, check_name};
use crate::protocol::{PluginsChangedMsg, VERSION};
use crate::store::{PluginBlobs, StoreError};
use crate::time::now_ms;

/// How often replicas compare their API plugins with the store, besides on each notice.
const STORE_RESYNC: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("plugin `{name}` comes from {from:?}, not from the API; it cannot be deleted here")]
    NotUploaded { name: String, from: Source },
}

/// Uploads a plugin through the API: loads it here first (so a broken component is refused
/// with the reason and stored nowhere), stores it, puts it in service, and tells the other
/// replicas. Until it is stored, whatever served the name still does.
pub async fn upload(
    registry: Arc<PluginRegistry>,
    store: &dyn PluginBlobs,
    bus: &SharedBus,
    name: &str,
    bytes: Vec<u8>,
) -> Result<PluginInfo, UploadError> {
    check_name(name)?;
    let bytes = Arc::new(bytes);
    let (this, owned_name, b) = (registry.clone(), name.to_string(), bytes.clone());
    let component = tokio::task::spawn_blocking(move || this.load(&owned_name, Source::Api, &b))
        .await
        .map_err(|e| LoadError::Instantiate(format!("the loader stopped: {e}")))??;
    store
        .plugin_put(name, &bytes, component.hash(), now_ms())
        .await?;
    let plugin = registry.put_in_service(name, Source::Api, component);
    announce(bus, name).await;
    Ok(plugin.info(None))
}

/// Deletes an uploaded plugin everywhere. `Ok(false)`: there was none by that name.
pub async fn delete(
    registry: &PluginRegistry,
    store: &dyn PluginBlobs,
    bus: &SharedBus,
    name: &str,
) -> Result<bool, UploadError> {
    if registry.loaded_from(name, Source::Api).is_none()
        && let Some(other) = registry.get(name)
    {
        return Err(UploadError::NotUploaded {
            name: name.to_string(),
            from: other.source(),
        });
    }
    let existed = store.plugin_delete(name).await?;
    let removed = registry.remove(name, Source::Api);
    announce(bus, name).await;
    Ok(existed || removed)
}

/// Makes the API plugins in service match the store's.
pub async fn sync_from_store(
    registry: Arc<PluginRegistry>,
    store: &dyn PluginBlobs,
) -> Result<(), StoreError> {
    let stored = store.plugin_list().await?;
    let mut wanted = Vec::new();
    for meta in stored {
        wanted.push(meta.name.clone());
        if !registry.wants(&meta.name, Source::Api, &meta.hash) {
            continue;
        }
        let Some(stored) = store.plugin_get(&meta.name).await? else {
            continue;
        };
        let this = registry.clone();
        let _ = tokio::task::spawn_blocking(move || {
            this.install(&stored.name, Source::Api, &stored.bytes)
        })
        .await;
    }
    for name in registry.names_from(Source::Api) {
        if !wanted.contains(&name) {
            registry.remove(&name, Source::Api);
        }
    }
    Ok(())
}

/// Follows uploads and deletes made through any replica: on each `sys.plugins.changed`, and
/// every few seconds in case a notice was lost.
pub async fn follow_store(
    registry: Arc<PluginRegistry>,
    store: Arc<dyn PluginBlobs>,
    bus: SharedBus,
) {
    let subject = bus.subjects().plugins_changed();
    let mut notices = match bus.subscribe(&subject).await {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot subscribe to plugin changes; polling the store");
            None
        }
    };
    loop {
        if let Err(e) = sync_from_store(registry.clone(), store.as_ref()).await {
            tracing::warn!(error = %e, "cannot read the uploaded plugins; retrying");
        }
        let notice = async {
            match notices.as_mut() {
                Some(n) => n.next().await.is_some(),
                None => std::future::pending().await,
            }
        };
        if let Ok(false) = tokio::time::timeout(STORE_RESYNC, notice).await {
            notices = None;
        }
    }
}

async fn announce(bus: &SharedBus, name: &str) {
    let msg = PluginsChangedMsg {
        v: VERSION,
        name: name.to_string(),
    };
    let subject = bus.subjects().plugins_changed();
    if let Err(e) = publish_json(bus.as_ref(), &subject, &msg).await {
        tracing::warn!(error = %e, "could not announce a plugin change; other replicas catch up within seconds");
    }
}
