//! Reading the files a configuration names: regular files only, each read with a bound, each
//! checked for who else may read or change it. What was read is remembered (to watch it, and to
//! tell a reload whether anything changed).
//!
//! Bounds: a path that names a device (`/dev/zero`), a pipe or a directory is refused before it
//! is opened (opening a pipe would wait for a writer forever), and no read goes past a size that
//! is generous for what the file holds. A larger file is an error, not truncated: half a PEM
//! bundle or the start of a password is never what the operator meant.
//!
//! Who may read: a secret file (and the configuration file, which may hold secrets such as a Redis
//! URL's password) should be readable by the proxy alone. Group read is accepted when the file's
//! group is one of this process's groups: that is how Kubernetes grants a Pod its Secret volume
//! (`defaultMode: 0440` owned by the Pod's `fsGroup`, a supplementary group of the containers), and
//! how a service user is usually given a file by an administrator. Anyone outside those groups
//! being able to read, or to write (and so to send the credentials elsewhere), is warned about.
//!
//! Who may change: writing to a file is not the only way to change it. Its owner can change its
//! mode, and whoever can write to its directory can rename another file over it, so a file owned
//! by another user (root aside), or in a directory others can write to (unless it has the sticky
//! bit, which keeps them from replacing a file they do not own) or another user owns, is warned
//! about too: both the directory the file is named in and the one it really is in.
use std::fs::{File, Metadata};
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use sha2::{Digest, Sha256};

use super::warning::{ConfigWarning, FileRole, Who};

/// The most read from the configuration file.
pub const CONFIG_FILE_LIMIT: u64 = 1024 * 1024;
/// The most read from a secret file (a password, TOTP secret, token or key is a few hundred bytes
/// at most; a TLS private key a few KiB).
pub const SECRET_FILE_LIMIT: u64 = 64 * 1024;
/// The most read from a certificate chain or CA bundle (the whole public web PKI is ~250 KiB).
pub const PEM_FILE_LIMIT: u64 = 1024 * 1024;

/// What a configuration was built from: the files to watch, a digest of every byte read (so a
/// reload can tell whether anything changed), and warnings about those files.
#[derive(Default)]
pub(super) struct Sources {
    pub files: Vec<PathBuf>,
    pub digest: Sha256,
    pub warnings: Vec<ConfigWarning>,
}

impl Sources {
    /// A certificate chain or CA bundle.
    pub fn read(&mut self, path: &Path) -> io::Result<Vec<u8>> {
        self.read_as(path, FileRole::Public)
    }

    /// A password, TOTP secret, management token or key.
    pub fn read_secret(&mut self, path: &Path) -> io::Result<Vec<u8>> {
        self.read_as(path, FileRole::Secret)
    }

    pub fn read_config(&mut self, path: &Path) -> io::Result<Vec<u8>> {
        self.read_as(path, FileRole::Config)
    }

    fn read_as(&mut self, path: &Path, role: FileRole) -> io::Result<Vec<u8>> {
        let (bytes, metadata) = read_bounded(path, limit(role))?;
        let warning = access_warning(
            path,
            role,
            metadata.mode(),
            metadata.gid(),
            our_groups().contains(&metadata.gid()),
        );
        let owner = foreign_owner(path, role, metadata.uid());
        for warning in [warning, owner]
            .into_iter()
            .flatten()
            .chain(directory_warnings(path))
        {
            if !self.warnings.contains(&warning) {
                self.warnings.push(warning);
            }
        }
        self.digest.update(path.as_os_str().as_encoded_bytes());
        self.digest.update((bytes.len() as u64).to_le_bytes());
        self.digest.update(&bytes);
        self.files.push(path.to_owned());
        Ok(bytes)
    }
}

fn limit(role: FileRole) -> u64 {
    match role {
        FileRole::Config => CONFIG_FILE_LIMIT,
        FileRole::Secret => SECRET_FILE_LIMIT,
        FileRole::Public => PEM_FILE_LIMIT,
    }
}

fn read_bounded(path: &Path, limit: u64) -> io::Result<(Vec<u8>, Metadata)> {
    let not_a_file = || {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file (devices, pipes and directories are never read)",
        )
    };
    // Follows symlinks, as Kubernetes' `KEY -> ..data/KEY` needs; checked before opening because
    // opening a pipe blocks until someone writes to it.
    if !std::fs::metadata(path)?.is_file() {
        return Err(not_a_file());
    }
    let file = File::open(path)?;
    // The file actually opened, should the path have been swapped in between.
    let metadata = file.metadata()?;
    if !metadata.is_file() {
        return Err(not_a_file());
    }
    let mut bytes = Vec::with_capacity(metadata.len().min(limit) as usize);
    file.take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(io::Error::new(
            io::ErrorKind::FileTooLarge,
            format!(
                "larger than {}, the most read from such a file",
                size_text(limit)
            ),
        ));
    }
    Ok((bytes, metadata))
}

fn size_text(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{} MiB", b >> 20),
        b if b >= 1 << 10 && b % (1 << 10) == 0 => format!("{} KiB", b >> 10),
        b => format!("{b} bytes"),
    }
}

/// The groups whose members this process counts as itself: its real and effective group and its
/// supplementary groups (where Kubernetes puts the Pod's `fsGroup`).
fn our_groups() -> &'static [u32] {
    static GROUPS: OnceLock<Vec<u32>> = OnceLock::new();
    GROUPS.get_or_init(|| {
        let mut groups = vec![
            rustix::process::getgid().as_raw(),
            rustix::process::getegid().as_raw(),
        ];
        // Without the list, a group-readable file may be warned about needlessly; never the
        // other way round.
        if let Ok(supplementary) = rustix::process::getgroups() {
            groups.extend(supplementary.into_iter().map(|g| g.as_raw()));
        }
        groups
    })
}

/// Whether `uid` is the proxy's own user or root: the users who may own what it reads.
fn trusted_owner(uid: u32) -> bool {
    uid == 0 || uid == rustix::process::geteuid().as_raw()
}

fn foreign_owner(path: &Path, role: FileRole, uid: u32) -> Option<ConfigWarning> {
    (!trusted_owner(uid)).then(|| ConfigWarning::ForeignOwner {
        path: path.to_owned(),
        role,
        uid,
    })
}

/// Warnings about the directories `path` is in: the one it is named in, and the one it really is
/// in (behind symlinks).
fn directory_warnings(path: &Path) -> Vec<ConfigWarning> {
    let named = path.parent().map(Path::to_owned);
    let real = std::fs::canonicalize(path)
        .ok()
        .and_then(|p| p.parent().map(Path::to_owned));
    let mut directories = vec![];
    for dir in [named, real].into_iter().flatten() {
        let dir = if dir.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            dir
        };
        if !directories.contains(&dir) {
            directories.push(dir);
        }
    }
    directories
        .into_iter()
        .filter_map(|dir| {
            let m = std::fs::metadata(&dir).ok()?;
            open_directory(
                path,
                &dir,
                m.mode(),
                m.gid(),
                our_groups().contains(&m.gid()),
                (!trusted_owner(m.uid())).then_some(m.uid()),
            )
        })
        .collect()
}

/// Whether a directory with `mode` (its group `gid`, of ours or not; its owner, when not the
/// proxy's user or root) lets others replace `path` in it.
fn open_directory(
    path: &Path,
    directory: &Path,
    mode: u32,
    gid: u32,
    group_is_ours: bool,
    foreign_owner: Option<u32>,
) -> Option<ConfigWarning> {
    // With the sticky bit, only a file's owner (or the directory's) may rename or remove it.
    let sticky = mode & 0o1000 != 0;
    let writers = if sticky {
        None
    } else if mode & 0o002 != 0 {
        Some(Who::Everyone)
    } else if mode & 0o020 != 0 && !group_is_ours {
        Some(Who::Group(gid))
    } else {
        None
    };
    (writers.is_some() || foreign_owner.is_some()).then(|| ConfigWarning::OpenDirectory {
        path: path.to_owned(),
        directory: directory.to_owned(),
        writers,
        owner: foreign_owner,
    })
}

fn access_warning(
    path: &Path,
    role: FileRole,
    mode: u32,
    gid: u32,
    group_is_ours: bool,
) -> Option<ConfigWarning> {
    let mode = mode & 0o7777;
    let open_to = |others: u32, group: u32| {
        if mode & others != 0 {
            Some(Who::Everyone)
        } else if mode & group != 0 && !group_is_ours {
            Some(Who::Group(gid))
        } else {
            None
        }
    };
    let readers = match role {
        FileRole::Public => None,
        FileRole::Config | FileRole::Secret => open_to(0o004, 0o040),
    };
    let writers = open_to(0o002, 0o020);
    (readers.is_some() || writers.is_some()).then(|| ConfigWarning::FileAccess {
        path: path.to_owned(),
        role,
        mode,
        readers,
        writers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn warning(
        role: FileRole,
        mode: u32,
        group_is_ours: bool,
    ) -> Option<(Option<Who>, Option<Who>)> {
        match access_warning(Path::new("/f"), role, mode, 1234, group_is_ours)? {
            ConfigWarning::FileAccess {
                readers, writers, ..
            } => Some((readers, writers)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn secret_files_may_be_read_by_the_owner_and_by_a_group_of_ours_only() {
        use FileRole::*;
        for role in [Secret, Config] {
            assert_eq!(warning(role, 0o600, false), None);
            assert_eq!(warning(role, 0o400, false), None);
            // Kubernetes: defaultMode 0440, group = the Pod's fsGroup.
            assert_eq!(warning(role, 0o440, true), None);
            assert_eq!(warning(role, 0o640, true), None);
            assert_eq!(
                warning(role, 0o440, false),
                Some((Some(Who::Group(1234)), None))
            );
            assert_eq!(
                warning(role, 0o444, true),
                Some((Some(Who::Everyone), None))
            );
            assert_eq!(
                warning(role, 0o604, false),
                Some((Some(Who::Everyone), None))
            );
            assert_eq!(
                warning(role, 0o666, true),
                Some((Some(Who::Everyone), Some(Who::Everyone)))
            );
            // Type bits of st_mode are not permissions.
            assert_eq!(warning(role, 0o100600, false), None);
        }
        assert_eq!(warning(Public, 0o644, false), None);
        assert_eq!(warning(Public, 0o664, true), None);
        assert_eq!(
            warning(Public, 0o664, false),
            Some((None, Some(Who::Group(1234))))
        );
        assert_eq!(
            warning(Public, 0o646, true),
            Some((None, Some(Who::Everyone)))
        );
    }

    #[test]
    fn a_file_others_can_replace_is_warned_about() {
        let (file, dir) = (Path::new("/etc/cma/password"), Path::new("/etc/cma"));
        let open = |mode, group_is_ours, owner| {
            open_directory(file, dir, mode, 1234, group_is_ours, owner).map(|w| match w {
                ConfigWarning::OpenDirectory { writers, owner, .. } => (writers, owner),
                other => panic!("{other:?}"),
            })
        };
        assert_eq!(open(0o40755, false, None), None);
        assert_eq!(open(0o40775, true, None), None);
        assert_eq!(
            open(0o40777, false, None),
            Some((Some(Who::Everyone), None))
        );
        assert_eq!(
            open(0o40775, false, None),
            Some((Some(Who::Group(1234)), None))
        );
        // The sticky bit (/tmp, a Kubernetes volume) keeps others from replacing our file.
        assert_eq!(open(0o41777, false, None), None);
        // Another user owns it: they can change its mode at will.
        assert_eq!(open(0o40700, false, Some(1000)), Some((None, Some(1000))));
        assert!(foreign_owner(file, FileRole::Secret, 0).is_none());
        assert!(
            foreign_owner(file, FileRole::Secret, rustix::process::geteuid().as_raw()).is_none()
        );
        let other = rustix::process::geteuid()
            .as_raw()
            .wrapping_add(4321)
            .max(1);
        let warning = foreign_owner(file, FileRole::Secret, other)
            .unwrap()
            .to_string();
        assert!(
            warning.contains(&format!("owned by user {other}")),
            "{warning}"
        );
    }

    #[test]
    fn reads_are_bounded_and_only_of_regular_files() {
        let dir = super::super::tests::tempdir();
        let path = dir.join("f");
        std::fs::write(&path, vec![b'x'; 100]).unwrap();
        assert_eq!(read_bounded(&path, 100).unwrap().0.len(), 100);
        let e = read_bounded(&path, 99).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::FileTooLarge);
        assert!(e.to_string().contains("larger than 99 bytes"), "{e}");
        for not_a_file in [Path::new("/dev/zero"), &dir] {
            let e = read_bounded(not_a_file, 100).unwrap_err();
            assert!(e.to_string().contains("not a regular file"), "{e}");
        }
    }
}
