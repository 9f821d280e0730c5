//! `cma-auth-proxy dev`: the simulated CMA of the `cma-sim` crate with a demo account, and the
//! proxy in front of it, configured as a user would configure it. Only in builds with the `dev`
//! feature (the default); `run` never needs it.
//!
//! With `--tls` the proxy listener speaks TLS with a certificate for `cma-auth-proxy` (and
//! `localhost`, `127.0.0.1`) from a private CA made for this run, so that Contentstack's CLI, which
//! only speaks HTTPS to a host name, can be tried against it; `dev` prints the commands.
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use cma_sim::{Account, DEMO_API_KEY, DEMO_EMAIL, DEMO_PASSWORD, DEMO_TOTP_SECRET, FakeCma};

use crate::config::{ConfigError, ListenAddr};
use crate::{Config, StartError};

/// The host name the CLI recipe uses for the sidecar, as the manifests in `deploy/` name it.
pub const PROXY_HOST: &str = "cma-auth-proxy";

/// `cma-auth-proxy dev`: the simulator with the demo account, and the proxy in front of it.
pub async fn run_dev(
    listen: ListenAddr,
    admin_listen: ListenAddr,
    tls: bool,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), DevError> {
    let certificates = tls.then(DevCertificates::create).transpose()?;
    let fake = FakeCma::builder()
        .account(Account::new(DEMO_EMAIL, DEMO_PASSWORD).with_totp(DEMO_TOTP_SECRET))
        .start()
        .await
        .map_err(DevError::Simulator)?;
    let tls_files = certificates.as_ref().map_or_else(String::new, |c| {
        format!(
            "tls_cert_file = {:?}\ntls_key_file = {:?}\n",
            c.cert().display().to_string(),
            c.key().display().to_string()
        )
    });
    let toml = format!(
        r#"
        [server]
        listen = "{listen}"
        admin_listen = "{admin_listen}"
        shutdown_grace = "5s"
        {tls_files}
        [upstream]
        url = "{url}"
        [profiles.default]
        email = "{DEMO_EMAIL}"
        password = "{DEMO_PASSWORD}"
        totp_secret = "{DEMO_TOTP_SECRET}"
        "#,
        url = fake.url()
    );
    let config = Config::from_toml(&toml, Vec::new(), None).map_err(DevError::Config)?;
    let running = crate::start(config).await.map_err(DevError::Start)?;
    let proxy = running.proxy_addr().to_string();
    let admin = running.admin_addr().to_string();
    let scheme = if tls { "https" } else { "http" };
    println!(
        "cma-auth-proxy dev: simulated Contentstack CMA at {}",
        fake.url()
    );
    println!("proxy listening on {scheme}://{proxy}");
    println!("admin listening on http://{admin}  (/livez /readyz /startupz /status /metrics)");
    println!(
        "demo account: {DEMO_EMAIL} (two-factor on; the password and TOTP secret stay inside the proxy)"
    );
    println!("demo stack api_key: {DEMO_API_KEY}");
    println!("try:");
    match (&certificates, running.proxy_addr().tcp()) {
        (Some(certificates), Some(addr)) => print_tls_recipe(certificates, addr),
        _ => {
            println!("  curl -s http://{proxy}/v3/user");
            println!("  curl -s http://{proxy}/v3/content_types -H 'api_key: {DEMO_API_KEY}'");
        }
    }
    println!("stop with Ctrl-C");
    shutdown.await;
    running.shutdown().await;
    fake.stop().await;
    drop(certificates);
    Ok(())
}

/// The commands that work against `dev --tls` as printed: curl, then Contentstack's CLI.
fn print_tls_recipe(certificates: &DevCertificates, addr: SocketAddr) {
    let ca = certificates.ca().display().to_string();
    let port = addr.port();
    let base = format!("https://{PROXY_HOST}:{port}");
    println!("  curl -s --cacert {ca} https://localhost:{port}/v3/user");
    println!(
        "  curl -s --cacert {ca} https://localhost:{port}/v3/content_types -H 'api_key: {DEMO_API_KEY}'"
    );
    println!(
        "TLS: a private CA and a certificate for {PROXY_HOST}, made for this run in {} (removed on exit)",
        certificates.dir.display()
    );
    println!("Contentstack's CLI (csdx) speaks HTTPS to a host name only; in another shell:");
    println!(
        "  echo '{} {PROXY_HOST}' | sudo tee -a /etc/hosts   # once",
        addr.ip()
    );
    println!("  export NODE_EXTRA_CA_CERTS={ca}");
    println!(
        "  csdx config:set:region --cma {base} --cda https://cdn.contentstack.io --ui-host https://app.contentstack.com --name {PROXY_HOST}"
    );
    println!(
        "  csdx auth:login -u you@example.com -p unused   # answered by the proxy; what you type is discarded"
    );
    println!("  csdx auth:whoami");
    println!(
        "  csdx cm:stacks:export --stack-api-key {DEMO_API_KEY} --data-dir ./export --module entries"
    );
    println!("  csdx auth:logout -y   # ends nothing: the proxy's session goes on");
}

/// A private CA and a leaf certificate signed by it, in a directory only this user can enter,
/// removed when dropped. The CA's key is never written: nothing else can be signed with it.
struct DevCertificates {
    dir: PathBuf,
}

impl DevCertificates {
    fn create() -> Result<DevCertificates, DevError> {
        let dir = std::env::temp_dir().join(format!(
            "cma-auth-proxy-dev-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(&dir)
                .map_err(DevError::CertificateFiles)?;
        }
        // Owned from here on, so a failure below removes the directory too.
        let certificates = DevCertificates { dir };
        let (ca, leaf, key) = issue().map_err(DevError::CertificateIssue)?;
        for (path, pem) in [
            (certificates.ca(), ca),
            (certificates.cert(), leaf),
            (certificates.key(), key),
        ] {
            write_private(&path, &pem).map_err(DevError::CertificateFiles)?;
        }
        Ok(certificates)
    }

    fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    fn cert(&self) -> PathBuf {
        self.dir.join("cert.pem")
    }

    fn key(&self) -> PathBuf {
        self.dir.join("key.pem")
    }
}

impl Drop for DevCertificates {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// (CA certificate, leaf certificate, leaf key), PEM.
fn issue() -> Result<(String, String, String), rcgen::Error> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose, SanType,
    };
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "cma-auth-proxy dev CA (one run only)");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);

    let mut leaf_params = CertificateParams::new(vec![PROXY_HOST.to_owned(), "localhost".into()])?;
    leaf_params
        .subject_alt_names
        .push(SanType::IpAddress([127, 0, 0, 1].into()));
    leaf_params
        .distinguished_name
        .push(DnType::CommonName, PROXY_HOST);
    leaf_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let leaf_key = KeyPair::generate()?;
    let leaf = leaf_params.signed_by(&leaf_key, &issuer)?;
    Ok((ca_cert.pem(), leaf.pem(), leaf_key.serialize_pem()))
}

/// Writes a file only its owner can read (the key among them).
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?
        .write_all(text.as_bytes())
}

#[derive(Debug, thiserror::Error)]
pub enum DevError {
    #[error("cannot start the simulated CMA: {0}")]
    Simulator(#[source] std::io::Error),
    #[error("cannot write the TLS certificates for --tls: {0}")]
    CertificateFiles(#[source] std::io::Error),
    #[error("cannot make the TLS certificates for --tls: {0}")]
    CertificateIssue(#[source] rcgen::Error),
    #[error("dev configuration: {0}")]
    Config(#[source] ConfigError),
    #[error(transparent)]
    Start(StartError),
}
