//! Inbound TLS of a listener, owned by the listener: the configuration each new connection
//! handshakes with, swapped when a reload brings new certificate files. Connections already open
//! keep the certificate they were served with.
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::config::TlsFiles;
use crate::tls::{self, ServerTlsError};

pub struct InboundTls(ArcSwap<rustls::ServerConfig>);

impl InboundTls {
    pub fn new(files: &TlsFiles) -> Result<Arc<InboundTls>, ServerTlsError> {
        let config = tls::server_config(&files.cert_chain_pem, &files.key_pem.0)?;
        Ok(Arc::new(InboundTls(ArcSwap::from_pointee(config))))
    }

    /// What the next connection handshakes with.
    pub fn current(&self) -> Arc<rustls::ServerConfig> {
        self.0.load_full()
    }

    /// Takes a reloaded configuration's certificate files (`files`) for new connections. Files
    /// that make no configuration leave the current one serving; turning TLS on or off takes a
    /// restart, since the listener was started with or without it.
    pub fn reload(listener: Option<&InboundTls>, files: Option<&TlsFiles>) {
        match (listener, files) {
            (Some(current), Some(files)) => {
                match tls::server_config(&files.cert_chain_pem, &files.key_pem.0) {
                    Ok(config) => current.0.store(Arc::new(config)),
                    Err(e) => tracing::error!("inbound TLS unchanged: {e}"),
                }
            }
            (None, None) => {}
            _ => tracing::warn!("turning inbound TLS on or off needs a restart"),
        }
    }
}
