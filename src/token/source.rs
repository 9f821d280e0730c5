//! How a profile obtains its token: by logging in with a password, or by refreshing an OAuth app's
//! authorization. Everything else about tokens (the single flight, the state, backoff, care,
//! retirement, the fleet protocol) is the same for both; this is the one place that tells them
//! apart.
use std::sync::Arc;

use super::TokenKind;
use super::failure::LoginFailure;
use super::grant::Grant;
use super::state_file::StateFile;
use crate::config::{Credentials, LoginCredentials, ProfileConfig};
use crate::store::{self, RedisStore, SharedFailure};

pub(super) enum Source {
    /// `POST /v3/user-session` with e-mail, password and a TOTP code.
    Login(Arc<LoginCredentials>),
    /// `grant_type=refresh_token` at the app's token endpoint.
    OAuth(Grant),
}

impl Source {
    /// The source of a profile with a session; `None` for a management token. `account` names
    /// the session where it is shared or kept.
    pub(super) fn of(profile: &ProfileConfig, account: &str) -> Option<Source> {
        match &profile.credentials {
            Credentials::Login(login) => Some(Source::Login(login.clone())),
            Credentials::OAuth(oauth) => {
                let file = oauth.state_dir.as_ref().map(|dir| {
                    Arc::new(StateFile::new(
                        dir,
                        &profile.name,
                        oauth.state_key.as_ref(),
                        account,
                    ))
                });
                Some(Source::OAuth(Grant::new(oauth.clone(), file)))
            }
            Credentials::ManagementToken(_) => None,
        }
    }

    /// The account's name in the fleet store (and the seal's context in a state file). Replicas
    /// share a login session by upstream and e-mail; they share an OAuth authorization by
    /// upstream, app, client and profile name (the user is not known before the first refresh).
    pub(super) fn account(profile: &ProfileConfig, base_url: &str) -> Option<String> {
        match &profile.credentials {
            Credentials::Login(login) => Some(store::account_key(base_url, &login.email)),
            Credentials::OAuth(oauth) => Some(store::account_key(
                base_url,
                &format!(
                    "oauth\n{}\n{}\n{}",
                    oauth.app_id, oauth.client_id, profile.name
                ),
            )),
            Credentials::ManagementToken(_) => None,
        }
    }

    pub(super) fn kind(&self) -> TokenKind {
        match self {
            Source::Login(_) => TokenKind::Authtoken,
            Source::OAuth(_) => TokenKind::Bearer,
        }
    }

    pub(super) fn mode(&self) -> &'static str {
        match self {
            Source::Login(_) => "login",
            Source::OAuth(_) => "oauth",
        }
    }

    /// Whether `profile` still has the credentials this source obtains tokens with (a reload that
    /// changes none of them keeps the state, its token and its backoff).
    pub(super) fn same_credentials(&self, profile: &ProfileConfig) -> bool {
        match (self, &profile.credentials) {
            (Source::Login(ours), Credentials::Login(theirs)) => **ours == **theirs,
            (Source::OAuth(grant), Credentials::OAuth(theirs)) => *grant.oauth == **theirs,
            _ => false,
        }
    }

    /// Takes over what the state this one replaces learnt (an OAuth refresh token obtained there).
    pub(super) fn carry_over(&self, old: &Source) {
        if let (Source::OAuth(new), Source::OAuth(old)) = (self, old)
            && new.oauth.client_id == old.oauth.client_id
            && new.oauth.token_url == old.oauth.token_url
        {
            new.carry_over(old);
        }
    }

    /// The tag under which the fleet shares a failure of these credentials.
    pub(super) fn credentials_tag(&self, store: &RedisStore) -> Option<String> {
        match self {
            Source::Login(login) => store.credentials_tag(login),
            Source::OAuth(grant) => store.oauth_credentials_tag(&grant.oauth),
        }
    }

    /// Another replica's failure, as this source would have failed.
    pub(super) fn refused(&self, shared: &SharedFailure) -> LoginFailure {
        match self {
            Source::Login(_) => LoginFailure::Rejected {
                http_status: shared.http_status,
                error_code: shared.error_code,
            },
            Source::OAuth(_) if shared.http_status == 0 => LoginFailure::NotAuthorized,
            Source::OAuth(_) => LoginFailure::RefreshRefused {
                http_status: shared.http_status,
                error: None,
            },
        }
    }
}
