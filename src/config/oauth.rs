//! `[profiles.NAME.oauth]`: a profile that acts through a Contentstack OAuth app (Developer Hub)
//! with a user's authorization, instead of a password or a management token. What it needs: the
//! app (`app_id`, `client_id`, `client_secret_file` for confidential apps, `redirect_uri`), the
//! refresh token it starts from (`refresh_token_file`), where the rotated refresh token is kept
//! (`state_dir`, or the fleet store), and the token and authorization endpoints (derived from the
//! upstream unless written). See docs/design.md#oauth-profiles.
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use super::files::Sources;
use super::token_store::{EncryptionKey, TokenStoreConfig};
use super::upstream::UpstreamConfig;
use super::{ConfigError, invalid, resolve};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct FileOAuth {
    app_id: Option<String>,
    client_id: Option<String>,
    client_secret_file: Option<PathBuf>,
    redirect_uri: Option<String>,
    refresh_token_file: Option<PathBuf>,
    state_dir: Option<PathBuf>,
    token_url: Option<String>,
    authorize_url: Option<String>,
}

/// What an OAuth profile needs to obtain access tokens. `Debug` shows no secret; two are equal when
/// every field is, secrets compared by value (a reload that changes none of them keeps the
/// profile's state, its tokens and its backoff).
#[derive(Clone)]
pub struct OAuthCredentials {
    pub app_id: String,
    pub client_id: String,
    /// Confidential apps only; PKCE apps have none.
    pub client_secret: Option<SecretString>,
    pub redirect_uri: String,
    /// `POST` here: code exchange and refresh.
    pub token_url: String,
    /// The page a user approves the app on, without its query.
    pub authorize_url: String,
    /// The refresh token the operator handed in; the newest of it and the kept one is used.
    pub bootstrap: Option<BootstrapToken>,
    /// Where the rotated refresh token is kept without a fleet store; `None` with one.
    pub state_dir: Option<PathBuf>,
    /// Seals the kept refresh token (`token_store.encryption_key_file`), when configured.
    pub state_key: Option<EncryptionKey>,
}

/// The refresh token of `refresh_token_file`, and when that file was written: a refresh token kept
/// by the proxy that is older than the file, and not descended from its token, gives way to it.
#[derive(Clone)]
pub struct BootstrapToken {
    pub token: SecretString,
    pub written_at: SystemTime,
}

impl std::fmt::Debug for OAuthCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuthCredentials")
            .field("app_id", &self.app_id)
            .field("client_id", &self.client_id)
            .field(
                "client_secret",
                &self.client_secret.as_ref().map(|_| "[REDACTED]"),
            )
            .field("redirect_uri", &self.redirect_uri)
            .field("token_url", &self.token_url)
            .field("authorize_url", &self.authorize_url)
            .field("bootstrap", &self.bootstrap.as_ref().map(|_| "[REDACTED]"))
            .field("state_dir", &self.state_dir)
            .field("state_key", &self.state_key.as_ref().map(|_| "[REDACTED]"))
            .finish()
    }
}

impl PartialEq for OAuthCredentials {
    fn eq(&self, other: &Self) -> bool {
        let secret = |s: &Option<SecretString>| s.as_ref().map(|s| s.expose_secret().to_owned());
        let bootstrap =
            |b: &Option<BootstrapToken>| b.as_ref().map(|b| b.token.expose_secret().to_owned());
        self.app_id == other.app_id
            && self.client_id == other.client_id
            && secret(&self.client_secret) == secret(&other.client_secret)
            && self.redirect_uri == other.redirect_uri
            && self.token_url == other.token_url
            && self.authorize_url == other.authorize_url
            && bootstrap(&self.bootstrap) == bootstrap(&other.bootstrap)
            && self.state_dir == other.state_dir
            && self.state_key == other.state_key
    }
}

/// What the OAuth keys are validated against: the upstream they derive their endpoints from, and
/// the token store that decides where the rotated refresh token is kept.
pub(super) struct Context<'a> {
    pub upstream: &'a UpstreamConfig,
    pub token_store: &'a TokenStoreConfig,
}

pub(super) fn validate(
    key: &str,
    o: FileOAuth,
    context: &Context<'_>,
    base_dir: Option<&Path>,
    sources: &mut Sources,
) -> Result<OAuthCredentials, ConfigError> {
    let key = format!("{key}.oauth");
    let required = |value: Option<String>, name: &str| {
        value
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
            .ok_or_else(|| invalid(format!("{key}.{name}"), "is required for an OAuth profile"))
    };
    let app_id = required(o.app_id, "app_id")?;
    if !app_id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(invalid(
            format!("{key}.app_id"),
            "may hold only letters, digits, '-' and '_' (the app's uid in Developer Hub)",
        ));
    }
    let client_id = required(o.client_id, "client_id")?;
    if !client_id.chars().all(|c| c.is_ascii_graphic()) {
        return Err(invalid(
            format!("{key}.client_id"),
            "may hold only visible ASCII characters",
        ));
    }
    let redirect_uri = required(o.redirect_uri, "redirect_uri")?;
    http_url(&format!("{key}.redirect_uri"), &redirect_uri)?;
    let client_secret = read_secret_file(
        &key,
        "client_secret_file",
        o.client_secret_file,
        base_dir,
        sources,
    )?
    .map(|(secret, _)| secret);
    let bootstrap = read_secret_file(
        &key,
        "refresh_token_file",
        o.refresh_token_file,
        base_dir,
        sources,
    )?
    .map(|(token, written_at)| BootstrapToken { token, written_at });
    let (state_dir, state_key) = match (context.token_store, o.state_dir) {
        (TokenStoreConfig::Redis(_), Some(_)) => {
            return Err(invalid(
                format!("{key}.state_dir"),
                "with token_store kind = \"redis\" the rotated refresh token is kept in the fleet store, sealed; remove state_dir",
            ));
        }
        (TokenStoreConfig::Redis(_), None) => (None, None),
        (TokenStoreConfig::Memory { .. }, None) => {
            return Err(invalid(
                format!("{key}.state_dir"),
                "is required without a fleet store: every refresh replaces the refresh token, and the new one must be kept where a restart finds it (a directory only the proxy can write, on a volume that outlives the process)",
            ));
        }
        (TokenStoreConfig::Memory { encryption_key }, Some(dir)) => {
            let dir = resolve(base_dir, &dir);
            if !std::fs::metadata(&dir).is_ok_and(|m| m.is_dir()) {
                return Err(invalid(
                    format!("{key}.state_dir"),
                    format!("{} is not a directory", dir.display()),
                ));
            }
            (Some(dir), encryption_key.clone())
        }
    };
    let token_url = match o.token_url {
        Some(url) => http_url(&format!("{key}.token_url"), url.trim())?,
        None => format!(
            "{}/token",
            sibling_base(context.upstream, "developerhub-api")
        ),
    };
    let authorize_url = match o.authorize_url {
        Some(url) => http_url(&format!("{key}.authorize_url"), url.trim())?,
        None => format!(
            "{}/#!/apps/{app_id}/authorize",
            sibling_base(context.upstream, "app")
        ),
    };
    Ok(OAuthCredentials {
        app_id,
        client_id,
        client_secret,
        redirect_uri,
        token_url,
        authorize_url,
        bootstrap,
        state_dir,
        state_key,
    })
}

/// A secret file's content (trailing newline dropped) and when the file was last written.
fn read_secret_file(
    key: &str,
    name: &str,
    path: Option<PathBuf>,
    base_dir: Option<&Path>,
    sources: &mut Sources,
) -> Result<Option<(SecretString, SystemTime)>, ConfigError> {
    let Some(path) = path else { return Ok(None) };
    let path = resolve(base_dir, &path);
    let file_error = |source| ConfigError::secret_file(format!("{key}.{name}"), &path, source);
    let bytes = sources.read_secret(&path).map_err(file_error)?;
    // A date in the future (a file copied from a machine whose clock runs ahead) is taken as now:
    // it would date every refresh token of the chain after it, and replicas refuse stored
    // values dated ahead of their clock.
    let written_at = std::fs::metadata(&path)
        .and_then(|m| m.modified())
        .map_err(file_error)?
        .min(SystemTime::now());
    let text =
        String::from_utf8(bytes).map_err(|_| invalid(format!("{key}.{name}"), "is not UTF-8"))?;
    let value = text.trim();
    if value.is_empty() {
        return Err(invalid(format!("{key}.{name}"), "names an empty file"));
    }
    if !value.chars().all(|c| c.is_ascii_graphic()) {
        return Err(invalid(
            format!("{key}.{name}"),
            "holds characters a token or secret never has (spaces, control or non-ASCII characters)",
        ));
    }
    Ok(Some((SecretString::from(value.to_owned()), written_at)))
}

/// Checks an `http(s)://` URL with a host; returns it as written.
fn http_url(key: &str, url: &str) -> Result<String, ConfigError> {
    let parsed = reqwest::Url::parse(url).map_err(|_| invalid(key, "is not a URL"))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(invalid(
            key,
            "must be an https:// URL with a host (http:// is allowed for tests and dev)",
        ));
    }
    Ok(url.to_owned())
}

/// `scheme://host[:port]` of the Contentstack service `service` (`app`, `developerhub-api`) in the
/// upstream's region, derived from the CMA host as the official SDKs derive it: `api.contentstack.io`
/// → `SERVICE.contentstack.com`, `REGION-api.contentstack.com` → `REGION-SERVICE.contentstack.com`.
/// Any other host (a simulator, a gateway) is taken to serve the OAuth endpoints itself.
fn sibling_base(upstream: &UpstreamConfig, service: &str) -> String {
    match sibling_host(upstream.authority.host(), service) {
        Some(host) => format!("https://{host}"),
        None => upstream.base_url.clone(),
    }
}

fn sibling_host(cma_host: &str, service: &str) -> Option<String> {
    let host = cma_host.to_ascii_lowercase();
    if host == "api.contentstack.io" || host == "api.contentstack.com" {
        return Some(format!("{service}.contentstack.com"));
    }
    let region = host.strip_suffix("-api.contentstack.com")?;
    Some(format!("{region}-{service}.contentstack.com"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_region_derives_the_hosts_the_sdks_use() {
        // The `application` and `developerHub` columns of Contentstack's regions.json.
        let table = [
            (
                "api.contentstack.io",
                "app.contentstack.com",
                "developerhub-api.contentstack.com",
            ),
            (
                "eu-api.contentstack.com",
                "eu-app.contentstack.com",
                "eu-developerhub-api.contentstack.com",
            ),
            (
                "au-api.contentstack.com",
                "au-app.contentstack.com",
                "au-developerhub-api.contentstack.com",
            ),
            (
                "azure-na-api.contentstack.com",
                "azure-na-app.contentstack.com",
                "azure-na-developerhub-api.contentstack.com",
            ),
            (
                "azure-eu-api.contentstack.com",
                "azure-eu-app.contentstack.com",
                "azure-eu-developerhub-api.contentstack.com",
            ),
            (
                "gcp-na-api.contentstack.com",
                "gcp-na-app.contentstack.com",
                "gcp-na-developerhub-api.contentstack.com",
            ),
            (
                "gcp-eu-api.contentstack.com",
                "gcp-eu-app.contentstack.com",
                "gcp-eu-developerhub-api.contentstack.com",
            ),
        ];
        for (cma, app, developer_hub) in table {
            assert_eq!(sibling_host(cma, "app").as_deref(), Some(app), "{cma}");
            assert_eq!(
                sibling_host(cma, "developerhub-api").as_deref(),
                Some(developer_hub),
                "{cma}"
            );
        }
        assert_eq!(sibling_host("127.0.0.1", "app"), None);
        assert_eq!(sibling_host("cma.internal.example", "app"), None);
        // A look-alike is not a Contentstack host.
        assert_eq!(
            sibling_host("evil-api.contentstack.com.attacker.example", "app"),
            None
        );
    }
}
