//! Live reload (docs/design.md#reload-and-rotation): SIGHUP, or a change to the config file or to
//! any file it names, loads and validates the whole configuration again and swaps it in. An invalid
//! configuration is logged and counted, and the old one keeps serving. Listener addresses are bound
//! once; changing them needs a restart (logged).
//!
//! Directories are watched, not files: Kubernetes updates a mounted Secret or ConfigMap by
//! swapping a `..data` symlink, and editors save by renaming a new file over the old one, neither
//! of which a watch on the old file would see. A file's path may also pass through symlinks (a
//! Secret item in a subdirectory, `sec/cma -> ..data/cma`; a release directory, `current ->
//! releases/v2`; a secret linked in from elsewhere), and the directory that really holds it is
//! replaced on every update. So each file is followed to where it really is, and what is watched is
//! the directory that holds each step: the file as named, every symlink on its way, and the file it
//! leads to. Only events that name one of those steps, or a watched directory itself (removed or
//! moved), count: a busy neighbour, often the proxy's own log, must neither trigger reloads (each
//! reload's log line would trigger the next) nor keep postponing one. After every reload the steps
//! are worked out again and the watches rebuilt, since a rotation moves them.
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
/// Symlinks followed on one path before giving up on it (the kernel's own limit is 40).
const MAX_SYMLINKS: usize = 40;

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("cannot watch {path} for changes: {source}")]
    Watch {
        path: PathBuf,
        #[source]
        source: notify::Error,
    },
}

/// The paths whose change means "reload" (each configured file, the symlinks on its way and the
/// file it leads to, as absolute paths) and the directories that hold them.
#[derive(Default)]
struct Watched {
    steps: BTreeSet<PathBuf>,
    directories: BTreeSet<PathBuf>,
}

impl Watched {
    fn of(config: &Config) -> Watched {
        let mut watched = Watched::default();
        for file in &config.watched_files {
            let file = std::path::absolute(file).unwrap_or_else(|_| file.clone());
            for step in steps_to(&file) {
                let (directory, missing) = watch_point(&directory_of(&step));
                // A directory that is not there (yet) is watched from the closest one that is, for
                // its creation.
                watched.steps.extend(missing);
                watched.directories.insert(directory);
                watched.steps.insert(step);
            }
        }
        watched
    }

    /// Whether `event` may change the configuration. Called for every event in the watched
    /// directories, so it must not log: a log file in one of them would feed itself.
    fn concerns(&self, event: &notify::Event) -> bool {
        if event.need_rescan() {
            // Events were lost; any of them may have been ours.
            return true;
        }
        !event.kind.is_access()
            && event
                .paths
                .iter()
                .any(|path| self.steps.contains(path) || self.directories.contains(path))
    }
}

/// The paths `file` is reached through: itself as named, each symlink met on the way (resolved as
/// the kernel does, `..` after a symlink going up from where it led), and the file it leads to. A
/// change to any of them can change what reading `file` gives. Parts that do not exist end the
/// walk there.
fn steps_to(file: &Path) -> Vec<PathBuf> {
    use std::path::Component;
    let mut steps = vec![file.to_owned()];
    let mut pending: std::collections::VecDeque<PathBuf> = file
        .components()
        .map(|c| PathBuf::from(c.as_os_str()))
        .collect();
    let mut at = PathBuf::from("/");
    let mut followed = 0;
    while let Some(part) = pending.pop_front() {
        match part.components().next() {
            Some(Component::RootDir) => at = PathBuf::from("/"),
            Some(Component::ParentDir) => {
                at.pop();
            }
            Some(Component::Normal(name)) => {
                let next = at.join(name);
                let link = std::fs::symlink_metadata(&next)
                    .is_ok_and(|m| m.file_type().is_symlink())
                    .then(|| std::fs::read_link(&next).ok())
                    .flatten();
                match link {
                    Some(target) if followed < MAX_SYMLINKS => {
                        followed += 1;
                        if !steps.contains(&next) {
                            steps.push(next);
                        }
                        for (i, c) in target.components().enumerate() {
                            pending.insert(i, PathBuf::from(c.as_os_str()));
                        }
                    }
                    _ => at = next,
                }
            }
            Some(Component::CurDir | Component::Prefix(_)) | None => {}
        }
    }
    if !steps.contains(&at) {
        steps.push(at);
    }
    steps
}

/// Where to watch `directory` from: itself when it exists, else its closest existing ancestor,
/// together with the missing child of that ancestor on the way down (whose creation is the event
/// to wait for).
fn watch_point(directory: &Path) -> (PathBuf, Option<PathBuf>) {
    let mut missing = None;
    let mut at = directory;
    while !at.is_dir() {
        match at.parent() {
            Some(parent) => {
                missing = Some(at.to_owned());
                at = parent;
            }
            None => break,
        }
    }
    (at.to_owned(), missing)
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
        let _ = reload(&path, &live);
        // Whatever the outcome: an update may have replaced the directories watched, or the
        // symlinks leading to the files (a failed reload is retried at the next event).
        if let Err(e) = rewatch(&mut watcher, &watched, &proxy.config()) {
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

/// Points the watcher at the directories that hold the files `config` was read from and the
/// symlinks on their way. Every wanted directory is watched again, also one watched already: a
/// directory replaced under the same path (a new inode) is then watched anew.
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
    let mut failed = None;
    for dir in &wanted.directories {
        if let Err(source) = watcher.watch(dir, RecursiveMode::NonRecursive) {
            failed.get_or_insert(WatchError::Watch {
                path: dir.clone(),
                source,
            });
        }
    }
    for gone in current.difference(&wanted.directories) {
        let _ = watcher.unwatch(gone);
    }
    *watched
        .write()
        .unwrap_or_else(|poisoned| poisoned.into_inner()) = wanted;
    failed.map_or(Ok(()), Err)
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
    // The workers are threads made at start, each kept to its CPU then or not.
    if (new.server.workers, new.server.cpu_affinity)
        != (old.server.workers, old.server.cpu_affinity)
    {
        tracing::warn!(
            "server.workers and server.cpu_affinity change only with a restart; keeping the running workers"
        );
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
    use notify::event::{AccessKind, CreateKind, EventKind, ModifyKind, RemoveKind, RenameMode};

    use super::*;

    fn event(kind: EventKind, paths: &[&str]) -> notify::Event {
        let mut event = notify::Event::new(kind);
        event.paths = paths.iter().map(PathBuf::from).collect();
        event
    }

    /// `/etc/cma/config.toml`, and `/run/secrets/cma/password` as Kubernetes mounts it:
    /// `password -> ..data/password`, `..data -> ..2026_01`.
    fn watched() -> Watched {
        Watched {
            steps: [
                "/etc/cma/config.toml",
                "/run/secrets/cma/password",
                "/run/secrets/cma/..data",
                "/run/secrets/cma/..2026_01/password",
            ]
            .into_iter()
            .map(PathBuf::from)
            .collect(),
            directories: ["/etc/cma", "/run/secrets/cma", "/run/secrets/cma/..2026_01"]
                .into_iter()
                .map(PathBuf::from)
                .collect(),
        }
    }

    #[test]
    fn only_events_naming_a_step_to_a_configured_file_count() {
        let w = watched();
        let write = EventKind::Modify(ModifyKind::Any);
        let renamed = EventKind::Modify(ModifyKind::Name(RenameMode::Both));
        let created = EventKind::Create(CreateKind::File);
        let removed = EventKind::Remove(RemoveKind::Folder);
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
        // The directory that held the file, deleted after a swap.
        assert!(w.concerns(&event(removed, &["/run/secrets/cma/..2026_01"])));
        assert!(w.concerns(&event(EventKind::Other, &[]).set_flag(notify::event::Flag::Rescan)));

        // The proxy's own log, next to the config, and anything else there.
        assert!(!w.concerns(&event(write, &["/etc/cma/cma-auth-proxy.log"])));
        assert!(!w.concerns(&event(created, &["/etc/cma/..data_tmp"])));
        // A `..data` that no configured file is reached through.
        assert!(!w.concerns(&event(created, &["/etc/cma/..data"])));
        assert!(!w.concerns(&event(created, &["/elsewhere/..data"])));
        assert!(!w.concerns(&event(
            EventKind::Access(AccessKind::Any),
            &["/etc/cma/config.toml"]
        )));
    }

    #[test]
    fn a_file_is_followed_through_every_symlink_on_its_way() {
        let dir = crate::config::tests::tempdir();
        // A Secret item in a subdirectory: sec/cma -> ..data/cma, ..data -> ..v1.
        std::fs::create_dir_all(dir.join("sec/..v1/cma")).unwrap();
        std::fs::write(dir.join("sec/..v1/cma/password"), "pw").unwrap();
        std::os::unix::fs::symlink("..v1", dir.join("sec/..data")).unwrap();
        std::os::unix::fs::symlink("..data/cma", dir.join("sec/cma")).unwrap();
        // A secret linked in from another directory, through `..`.
        std::fs::create_dir_all(dir.join("vault")).unwrap();
        std::fs::create_dir_all(dir.join("conf")).unwrap();
        std::fs::write(dir.join("vault/key"), "k").unwrap();
        std::os::unix::fs::symlink("../vault/key", dir.join("conf/key")).unwrap();

        assert_eq!(
            steps_to(&dir.join("sec/cma/password")),
            [
                dir.join("sec/cma/password"),
                dir.join("sec/cma"),
                dir.join("sec/..data"),
                dir.join("sec/..v1/cma/password"),
            ]
        );
        assert_eq!(
            steps_to(&dir.join("conf/key")),
            [dir.join("conf/key"), dir.join("vault/key")]
        );
        // A path that does not exist is its own last step.
        assert_eq!(steps_to(&dir.join("none/x")), [dir.join("none/x")]);
        assert_eq!(
            watch_point(&dir.join("none/deeper")),
            (dir.to_path_buf(), Some(dir.join("none")))
        );
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
