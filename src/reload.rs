//! Live reload (SPEC §8): SIGHUP, or a change in the directory of the config file or of any secret
//! file, loads and validates the whole configuration again and swaps it in. Directories are watched,
//! not files, because Kubernetes updates mounted Secrets and ConfigMaps by swapping a `..data`
//! symlink. An invalid configuration is logged and counted, and the old one keeps serving.
//! Listener addresses are bound once; changing them needs a restart (logged).
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::{mpsc, watch};

use crate::config::{Config, ConfigError};
use crate::proxy::Proxy;

/// Changes arrive in bursts (a symlink swap is several events); reload once they settle.
const SETTLE: Duration = Duration::from_millis(200);

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("cannot watch {path} for changes: {source}")]
    Watch {
        path: PathBuf,
        #[source]
        source: notify::Error,
    },
}

/// Watches until `stop` turns true.
pub async fn watch(
    path: PathBuf,
    proxy: Arc<Proxy>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), WatchError> {
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .expect("cannot listen for SIGHUP");
    let (tx, mut changes) = mpsc::channel::<()>(1);
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok_and(|e| !e.kind.is_access()) {
            // A full channel already holds a pending reload.
            let _ = tx.try_send(());
        }
    })
    .map_err(|source| WatchError::Watch {
        path: path.clone(),
        source,
    })?;
    let mut watched = BTreeSet::new();
    rewatch(&mut watcher, &mut watched, &proxy.config())?;
    // A change between the first load and the watch being in place would otherwise go unnoticed.
    if Config::load(&path, std::env::vars()).is_ok_and(|c| c.digest != proxy.config().digest) {
        tracing::info!("configuration changed during start-up: reloading");
        let _ = reload(&path, &proxy);
    }
    tracing::info!(directories = ?watched, "live reload on: watching for changes; SIGHUP reloads too");
    loop {
        let changed = tokio::select! {
            _ = stop.wait_for(|stop| *stop) => return Ok(()),
            _ = hangup.recv() => false,
            Some(()) = changes.recv() => true,
        };
        if changed {
            // Let the burst settle, then reload once.
            while let Ok(Some(())) = tokio::time::timeout(SETTLE, changes.recv()).await {}
            tracing::info!("configuration or secret files changed: reloading");
        } else {
            tracing::info!("SIGHUP: reloading the configuration");
        }
        if reload(&path, &proxy).is_ok()
            && let Err(e) = rewatch(&mut watcher, &mut watched, &proxy.config())
        {
            tracing::warn!("{}", crate::error::error_chain_text(&e));
        }
    }
}

/// Watches the directory of every file the configuration depends on.
fn rewatch(
    watcher: &mut RecommendedWatcher,
    watched: &mut BTreeSet<PathBuf>,
    config: &Config,
) -> Result<(), WatchError> {
    let wanted: BTreeSet<PathBuf> = config
        .watched_files
        .iter()
        .map(|f| directory_of(f))
        .collect();
    for gone in watched.difference(&wanted) {
        let _ = watcher.unwatch(gone);
    }
    for dir in wanted.difference(watched) {
        watcher
            .watch(dir, RecursiveMode::NonRecursive)
            .map_err(|source| WatchError::Watch {
                path: dir.clone(),
                source,
            })?;
    }
    *watched = wanted;
    Ok(())
}

fn directory_of(file: &Path) -> PathBuf {
    match file.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
        _ => PathBuf::from("."),
    }
}

/// Loads `path` again and swaps it in; on error the running configuration stays.
pub fn reload(path: &Path, proxy: &Proxy) -> Result<(), ConfigError> {
    let metrics = proxy.metrics();
    let old = proxy.config();
    let mut new = match Config::load(path, std::env::vars()) {
        Ok(config) => {
            // Even when nothing changed: a file's mode may have, and the warning stays true until
            // it is fixed.
            for warning in &config.warnings {
                tracing::warn!("{warning}");
            }
            config
        }
        Err(e) => {
            metrics.config_reload("error");
            tracing::error!(
                version = old.version,
                "configuration reload failed, still serving the previous one: {e}"
            );
            return Err(e);
        }
    };
    if new.digest == old.digest {
        // A burst of events, or a SIGHUP, with nothing changed: keep the running config as it is.
        metrics.config_reload("success");
        tracing::info!(version = old.version, "configuration reloaded: unchanged");
        return Ok(());
    }
    new.version = old.version + 1;
    for (key, before, after) in [
        ("server.listen", &old.server.listen, &new.server.listen),
        (
            "server.admin_listen",
            &old.server.admin_listen,
            &new.server.admin_listen,
        ),
    ] {
        if before != after {
            tracing::warn!(key, from = %before, to = %after, "listener addresses change only with a restart; still listening on the old address");
        }
    }
    // The upstream client and the fleet store are built once; their settings need a restart.
    let upstream_changed = new.upstream.base_url != old.upstream.base_url
        || new.upstream.extra_roots_pem != old.upstream.extra_roots_pem
        || new.upstream.connect_timeout != old.upstream.connect_timeout;
    if upstream_changed || new.token_store != old.token_store {
        tracing::warn!(
            "[upstream] and [token_store] change only with a restart; keeping the running ones"
        );
        new.upstream = old.upstream.clone();
        new.token_store = old.token_store.clone();
    }
    proxy.tokens().reconfigure(&new);
    let version = new.version;
    proxy.replace_config(Arc::new(new));
    metrics.config_reload("success");
    tracing::info!(version, "configuration reloaded");
    Ok(())
}
