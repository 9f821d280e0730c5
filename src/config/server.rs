//! `[server]`: the two listeners, the limits of their connections and request bodies, and inbound
//! TLS.
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytesize::ByteSize;
use serde::Deserialize;

use super::files::Sources;
use super::{ConfigError, ConfigWarning, ListenAddr, invalid, resolve};
use crate::body::BodyPace;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct FileServer {
    listen: String,
    admin_listen: String,
    #[serde(with = "humantime_serde")]
    shutdown_grace: Duration,
    #[serde(with = "humantime_serde")]
    request_timeout: Duration,
    max_body: ByteSize,
    replay_body_limit: ByteSize,
    replay_memory: ByteSize,
    #[serde(with = "humantime_serde")]
    header_read_timeout: Duration,
    #[serde(with = "humantime_serde")]
    idle_timeout: Duration,
    #[serde(with = "humantime_serde")]
    send_timeout: Duration,
    #[serde(with = "humantime_serde")]
    body_idle_timeout: Duration,
    body_min_rate: ByteSize,
    max_connections: usize,
    max_header_bytes: ByteSize,
    max_headers: usize,
    listen_mode: Option<String>,
    tls_cert_file: Option<PathBuf>,
    tls_key_file: Option<PathBuf>,
    workers: usize,
    #[serde(deserialize_with = "super::de::one_of")]
    cpu_affinity: CpuAffinity,
}

impl Default for FileServer {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            admin_listen: "127.0.0.1:9901".into(),
            shutdown_grace: Duration::from_secs(25),
            request_timeout: Duration::from_secs(120),
            max_body: ByteSize::gib(1),
            replay_body_limit: ByteSize::mib(1),
            // With the proxy's own ~10 MiB, well inside the 96 MiB the deployment gives it.
            replay_memory: ByteSize::mib(32),
            header_read_timeout: ConnectionLimits::default().header_read_timeout,
            idle_timeout: ConnectionLimits::default().idle_timeout,
            send_timeout: ConnectionLimits::default().send_timeout,
            body_idle_timeout: BodyPace::default().idle_timeout,
            body_min_rate: ByteSize(BodyPace::default().min_rate),
            max_connections: ConnectionLimits::default().max_connections,
            max_header_bytes: ByteSize::kib(64),
            max_headers: ConnectionLimits::default().max_headers,
            listen_mode: None,
            tls_cert_file: None,
            tls_key_file: None,
            workers: 0,
            cpu_affinity: CpuAffinity::Auto,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: ListenAddr,
    pub admin_listen: ListenAddr,
    pub shutdown_grace: Duration,
    pub request_timeout: Duration,
    pub max_body: u64,
    pub replay_body_limit: u64,
    /// What the request bodies kept for a replay may take together; past it, bodies stream.
    pub replay_memory: u64,
    pub limits: ConnectionLimits,
    /// How steadily a client must deliver a request body.
    pub body_pace: BodyPace,
    /// File mode of a unix-socket `listen`, e.g. 0o660.
    pub listen_mode: Option<u32>,
    /// Inbound TLS on `listen`: certificate chain and key, PEM, already read.
    pub tls: Option<TlsFiles>,
    /// Threads serving `listen`, each with its own runtime and upstream pool.
    pub workers: usize,
    /// Whether each worker keeps to a CPU of its own
    /// (docs/design.md#workers-on-cpus-of-their-own).
    pub cpu_affinity: CpuAffinity,
}

/// `server.cpu_affinity`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CpuAffinity {
    /// Each worker keeps to a CPU of its own while more than one has connections, when the
    /// process was given CPUs of its own (its affinity mask is narrower than the machine's CPUs)
    /// and the workers are as many (at least two); otherwise the kernel places them.
    Auto,
    /// As `Auto`, also when the process may run on all of the machine's CPUs: for a host or VM
    /// that runs little else.
    On,
    /// The kernel places the workers.
    Off,
}

/// Per-connection limits of both listeners.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// From accepting a connection to its first request, and for each later HTTP/1 request head.
    pub header_read_timeout: Duration,
    /// A connection with no request in flight for this long is closed.
    pub idle_timeout: Duration,
    /// A response that makes no progress towards the client for this long ends: the HTTP/1
    /// connection closes, the HTTP/2 stream is reset.
    pub send_timeout: Duration,
    pub max_connections: usize,
    pub max_header_bytes: usize,
    pub max_headers: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            send_timeout: Duration::from_secs(30),
            max_connections: 1024,
            max_header_bytes: 64 * 1024,
            max_headers: 100,
        }
    }
}

#[derive(Clone)]
pub struct TlsFiles {
    pub cert_chain_pem: Arc<Vec<u8>>,
    pub key_pem: Arc<SecretBytes>,
}

impl std::fmt::Debug for TlsFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsFiles { cert_chain_pem, key_pem: [REDACTED] }")
    }
}

/// Bytes that never print.
pub struct SecretBytes(pub Vec<u8>);

impl std::fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[REDACTED]")
    }
}

pub(super) fn validate(
    s: FileServer,
    base_dir: Option<&Path>,
    sources: &mut Sources,
) -> Result<ServerConfig, ConfigError> {
    let listen = s.listen.parse().map_err(|e| invalid("server.listen", e))?;
    let admin_listen = s
        .admin_listen
        .parse()
        .map_err(|e| invalid("server.admin_listen", e))?;
    // Port 0 (any free port) on both is fine: they get different ports.
    let any_port = matches!(&listen, ListenAddr::Tcp(a) if a.port() == 0);
    if listen == admin_listen && !any_port {
        return Err(invalid(
            "server.admin_listen",
            "must differ from server.listen",
        ));
    }
    if s.request_timeout.is_zero() {
        return Err(invalid("server.request_timeout", "must be more than 0s"));
    }
    let (max_body, replay_body_limit) = (s.max_body.as_u64(), s.replay_body_limit.as_u64());
    if replay_body_limit > max_body {
        return Err(invalid(
            "server.replay_body_limit",
            "must not exceed server.max_body",
        ));
    }
    let replay_memory = s.replay_memory.as_u64();
    if replay_memory < replay_body_limit {
        return Err(invalid(
            "server.replay_memory",
            "must be at least server.replay_body_limit, or no body of that size could ever be kept",
        ));
    }
    let max_header_bytes = s.max_header_bytes.as_u64();
    // hyper's smallest read buffer; a request head never needs less.
    if max_header_bytes < 8192 {
        return Err(invalid("server.max_header_bytes", "must be at least 8KiB"));
    }
    for (key, value) in [
        ("server.header_read_timeout", s.header_read_timeout),
        ("server.idle_timeout", s.idle_timeout),
        ("server.send_timeout", s.send_timeout),
        ("server.body_idle_timeout", s.body_idle_timeout),
    ] {
        if value.is_zero() {
            return Err(invalid(key, "must be more than 0s"));
        }
    }
    if s.max_connections == 0 || s.max_headers == 0 {
        return Err(invalid(
            "server.max_connections / server.max_headers",
            "must be at least 1",
        ));
    }
    let listen_mode = s
        .listen_mode
        .map(|mode| {
            if !matches!(listen, ListenAddr::Unix(_)) {
                return Err(invalid(
                    "server.listen_mode",
                    "applies only to a unix-socket listen (\"unix:/path\")",
                ));
            }
            u32::from_str_radix(mode.trim_start_matches("0o"), 8)
                .ok()
                .filter(|m| *m <= 0o777)
                .ok_or_else(|| {
                    invalid(
                        "server.listen_mode",
                        format!("{mode:?} is not an octal file mode like \"0660\""),
                    )
                })
        })
        .transpose()?;
    let tls = match (s.tls_cert_file, s.tls_key_file) {
        (None, None) => None,
        (Some(cert), Some(key)) => Some(read_tls_files(&cert, &key, base_dir, sources)?),
        _ => {
            return Err(invalid(
                "server.tls_cert_file",
                "inbound TLS needs both tls_cert_file and tls_key_file",
            ));
        }
    };
    if tls.is_some() && matches!(listen, ListenAddr::Unix(_)) {
        return Err(invalid(
            "server.tls_cert_file",
            "TLS is for TCP listeners; a unix socket is protected by its file mode",
        ));
    }
    Ok(ServerConfig {
        listen,
        admin_listen,
        shutdown_grace: s.shutdown_grace,
        request_timeout: s.request_timeout,
        max_body,
        replay_body_limit,
        replay_memory,
        limits: ConnectionLimits {
            header_read_timeout: s.header_read_timeout,
            idle_timeout: s.idle_timeout,
            send_timeout: s.send_timeout,
            max_connections: s.max_connections,
            max_header_bytes: max_header_bytes as usize,
            max_headers: s.max_headers,
        },
        body_pace: BodyPace {
            idle_timeout: s.body_idle_timeout,
            min_rate: s.body_min_rate.as_u64(),
        },
        listen_mode,
        tls,
        // One per core by default: a request never leaves the thread that accepted it.
        workers: match s.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        },
        cpu_affinity: s.cpu_affinity,
    })
}

fn read_tls_files(
    cert: &Path,
    key: &Path,
    base_dir: Option<&Path>,
    sources: &mut Sources,
) -> Result<TlsFiles, ConfigError> {
    let cert = resolve(base_dir, cert);
    let cert_chain_pem = sources.read(&cert).map_err(|source| ConfigError::File {
        key: "server.tls_cert_file".into(),
        path: cert,
        source,
    })?;
    let key = resolve(base_dir, key);
    let key_pem = sources
        .read_secret(&key)
        .map_err(|source| ConfigError::secret_file("server.tls_key_file", &key, source))?;
    // The PEM reader's errors may quote a line of the file: say only that the key is unusable.
    if !crate::tls::has_private_key(&key_pem) {
        return Err(invalid(
            "server.tls_key_file",
            "holds no PEM private key (PKCS#8, PKCS#1 or SEC1)",
        ));
    }
    // Parse now, so a bad file is a configuration error and not a failed handshake later.
    crate::tls::server_config(&cert_chain_pem, &key_pem)
        .map_err(|e| invalid("server.tls_cert_file", e.to_string()))?;
    Ok(TlsFiles {
        cert_chain_pem: Arc::new(cert_chain_pem),
        key_pem: Arc::new(SecretBytes(key_pem)),
    })
}

/// Whoever can connect to `server.listen` acts as the account: a plain TCP listener beyond
/// loopback, a unix socket every user may connect to, or one in a directory every user can write
/// to (where another user can take the path first) is warned about.
pub(super) fn listener_warnings(server: &ServerConfig) -> Vec<ConfigWarning> {
    use std::os::unix::fs::MetadataExt;
    let mut warnings = Vec::new();
    match &server.listen {
        ListenAddr::Tcp(listen) if !listen.ip().is_loopback() && server.tls.is_none() => {
            warnings.push(ConfigWarning::ListenWithoutTls { listen: *listen });
        }
        ListenAddr::Tcp(_) => {}
        ListenAddr::Unix(socket) => {
            let directory = match socket.parent() {
                Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
                _ => PathBuf::from("."),
            };
            // Even with the sticky bit: another user can create the path before the proxy does.
            if std::fs::metadata(&directory).is_ok_and(|m| m.mode() & 0o002 != 0) {
                warnings.push(ConfigWarning::SocketInOpenDirectory {
                    socket: socket.clone(),
                    directory,
                });
            }
            // Connecting to a unix socket takes write permission on it.
            if let Some(mode) = server.listen_mode.filter(|mode| mode & 0o002 != 0) {
                warnings.push(ConfigWarning::SocketOpenToAll {
                    socket: socket.clone(),
                    mode,
                });
            }
        }
    }
    warnings
}
