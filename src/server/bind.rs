//! Binding the listeners so that an address belongs to one process: a second cma-auth-proxy on the
//! same address fails with "address in use" instead of quietly taking part of the traffic.
//!
//! TCP sockets are bound without `SO_REUSEPORT` (which would let any process of the same user share
//! the port, the kernel splitting connections between them); the proxy's own workers share the
//! one socket through the acceptor instead. A unix socket path is claimed with a lock file beside
//! it, so a live socket is never removed and re-bound under a running instance, and our socket
//! file is removed when the proxy exits.
use std::fs::{File, Metadata};
use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::config::ListenAddr;

#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// Another process listens on the address, or holds the unix socket's lock.
    #[error("address in use (another cma-auth-proxy?)")]
    InUse,
    /// The unix socket's lock file is a symbolic link: something may be trying to make the proxy
    /// create or lock another file.
    #[error("the lock file {0} is a symbolic link; remove it")]
    LockIsSymlink(PathBuf),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// A bound, listening socket, not yet registered with a runtime.
pub enum StdListener {
    Tcp(std::net::TcpListener),
    Unix(std::os::unix::net::UnixListener),
}

/// A listener and what binding it took.
pub struct Bound {
    pub listener: StdListener,
    /// The address it really got (port 0 resolved).
    pub addr: ListenAddr,
    /// For a unix socket: its file and lock, given up (and removed) when dropped. Keep it until the
    /// listener's connections have drained.
    pub socket_file: Option<SocketFile>,
}

/// Binds `addr` once. A unix socket gets `mode` (e.g. 0o660) so that only its owner and group
/// connect.
pub fn bind(addr: &ListenAddr, mode: Option<u32>) -> Result<Bound, BindError> {
    match addr {
        ListenAddr::Tcp(addr) => {
            let listener = tcp_listener(*addr).map_err(|e| match e.kind() {
                std::io::ErrorKind::AddrInUse => BindError::InUse,
                _ => BindError::Io(e),
            })?;
            let addr = listener.local_addr()?;
            Ok(Bound {
                listener: StdListener::Tcp(listener),
                addr: ListenAddr::Tcp(addr),
                socket_file: None,
            })
        }
        ListenAddr::Unix(path) => {
            let mut socket_file = SocketFile::claim(path)?;
            let listener = std::os::unix::net::UnixListener::bind(path)?;
            socket_file.bound = Some(file_id(&std::fs::symlink_metadata(path)?));
            listener.set_nonblocking(true)?;
            if let Some(mode) = mode {
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
            }
            Ok(Bound {
                listener: StdListener::Unix(listener),
                addr: ListenAddr::Unix(path.clone()),
                socket_file: Some(socket_file),
            })
        }
    }
}

/// `SO_REUSEADDR` lets a restarted proxy bind while its predecessor's connections linger in
/// TIME_WAIT; on Linux it never lets a second socket listen on a port that has a listener.
fn tcp_listener(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// A unix socket path this process owns, through an exclusive lock on `<path>.lock` held while the
/// proxy runs. Checking that nobody accepts on a socket file and then replacing it is a race
/// between two instances starting at once; the lock makes the check and the bind one step. The
/// lock dies with the process, so a crash leaves nothing that blocks the next start.
pub struct SocketFile {
    path: PathBuf,
    lock_path: PathBuf,
    /// Holds the lock; closed (unlocking) after `Drop` has removed the files.
    lock: File,
    /// Device and inode of the socket file we bound, so that we never remove someone else's.
    bound: Option<(u64, u64)>,
}

impl SocketFile {
    fn claim(path: &Path) -> Result<SocketFile, BindError> {
        let mut lock_path = path.as_os_str().to_owned();
        lock_path.push(".lock");
        let lock_path = PathBuf::from(lock_path);
        let lock = lock(&lock_path)?;
        // With the lock held, no cma-auth-proxy is running here: a socket file left behind is stale,
        // unless some other program accepts on it.
        if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
            if accepts(path)? {
                return Err(BindError::InUse);
            }
            match std::fs::remove_file(path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
                _ => {}
            }
        }
        Ok(SocketFile {
            path: path.to_owned(),
            lock_path,
            lock,
            bound: None,
        })
    }
}

/// Takes the lock at `lock_path`, or fails with [`BindError::InUse`] when another process has it.
fn lock(lock_path: &Path) -> Result<File, BindError> {
    loop {
        // Never through a symlink: in a directory others can write to, one planted at this path
        // would make the proxy create, or lock, whatever file it points to.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(lock_path)
            .map_err(|e| {
                if std::fs::symlink_metadata(lock_path).is_ok_and(|m| m.file_type().is_symlink()) {
                    BindError::LockIsSymlink(lock_path.to_owned())
                } else {
                    BindError::Io(e)
                }
            })?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Err(BindError::InUse),
            Err(std::fs::TryLockError::Error(e)) => return Err(e.into()),
        }
        // The holder before us removes the file on exit while it still holds the lock; if that
        // happened between our open and our lock, we hold a lock on a file nobody else will open.
        // Start over with the path's current file.
        let ours = file_id(&file.metadata()?);
        if std::fs::metadata(lock_path).is_ok_and(|m| file_id(&m) == ours) {
            return Ok(file);
        }
    }
}

/// Whether a process accepts connections on the unix socket at `path`. Non-blocking, so that a
/// listener with a full backlog (which counts as live) cannot stall the start.
fn accepts(path: &Path) -> std::io::Result<bool> {
    use socket2::{Domain, SockAddr, Socket, Type};
    let socket = Socket::new(Domain::UNIX, Type::STREAM, None)?;
    socket.set_nonblocking(true)?;
    match socket.connect(&SockAddr::unix(path)?) {
        Ok(()) => Ok(true),
        Err(e) => match e.kind() {
            std::io::ErrorKind::WouldBlock => Ok(true),
            std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::NotFound => Ok(false),
            _ => Err(e),
        },
    }
}

fn file_id(metadata: &Metadata) -> (u64, u64) {
    (metadata.dev(), metadata.ino())
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        let still = |path: &Path, id: (u64, u64)| {
            std::fs::symlink_metadata(path).is_ok_and(|m| file_id(&m) == id)
        };
        if let Some(socket) = self.bound
            && still(&self.path, socket)
        {
            let _ = std::fs::remove_file(&self.path);
        }
        // Removed while still locked: see `lock`.
        if let Ok(lock) = self.lock.metadata()
            && still(&self.lock_path, file_id(&lock))
        {
            let _ = std::fs::remove_file(&self.lock_path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tcp_port_with_a_listener_is_in_use_even_for_reuseaddr() {
        let first = bind(&ListenAddr::Tcp("127.0.0.1:0".parse().unwrap()), None).unwrap();
        let taken = ListenAddr::Tcp(first.addr.tcp().unwrap());
        assert!(matches!(bind(&taken, None), Err(BindError::InUse)));
    }
}
