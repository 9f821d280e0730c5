//! The values a metric label can take, one type per label: each prints as a fixed string, so a
//! label can only take the values listed here, and a call site cannot misspell one.
use std::sync::{Arc, LazyLock};

use prometheus_client::encoding::{EncodeLabelValue, LabelValueEncoder};

/// Defines a label value type: an enum whose variants print as fixed strings, so that a label can
/// only take the values listed here.
macro_rules! label_values {
    ($(#[$meta:meta])* pub enum $name:ident { $($(#[$vmeta:meta])* $variant:ident => $text:literal,)* }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)*
        }

        impl $name {
            pub const ALL: &[$name] = &[$($name::$variant,)*];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)*
                }
            }
        }

        impl EncodeLabelValue for $name {
            fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
                self.as_str().encode(encoder)
            }
        }
    };
}

label_values! {
    /// Why a token was replaced (`reauth_total{trigger}`).
    pub enum Trigger {
        /// A forwarded request got 401/105.
        Unauthorized => "401",
        /// The background `GET /v3/user` got 401/105.
        Validate => "validate",
        /// `max_token_age` passed.
        MaxAge => "max_age",
        /// An OAuth access token was renewed ahead of its expiry.
        Expiry => "expiry",
        /// The credentials changed on reload.
        Rotate => "rotate",
    }
}

label_values! {
    /// How a login attempt ended (`logins_total{outcome}`, and `/status`).
    pub enum LoginOutcome {
        Success => "success",
        Rejected => "rejected",
        Transient => "transient",
    }
}

label_values! {
    /// What became of a request that met an evicted token (`replays_total{outcome}`).
    pub enum ReplayOutcome {
        Replayed => "replayed",
        /// Its body was streamed, so it could not be sent again.
        NotReplayable => "not_replayable",
        /// The login after the eviction failed.
        LoginFailed => "login_failed",
    }
}

label_values! {
    /// How a configuration reload ended (`config_reloads_total{outcome}`).
    pub enum ReloadOutcome {
        /// Applied, or nothing had changed.
        Success => "success",
        /// Invalid: the previous configuration keeps serving.
        Error => "error",
    }
}

label_values! {
    /// Why a connection was refused or closed by a limit (`connection_limits_total{reason}`).
    pub enum ConnectionLimit {
        TooManyConnections => "too_many_connections",
        HeaderReadTimeout => "header_read_timeout",
        HeadersTooLarge => "headers_too_large",
        MalformedRequest => "malformed_request",
        IdleTimeout => "idle_timeout",
        TlsHandshakeFailed => "tls_handshake_failed",
        /// A response made no progress towards its client for `send_timeout`.
        SendTimeout => "send_timeout",
        /// The admin listener was full: its longest idle connection was closed to admit a new one.
        Evicted => "evicted",
    }
}

label_values! {
    /// What happened with the fleet store (`token_store_total{event}`).
    pub enum StoreEvent {
        /// A token read from the store.
        Hit => "hit",
        /// None there: this replica logs in for the fleet.
        Miss => "miss",
        LockWait => "lock_wait",
        FleetLogin => "fleet_login",
        Adopt => "adopt",
        Publish => "publish",
        /// A failed call or probe, or a lock that never came free.
        Error => "error",
        /// A value read back and refused.
        Invalid => "invalid",
    }
}

label_values! {
    /// What the read cache did (`cache_total{result}`).
    pub enum CacheResult {
        /// A read answered from the cache.
        Hit => "hit",
        /// A read the cache covers but did not hold.
        Miss => "miss",
        /// An answer kept.
        Store => "store",
        /// A write (here or, in a fleet, elsewhere) dropped what it may have changed.
        Invalidate => "invalidate",
    }
}

label_values! {
    /// The fleet store's state (`token_store_state{state}`, and `/status`).
    pub enum StoreState {
        Connecting => "connecting",
        Up => "up",
        /// Skipped after a failure; the replica works alone.
        Down => "down",
        Probing => "probing",
    }
}

label_values! {
    /// What a client asked of the session endpoint that the proxy answered itself
    /// (`emulated_sessions_total{action}`).
    pub enum SessionAction {
        Login => "login",
        Logout => "logout",
    }
}

label_values! {
    /// How a request ended, as an operator slices its latency (`request_duration_seconds{outcome}`).
    pub enum RequestOutcome {
        /// Contentstack answered 1xx–3xx.
        Ok => "ok",
        /// Contentstack answered 4xx or 5xx.
        UpstreamError => "upstream_error",
        /// The proxy answered itself (an error of the table in the README).
        ProxyError => "proxy_error",
    }
}

impl RequestOutcome {
    pub fn of(status: u16, proxy_answer: bool) -> RequestOutcome {
        match (proxy_answer, status) {
            (true, _) => RequestOutcome::ProxyError,
            (false, 400..) => RequestOutcome::UpstreamError,
            (false, _) => RequestOutcome::Ok,
        }
    }
}

/// The profile label (and the access log's profile) of requests refused before a profile was
/// chosen; no profile may take this name.
pub static NO_PROFILE: LazyLock<Arc<str>> = LazyLock::new(|| Arc::from("none"));

/// A profile name as a label value: an `Arc` clone per request instead of a `String` allocation.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct Profile(pub Arc<str>);

impl EncodeLabelValue for Profile {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        (&*self.0).encode(encoder)
    }
}

impl From<&str> for Profile {
    fn from(name: &str) -> Profile {
        Profile(name.into())
    }
}
