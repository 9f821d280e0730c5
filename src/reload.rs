//! Live reload (docs/design.md#reload-and-rotation): SIGHUP, or a change to the config file or to
//! any file it names, loads and validates the whole configuration again and swaps it in. An invalid
//! configuration is logged and counted, and the old one keeps serving. Listener addresses are bound
//! once; changing them needs a restart (logged).
//!
//! Directories are watched, not files: Kubernetes updates a mounted Secret or ConfigMap by
//! swapping a `..data` symlink, and editors save by renaming a new file over the old one, neither
//! of which a watch on the old file would see. But a directory holds other files too (often the
//! proxy's own log), so only events that name a configured file, or a `..data` swap, count: a busy
//! neighbour must neither trigger reloads (each reload's log line would trigger the next) nor keep
//! postponing one.
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::config::{Config, ConfigError};
use crate::metrics::ReloadOutcome;
use crate::proxy::Proxy;
use crate::server::InboundTls;

/// Changes arrive in bursts (a symlink swap is several events); reload once they settle …
const SETTLE: Duration = Duration::from_millis(200);
/// … but never later than this after the first, however long the burst.
const MAX_DELAY: Duration = Duration::from_secs(1);

/// The name of the symlink Kubernetes swaps to update every file of a mounted volume at once.
const KUBERNETES_DATA: &str = "..data";

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("cannot watch {path} for changes: {source}")]
    Watch {
        path: PathBuf,
        #[source]
        source: notify::Error,
    },
}

/// The files whose change means "reload", as absolute paths, and the directories they are in.
#[derive(Default)]
struct Watched {
    files: BTreeSet<PathBuf>,
    directories: BTreeSet<PathBuf>,
}

impl Watched {
    fn of(config: &Config) -> Watched {
        let files: BTreeSet<PathBuf> = config
            .watched_files
            .iter()
            .map(|f| std::path::absolute(f).unwrap_or_else(|_| f.clone()))
            .collect();
        let directories = files.iter().map(|f| directory_of(f)).collect();
        Watched { files, directories }
    }

    /// Whether `event` may change the configuration. Called for every event in the watched
    /// directories, so it must not log: a log file in one of them would feed itself.
    fn concerns(&self, event: &notify::Event) -> bool {
        if event.need_rescan() {
            // Events were lost; any of them may have been ours.
            return true;
        }
        !event.kind.is_access()
            && event.paths.iter().any(|path| {
                self.files.contains(path)
                    || (path.file_name().is_some_and(|name| name == KUBERNETES_DATA)
                        && self.directories.contains(&directory_of(path)))
            })
    }
}

/// What a reload reaches: the request path (and through it the token manager and the rate
/// budgets), and the proxy listener's inbound TLS.
#[derive(Clone)]
pub struct Reloadable {
    pub proxy: Arc<Proxy>,
    pub inbound_tls: Option<Arc<InboundTls>>,
}

/// Watches until `stop` turns true.
pub async fn watch(
    path: PathBuf,
    live: Reloadable,
    mut stop: watch::Receiver<bool>,
) -> Result<(), WatchError> {
    let proxy = &live.proxy;
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .expect("cannot listen for SIGHUP");
    let (tx, mut changes) = mpsc::channel::<()>(1);
    let watched = Arc::new(RwLock::new(Watched::default()));
    let filter = watched.clone();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let concerns = event.is_ok_and(|e| {
            filter
                .read()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .concerns(&e)
        });
        if concerns {
            // A full channel already holds a pending reload.
            let _ = tx.try_send(());
        }
    })
    .map_err(|source| WatchError::Watch {
        path: path.clone(),
        source,
    })?;
    rewatch(&mut watcher, &watched, &proxy.config())?;
    // A change between the first load and the watch being in place would otherwise go unnoticed.
    if Config::load(&path, std::env::vars()).is_ok_and(|c| c.digest != proxy.config().digest) {
        tracing::info!("configuration changed during start-up: reloading");
        let _ = reload(&path, &live);
    }
    let directories = watched
        .read()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .directories
        .clone();
    tracing::info!(
        ?directories,
        "live reload on: watching the configured files for changes; SIGHUP reloads too"
    );
    loop {
        let changed = tokio::select! {
            _ = stop.wait_for(|stop| *stop) => return Ok(()),
            _ = hangup.recv() => false,
            Some(()) = changes.recv() => true,
        };
        if changed {
            settle(&mut changes).await;
            tracing::info!("configuration or secret files changed: reloading");
        } else {
            tracing::info!("SIGHUP: reloading the configuration");
        }
        if reload(&path, &live).is_ok()
            && let Err(e) = rewatch(&mut watcher, &watched, &proxy.config())
        {
            tracing::warn!("{}", crate::error_text::error_chain_text(&e));
        }
    }
}

/// Waits until no change has come for [`SETTLE`], or [`MAX_DELAY`] has passed since the first.
async fn settle(changes: &mut mpsc::Receiver<()>) {
    let deadline = Instant::now() + MAX_DELAY;
    loop {
        let quiet_until = (Instant::now() + SETTLE).min(deadline);
        match tokio::time::timeout_at(quiet_until, changes.recv()).await {
            Ok(Some(())) if Instant::now() < deadline => continue,
            _ => return,
        }
    }
}

/// Points the watcher at the directories of the files `config` was read from.
fn rewatch(
    watcher: &mut RecommendedWatcher,
    watched: &RwLock<Watched>,
    config: &Config,
) -> Result<(), WatchError> {
    let wanted = Watched::of(config);
    // Not under the lock: (un)watching waits for the watcher's thread, which may be waiting for
    // the lock to filter an event.
    let current = watched
        .read()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .directories
        .clone();
    for gone in current.difference(&wanted.directories) {
        let _ = watcher.unwatch(gone);
    }
    for dir in wanted.directories.difference(&current) {
        watcher
            .watch(dir, RecursiveMode::NonRecursive)
            .map_err(|source| WatchError::Watch {
                path: dir.clone(),
                source,
            })?;
    }
    *watched
        .write()
        .unwrap_or_else(|poisoned| poisoned.into_inner()) = wanted;
    Ok(())
}

fn directory_of(file: &Path) -> PathBuf {
    match file.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
        _ => PathBuf::from("."),
    }
}

/// Loads `path` again and swaps it in; on error the running configuration stays.
pub fn reload(path: &Path, live: &Reloadable) -> Result<(), ConfigError> {
    let proxy = &live.proxy;
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
            metrics.config_reload(ReloadOutcome::Error);
            tracing::error!(
                version = old.version,
                "configuration reload failed, still serving the previous one: {e}"
            );
            return Err(e);
        }
    };
    if new.digest == old.digest {
        // A burst of events, or a SIGHUP, with nothing changed: keep the running config as it is.
        metrics.config_reload(ReloadOutcome::Success);
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
    InboundTls::reload(live.inbound_tls.as_deref(), new.server.tls.as_ref());
    let version = new.version;
    proxy.replace_config(Arc::new(new));
    metrics.config_reload(ReloadOutcome::Success);
    tracing::info!(version, "configuration reloaded");
    Ok(())
}

#[cfg(test)]
mod tests {
    use notify::event::{AccessKind, CreateKind, EventKind, ModifyKind, RenameMode};

    use super::*;

    fn event(kind: EventKind, paths: &[&str]) -> notify::Event {
        let mut event = notify::Event::new(kind);
        event.paths = paths.iter().map(PathBuf::from).collect();
        event
    }

    fn watched() -> Watched {
        Watched {
            files: ["/etc/cma/config.toml", "/run/secrets/cma/password"]
                .into_iter()
                .map(PathBuf::from)
                .collect(),
            directories: ["/etc/cma", "/run/secrets/cma"]
                .into_iter()
                .map(PathBuf::from)
                .collect(),
        }
    }

    #[test]
    fn only_events_naming_a_configured_file_or_a_data_swap_count() {
        let w = watched();
        let write = EventKind::Modify(ModifyKind::Any);
        let renamed = EventKind::Modify(ModifyKind::Name(RenameMode::Both));
        let created = EventKind::Create(CreateKind::File);
        assert!(w.concerns(&event(write, &["/etc/cma/config.toml"])));
        assert!(w.concerns(&event(created, &["/run/secrets/cma/password"])));
        // An editor's save: a new file renamed over the old one.
        assert!(w.concerns(&event(
            renamed,
            &["/etc/cma/.config.toml.swp", "/etc/cma/config.toml"]
        )));
        // The kubelet's swap: `..data_tmp` renamed to `..data`.
        assert!(w.concerns(&event(
            renamed,
            &["/run/secrets/cma/..data_tmp", "/run/secrets/cma/..data"]
        )));
        assert!(w.concerns(&event(EventKind::Other, &[]).set_flag(notify::event::Flag::Rescan)));

        // The proxy's own log, next to the config, and anything else there.
        assert!(!w.concerns(&event(write, &["/etc/cma/cma-auth-proxy.log"])));
        assert!(!w.concerns(&event(created, &["/etc/cma/..data_tmp"])));
        assert!(!w.concerns(&event(created, &["/elsewhere/..data"])));
        assert!(!w.concerns(&event(
            EventKind::Access(AccessKind::Any),
            &["/etc/cma/config.toml"]
        )));
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_is_reloaded_once_quiet_and_a_stream_after_max_delay() {
        let (tx, mut changes) = mpsc::channel(1);
        tokio::spawn(async move {
            for _ in 0..3 {
                let _ = tx.send(()).await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            // The watcher keeps its sender.
            std::future::pending::<()>().await;
            drop(tx);
        });
        let start = Instant::now();
        settle(&mut changes).await;
        assert_eq!(start.elapsed(), Duration::from_millis(100) + SETTLE);

        let (tx, mut changes) = mpsc::channel(1);
        tokio::spawn(async move {
            while tx.send(()).await.is_ok() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        let start = Instant::now();
        settle(&mut changes).await;
        assert_eq!(start.elapsed(), MAX_DELAY);
    }
}
