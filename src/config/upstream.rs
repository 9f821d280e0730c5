//! `[upstream]`: where Contentstack is (a region, or a URL for tests), which extra roots to
//! trust, and how long to wait for a connection.
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http::Uri;
use http::uri::{Authority, Scheme};
use serde::Deserialize;

use super::files::Sources;
use super::{ConfigError, invalid, read_pem_roots, resolve};

/// Contentstack's regions and their CMA hosts (docs/design.md#contentstack-as-the-design-sees-it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Region {
    Na,
    Eu,
    Au,
    AzureNa,
    AzureEu,
    GcpNa,
    GcpEu,
}

impl Region {
    pub fn url(self) -> &'static str {
        match self {
            Region::Na => "https://api.contentstack.io",
            Region::Eu => "https://eu-api.contentstack.com",
            Region::Au => "https://au-api.contentstack.com",
            Region::AzureNa => "https://azure-na-api.contentstack.com",
            Region::AzureEu => "https://azure-eu-api.contentstack.com",
            Region::GcpNa => "https://gcp-na-api.contentstack.com",
            Region::GcpEu => "https://gcp-eu-api.contentstack.com",
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct FileUpstream {
    #[serde(deserialize_with = "super::de::one_of")]
    region: Region,
    url: String,
    ca_file: String,
    #[serde(with = "humantime_serde")]
    connect_timeout: Duration,
}

impl Default for FileUpstream {
    fn default() -> Self {
        Self {
            region: Region::Na,
            url: String::new(),
            ca_file: String::new(),
            connect_timeout: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub scheme: Scheme,
    pub authority: Authority,
    /// `scheme://authority`, no trailing slash; the login client joins paths onto it.
    pub base_url: String,
    /// PEM file of extra roots, already read so a bad file is a config error.
    pub extra_roots_pem: Option<Arc<Vec<u8>>>,
    pub connect_timeout: Duration,
}

impl UpstreamConfig {
    /// The PEM of `upstream.ca_file`, if configured.
    pub fn extra_roots(&self) -> Option<&[u8]> {
        self.extra_roots_pem.as_deref().map(Vec::as_slice)
    }
}

pub(super) fn validate(
    u: FileUpstream,
    base_dir: Option<&Path>,
    sources: &mut Sources,
) -> Result<UpstreamConfig, ConfigError> {
    let (key, url) = if u.url.is_empty() {
        ("upstream.region", u.region.url().to_owned())
    } else {
        ("upstream.url", u.url.trim_end_matches('/').to_owned())
    };
    let uri: Uri = url
        .parse()
        .map_err(|e| invalid(key, format!("{url:?} is not a URL: {e}")))?;
    let scheme = uri
        .scheme()
        .filter(|s| matches!(s.as_str(), "http" | "https"))
        .cloned()
        .ok_or_else(|| invalid(key, "must start with https:// (or http:// for tests)"))?;
    let authority = uri
        .authority()
        .cloned()
        .ok_or_else(|| invalid(key, "must name a host"))?;
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(invalid(
            key,
            "must be only scheme and host, e.g. \"https://eu-api.contentstack.com\" (the /v3 path comes from the client)",
        ));
    }
    let extra_roots_pem = if u.ca_file.is_empty() {
        None
    } else {
        let path = resolve(base_dir, Path::new(&u.ca_file));
        Some(Arc::new(read_pem_roots(
            "upstream.ca_file",
            &path,
            sources,
        )?))
    };
    if u.connect_timeout.is_zero() {
        return Err(invalid("upstream.connect_timeout", "must be more than 0s"));
    }
    Ok(UpstreamConfig {
        base_url: format!("{scheme}://{authority}"),
        scheme,
        authority,
        extra_roots_pem,
        connect_timeout: u.connect_timeout,
    })
}
