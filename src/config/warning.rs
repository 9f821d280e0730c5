//! What a valid configuration should still not do: things `check` prints and `run` logs at start
//! and after every reload, without refusing to serve. No warning holds a secret: they name keys,
//! paths, modes and environment variables, never values.
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

use super::Origin;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigWarning {
    /// A file the configuration reads is open to users other than the proxy's.
    FileAccess {
        path: PathBuf,
        role: FileRole,
        /// Permission bits, e.g. 0o644.
        mode: u32,
        readers: Option<Who>,
        writers: Option<Who>,
    },
    /// A file the configuration reads is owned by a user other than the proxy's (and not root):
    /// that user can change it, or its mode.
    ForeignOwner {
        path: PathBuf,
        role: FileRole,
        uid: u32,
    },
    /// A file the configuration reads sits in a directory others can write to (or that another
    /// user owns): they can rename another file over it.
    OpenDirectory {
        path: PathBuf,
        directory: PathBuf,
        writers: Option<Who>,
        owner: Option<u32>,
    },
    /// A unix-socket `server.listen` in a directory every user can write to: another user can take
    /// the path before the proxy does.
    SocketInOpenDirectory { socket: PathBuf, directory: PathBuf },
    /// `server.listen_mode` lets every user connect: each acts as the service account.
    SocketOpenToAll { socket: PathBuf, mode: u32 },
    /// A secret written into the configuration file or passed in an environment variable.
    InlineSecret { key: String, at: Origin },
    /// `server.listen` reaches beyond loopback and serves plain HTTP.
    ListenWithoutTls { listen: SocketAddr },
    /// `token_store.allow_plaintext = true`: the fleet's token sits in Redis in the clear.
    PlaintextStore,
}

/// What a file holds, which decides who may read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileRole {
    /// The configuration file: it names the account and may hold secrets (a Redis URL's password).
    Config,
    /// A password, TOTP secret, management token or key.
    Secret,
    /// Certificates and CA bundles: anyone may read them, but whoever can change them can make
    /// the proxy trust another server.
    Public,
}

impl FileRole {
    fn noun(self) -> &'static str {
        match self {
            FileRole::Config => "configuration file",
            FileRole::Secret => "secret file",
            FileRole::Public => "file",
        }
    }
}

/// Who, besides the proxy, may read or change a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Who {
    /// Every user of the host ("others" in the mode).
    Everyone,
    /// The members of a group the proxy does not belong to.
    Group(u32),
}

impl fmt::Display for Who {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Who::Everyone => f.write_str("every user"),
            Who::Group(gid) => write!(f, "group {gid} (this process is not in it)"),
        }
    }
}

impl fmt::Display for ConfigWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigWarning::FileAccess {
                path,
                role,
                mode,
                readers,
                writers,
            } => {
                write!(f, "{} {} (mode {mode:04o})", role.noun(), path.display())?;
                if let Some(who) = readers {
                    write!(f, " is readable by {who}")?;
                }
                if let Some(who) = writers {
                    let and = if readers.is_some() { " and" } else { "" };
                    write!(f, "{and} is writable by {who}")?;
                }
                match (role, writers.is_some()) {
                    (_, true) => f.write_str(
                        ": whoever can change it can send the credentials elsewhere; \
                         let only the proxy's user write it (`chmod go-w`)",
                    ),
                    (FileRole::Secret, false) => f.write_str(
                        ": let only the proxy's user read it (`chmod 0600`, or 0440 with a group \
                         that only the proxy is in, such as a Kubernetes Pod's fsGroup)",
                    ),
                    (_, false) => f.write_str(
                        ": it names the account and may hold secrets; let only the proxy's user \
                         read it (`chmod 0600`, or 0440 with a group that only the proxy is in)",
                    ),
                }
            }
            ConfigWarning::ForeignOwner { path, role, uid } => write!(
                f,
                "{} {} is owned by user {uid}, not by the proxy's user or root: that user can \
                 change it, and with it the account or where the credentials go; \
                 `chown` it to the proxy's user",
                role.noun(),
                path.display()
            ),
            ConfigWarning::OpenDirectory {
                path,
                directory,
                writers,
                owner,
            } => {
                write!(f, "{} sits in directory {}, which ", path.display(), directory.display())?;
                match (writers, owner) {
                    (Some(who), _) => write!(f, "is writable by {who}")?,
                    (None, Some(uid)) => write!(f, "user {uid} owns")?,
                    (None, None) => f.write_str("others control")?,
                }
                f.write_str(
                    ": they can rename another file over it; keep it in a directory only the \
                     proxy's user (or root) can change (`chmod go-w`, or the sticky bit)",
                )
            }
            ConfigWarning::SocketInOpenDirectory { socket, directory } => write!(
                f,
                "`server.listen` unix:{} is in {}, which every user can write to: another user \
                 can take the path before the proxy does and answer its clients; put the socket in \
                 a directory only the proxy and its clients can enter",
                socket.display(),
                directory.display()
            ),
            ConfigWarning::SocketOpenToAll { socket, mode } => write!(
                f,
                "`server.listen_mode` {mode:04o} lets every user connect to unix:{}, and each then \
                 acts as the service account; use \"0660\" with a group for the clients",
                socket.display()
            ),
            ConfigWarning::InlineSecret { key, at } => {
                let file_key = format!("{}_file", key.rsplit('.').next().unwrap_or(key));
                match at {
                    Origin::File { .. } => write!(
                        f,
                        "`{key}` is written in the configuration file ({at}); \
                         keep secrets in a file only the proxy can read and name it with `{file_key}`"
                    ),
                    Origin::Env { var } => write!(
                        f,
                        "`{key}` comes from the environment variable {var}, which leaks easily \
                         (/proc/PID/environ, `docker inspect`, a Pod's spec); \
                         keep secrets in a file only the proxy can read and name it with `{file_key}`"
                    ),
                }
            }
            ConfigWarning::ListenWithoutTls { listen } => write!(
                f,
                "`server.listen` {listen} reaches beyond loopback without TLS: anything that can \
                 connect acts as the service account; listen on 127.0.0.1 or a unix socket, or set \
                 `server.tls_cert_file` and `server.tls_key_file`"
            ),
            ConfigWarning::PlaintextStore => f.write_str(
                "token_store.allow_plaintext = true: the shared session token is stored in Redis in \
                 the clear and nothing read back can be authenticated; anyone who can read Redis \
                 holds the service account's session, and anyone who can write to it can make every \
                 replica use a token of their choosing. To seal it, generate a key with \
                 `openssl rand -base64 32 > store-key`, set encryption_key_file on every replica and \
                 remove allow_plaintext",
            ),
        }
    }
}
