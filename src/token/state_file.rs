//! Where an OAuth profile keeps its newest refresh token without a fleet store:
//! `state_dir/<profile>.json`, written whole or not at all (a new file, mode 0600, synced, renamed
//! over the old one, the directory synced), sealed with `token_store.encryption_key_file` when one
//! is configured, in the fleet store's format (`store::Codec::grant`). A crash at any moment leaves
//! the previous token or the new one, never half of either. Read with a bound, like every file.
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::config::EncryptionKey;
use crate::store::{Codec, Invalid, MAX_VALUE, SharedGrant};

#[derive(Debug, thiserror::Error)]
pub enum StateFileError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} cannot be used: {why}")]
    Unusable {
        path: PathBuf,
        #[source]
        why: Invalid,
    },
}

pub(super) struct StateFile {
    path: PathBuf,
    codec: Codec,
    /// What the seal binds the value to, as the store binds it to its account.
    account: String,
}

impl StateFile {
    pub(super) fn new(
        dir: &Path,
        profile: &str,
        key: Option<&EncryptionKey>,
        account: &str,
    ) -> StateFile {
        StateFile {
            path: dir.join(format!("{profile}.json")),
            codec: Codec::new(key),
            account: account.to_owned(),
        }
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// The kept refresh token; `None` when none was kept yet.
    pub(super) fn load(&self) -> Result<Option<SharedGrant>, StateFileError> {
        let read_error = |source| StateFileError::Read {
            path: self.path.clone(),
            source,
        };
        let file = match File::open(&self.path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(read_error(e)),
        };
        if !file.metadata().map_err(read_error)?.is_file() {
            return Err(read_error(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a regular file",
            )));
        }
        let mut bytes = Vec::new();
        file.take(MAX_VALUE as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(read_error)?;
        let text = bytes.strip_suffix(b"\n").unwrap_or(&bytes);
        self.codec
            .open_grant(&self.account, text, SystemTime::now())
            .map(Some)
            .map_err(|why| StateFileError::Unusable {
                path: self.path.clone(),
                why,
            })
    }

    /// Replaces the kept refresh token with `grant`, durably, before it returns.
    pub(super) fn save(&self, grant: &SharedGrant) -> Result<(), StateFileError> {
        let write_error = |source| StateFileError::Write {
            path: self.path.clone(),
            source,
        };
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let temporary = dir.join(format!(
            ".{}.{:016x}.tmp",
            self.path
                .file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default(),
            rand::random::<u64>()
        ));
        let value = format!("{}\n", self.codec.grant(&self.account, grant));
        let written = (|| {
            // Created for the proxy alone: it holds a credential.
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&temporary)?;
            file.write_all(value.as_bytes())?;
            file.sync_all()?;
            std::fs::rename(&temporary, &self.path)?;
            // The rename itself is durable only once the directory is.
            File::open(dir)?.sync_all()
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&temporary);
        }
        written.map_err(write_error)
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::time::Duration;

    use secrecy::{ExposeSecret, SecretString};

    use super::*;

    fn grant(token: &str) -> SharedGrant {
        SharedGrant {
            refresh_token: SecretString::from(token.to_owned()),
            issued_at: SystemTime::now() - Duration::from_secs(5),
            origin: "o".into(),
            generation: 3,
            user_uid: Some("blt-user".into()),
            organization_uid: None,
        }
    }

    #[test]
    fn a_saved_token_is_read_back_from_a_file_only_the_proxy_can_read() {
        let dir = crate::config::tests::tempdir();
        let file = StateFile::new(&dir, "default", None, "acct");
        assert!(file.load().unwrap().is_none(), "nothing kept yet");
        file.save(&grant("rt-1")).unwrap();
        file.save(&grant("rt-2")).unwrap();
        let back = file.load().unwrap().unwrap();
        assert_eq!(back.refresh_token.expose_secret(), "rt-2");
        assert_eq!((back.origin.as_str(), back.generation), ("o", 3));
        let mode = std::fs::metadata(file.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // No temporary file left behind.
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("default.json")]);
    }

    #[test]
    fn with_a_key_the_file_is_sealed_and_another_key_cannot_use_it() {
        let dir = crate::config::tests::tempdir();
        let key = EncryptionKey([3; 32]);
        let file = StateFile::new(&dir, "p", Some(&key), "acct");
        file.save(&grant("rt-sealed-secret")).unwrap();
        let text = std::fs::read_to_string(file.path()).unwrap();
        assert!(!text.contains("rt-sealed-secret"), "{text}");
        assert_eq!(
            file.load().unwrap().unwrap().refresh_token.expose_secret(),
            "rt-sealed-secret"
        );
        let other = StateFile::new(&dir, "p", Some(&EncryptionKey([4; 32])), "acct");
        let e = other.load().unwrap_err();
        assert!(
            matches!(
                e,
                StateFileError::Unusable {
                    why: Invalid::NotSealedByUs,
                    ..
                }
            ),
            "{e}"
        );
        assert!(!e.to_string().contains("rt-sealed-secret"));
    }

    #[test]
    fn a_failed_write_keeps_the_previous_token() {
        let dir = crate::config::tests::tempdir();
        let file = StateFile::new(&dir, "p", None, "acct");
        file.save(&grant("rt-old")).unwrap();
        let mut permissions = std::fs::metadata(&dir).unwrap().permissions();
        permissions.set_mode(0o500);
        std::fs::set_permissions(&dir, permissions.clone()).unwrap();
        let result = file.save(&grant("rt-new"));
        permissions.set_mode(0o700);
        std::fs::set_permissions(&dir, permissions).unwrap();
        // Root may write anyway; then the new token is simply kept.
        if let Err(e) = result {
            assert!(matches!(e, StateFileError::Write { .. }), "{e}");
            assert_eq!(
                file.load().unwrap().unwrap().refresh_token.expose_secret(),
                "rt-old"
            );
        }
    }
}
