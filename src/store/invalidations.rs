//! Read cache invalidations shared by a fleet (docs/design.md#fleet-mode): a replica that passes a
//! write on publishes its path on `{prefix}invalidate:{account}`, and every replica listens on
//! the pattern of those channels and drops what the write may have changed.
//!
//! Redis pub/sub delivers at most once, and only while a replica is subscribed, so a replica says
//! whether it is listening ([`Invalidated::Listening`]): while it is not, its caches serve nothing.
//! A message is `{origin} {path}`; a replica ignores its own (it dropped what it had already), and a
//! path it cannot use (too long, not a path) drops everything, since anyone who can write to
//! Redis could send it: what a message can do is only ever empty a cache.
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::StreamExt;

use super::{RedisStore, StoreError};

/// The longest path a message carries; a longer one is read as "drop everything".
const MAX_PATH: usize = 4096;
/// The pause after a lost subscription before the next try; it doubles up to [`RETRY_MAX`].
const RETRY_MIN: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(15);
/// How often the subscription is asked to answer a `PING`. A subscription whose connection died
/// without a word (a NAT or load balancer forgetting an idle flow, a failover that moved the
/// address) delivers nothing and ends never; one that does not answer within the store's timeout
/// is taken as lost.
const PING_EVERY: Duration = Duration::from_secs(5);

/// What the listener reports.
pub enum Invalidated<'a> {
    /// Another replica passed on a write of `account`; `None`: drop everything of the account.
    Write {
        account: &'a str,
        path: Option<&'a str>,
    },
    /// Whether this replica hears the others' writes now.
    Listening(bool),
}

impl RedisStore {
    fn invalidation_channel(&self, account: &str) -> String {
        format!("{}invalidate:{account}", self.prefix)
    }

    /// Tells the other replicas that a write of `account` went to `path`.
    pub async fn publish_invalidation(&self, account: &str, path: &str) -> Result<(), StoreError> {
        let message = format!("{} {path}", self.origin);
        self.query::<i64>(
            redis::cmd("PUBLISH")
                .arg(self.invalidation_channel(account))
                .arg(message),
        )
        .await
        .map(drop)
    }

    /// Listens for the other replicas' writes until the store is dropped, reporting them and
    /// whether it is listening to `report`. Runs on the store's runtime.
    pub fn listen_for_invalidations(
        self: &Arc<Self>,
        report: impl Fn(Invalidated<'_>) + Send + Sync + 'static,
    ) {
        let store = Arc::downgrade(self);
        self.link.spawn(listen(store, report));
    }

    /// What a message on `channel` says, unless this replica sent it.
    fn read_invalidation<'m>(
        &self,
        channel: &'m str,
        payload: &'m [u8],
    ) -> Option<Invalidated<'m>> {
        let account = channel.strip_prefix(&self.invalidation_channel(""))?;
        let text = std::str::from_utf8(payload).ok();
        let (origin, path) = text.and_then(|t| t.split_once(' ')).unwrap_or(("", ""));
        if origin == self.origin {
            return None;
        }
        let usable = path.starts_with('/') && path.len() <= MAX_PATH;
        Some(Invalidated::Write {
            account,
            path: usable.then_some(path),
        })
    }
}

async fn listen(store: Weak<RedisStore>, report: impl Fn(Invalidated<'_>) + Send + Sync) {
    let mut pause = RETRY_MIN;
    loop {
        let Some(this) = store.upgrade() else { return };
        let pattern = this.invalidation_channel("*");
        let timeout = this.link.timeout();
        let subscribe = async {
            let mut pubsub = this.link.pubsub().await?;
            pubsub
                .psubscribe(&pattern)
                .await
                .map_err(StoreError::Redis)?;
            Ok::<_, StoreError>(pubsub)
        };
        let subscribed = match tokio::time::timeout(timeout, subscribe).await {
            Ok(result) => result,
            Err(_) => Err(StoreError::Timeout(timeout)),
        };
        let pubsub = match subscribed {
            Ok(pubsub) => pubsub,
            Err(e) => {
                tracing::debug!(
                    "cannot listen for the fleet's writes: {}",
                    this.link.describe(&e)
                );
                drop(this);
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(RETRY_MAX);
                continue;
            }
        };
        pause = RETRY_MIN;
        // Messages sent before the subscription were missed: what is cached may be stale.
        report(Invalidated::Listening(true));
        tracing::debug!("listening for the fleet's writes");
        let (mut sink, mut messages) = pubsub.split();
        // The store is not kept alive by listening: it is looked up for each message.
        drop(this);
        let mut ping =
            tokio::time::interval_at(tokio::time::Instant::now() + PING_EVERY, PING_EVERY);
        loop {
            tokio::select! {
                message = messages.next() => {
                    let Some(message) = message else { break };
                    let Some(this) = store.upgrade() else { return };
                    if let Some(event) =
                        this.read_invalidation(message.get_channel_name(), message.get_payload_bytes())
                    {
                        report(event);
                    }
                }
                _ = ping.tick() => {
                    let answered = tokio::time::timeout(timeout, sink.ping::<redis::Value>()).await;
                    if !matches!(answered, Ok(Ok(_))) {
                        break;
                    }
                }
            }
        }
        report(Invalidated::Listening(false));
        tracing::warn!(
            "lost the subscription to the fleet's writes; the read caches serve nothing until it is back"
        );
        tokio::time::sleep(pause).await;
    }
}
