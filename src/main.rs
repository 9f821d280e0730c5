//! The `cma-auth-proxy` command: parses arguments, loads the configuration, sets up logging and
//! signals, and hands over to the library. Exit codes: 0 clean (also after SIGTERM), 64 invalid
//! configuration or usage, 1 runtime failure.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use cma_auth_proxy::config::{self, Config, LogFormat};

const EXIT_USAGE: u8 = 64;

#[derive(Parser)]
#[command(
    name = "cma-auth-proxy",
    version,
    about = "Contentstack CMA auth sidecar: logs in once, injects the authtoken, forwards"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve with the configuration file.
    Run {
        /// The TOML configuration (config/cma-auth-proxy.example.toml lists every key); relative
        /// paths in it are relative to its directory
        #[arg(long, value_name = "FILE", default_value = config::DEFAULT_CONFIG_PATH)]
        config: PathBuf,
    },
    /// Validate the configuration (and the secret files it names) and exit.
    Check {
        /// The TOML configuration to validate, as `run --config` takes it
        #[arg(long, value_name = "FILE", default_value = config::DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        /// Also log in once per profile, validate the token with GET /v3/user, and log out.
        #[arg(long)]
        login: bool,
    },
    /// OAuth profiles: authorize the app as a user, once.
    Oauth {
        #[command(subcommand)]
        command: OAuthCommand,
    },
    /// Serve in front of a built-in simulated CMA with a demo account.
    #[cfg(feature = "dev")]
    Dev {
        /// Where clients send CMA requests ("IP:PORT", port 0 for any free port, or "unix:/path")
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
        listen: config::ListenAddr,
        /// Where the probes, /status and /metrics are served
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9901")]
        admin_listen: config::ListenAddr,
        /// Serve the proxy over TLS with a certificate for `cma-auth-proxy` from a private CA made
        /// for this run, and print how to point Contentstack's CLI (csdx) at it.
        #[arg(long)]
        tls: bool,
    },
}

#[derive(Subcommand)]
enum OAuthCommand {
    /// Authorize the profile's app (PKCE): print the URL to open, receive the browser on the
    /// loopback redirect_uri, and keep the refresh token where the profile reads it.
    Login {
        /// The OAuth profile (a [profiles.NAME.oauth] table).
        #[arg(long)]
        profile: String,
        #[arg(long, default_value = config::DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        /// Print the refresh token on stdout instead of keeping it (for a Kubernetes Secret).
        #[arg(long)]
        print: bool,
        /// How long to wait for the browser.
        #[arg(long, default_value = "5m", value_parser = humantime_serde::re::humantime::parse_duration)]
        wait: std::time::Duration,
    },
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let usage = e.use_stderr();
            let _ = e.print();
            return if usage {
                ExitCode::from(EXIT_USAGE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match cli.command {
        Command::Check { config, login } => {
            let c = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            for warning in &c.warnings {
                eprintln!("warning: {warning}");
            }
            let names: Vec<_> = c.profiles.iter().map(|p| &*p.name).collect();
            println!(
                "{}: configuration valid ({} profile{}: {})",
                config.display(),
                names.len(),
                if names.len() == 1 { "" } else { "s" },
                names.join(", ")
            );
            if login {
                check_login(&c)
            } else {
                ExitCode::SUCCESS
            }
        }
        Command::Run { config } => {
            let config_path = config;
            let config = match load(&config_path) {
                Ok(c) => c,
                Err(code) => return code,
            };
            init_logging(config.log.format, &config.log.level);
            for warning in &config.warnings {
                tracing::warn!("{warning}");
            }
            runtime().block_on(async {
                match cma_auth_proxy::start(config).await {
                    Ok(mut running) => {
                        running.watch_config(config_path);
                        shutdown_signal().await;
                        running.shutdown().await;
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        tracing::error!("{}", cma_auth_proxy::error_text::error_chain_text(&e));
                        ExitCode::FAILURE
                    }
                }
            })
        }
        Command::Oauth {
            command:
                OAuthCommand::Login {
                    profile,
                    config,
                    print,
                    wait,
                },
        } => {
            let c = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            init_logging(LogFormat::Text, "warn");
            oauth_login(&c, &profile, print, wait)
        }
        #[cfg(feature = "dev")]
        Command::Dev {
            listen,
            admin_listen,
            tls,
        } => {
            init_logging(LogFormat::Text, "info");
            runtime().block_on(async {
                let dev =
                    cma_auth_proxy::dev::run_dev(listen, admin_listen, tls, shutdown_signal());
                match dev.await {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        eprintln!(
                            "cma-auth-proxy dev: {}",
                            cma_auth_proxy::error_text::error_chain_text(&e)
                        );
                        ExitCode::FAILURE
                    }
                }
            })
        }
    }
}

/// Prints one line per profile; exit 1 when any profile failed.
fn check_login(config: &Config) -> ExitCode {
    let results = runtime().block_on(cma_auth_proxy::check_login(config));
    let results = match results {
        Ok(r) => r,
        Err(e) => {
            eprintln!(
                "cma-auth-proxy: {}",
                cma_auth_proxy::error_text::error_chain_text(&e)
            );
            return ExitCode::FAILURE;
        }
    };
    let mut failed = false;
    for r in results {
        match r.outcome {
            Ok(text) => println!("profile {}: ok: {text}", r.profile),
            Err(text) => {
                failed = true;
                println!("profile {}: FAILED: {text}", r.profile);
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// `oauth login`: the operator's lines on stderr; on stdout the outcome, or with `--print` the
/// refresh token alone (so that it can be piped into a Secret).
fn oauth_login(config: &Config, profile: &str, print: bool, wait: std::time::Duration) -> ExitCode {
    use cma_auth_proxy::oauth_login::OAuthLoginError;
    let outcome = runtime().block_on(cma_auth_proxy::oauth_login::oauth_login(
        config,
        profile,
        print,
        wait,
        |line| eprintln!("{line}"),
    ));
    match outcome {
        Ok(authorized) => {
            let who = format!(
                "user {}, organization {}",
                authorized.user_uid.as_deref().unwrap_or("unknown"),
                authorized.organization_uid.as_deref().unwrap_or("unknown")
            );
            match authorized.kept_in {
                None => {
                    eprintln!(
                        "profile {profile}: authorized ({who}); the refresh token follows on stdout"
                    );
                    println!(
                        "{}",
                        secrecy::ExposeSecret::expose_secret(&authorized.refresh_token)
                    );
                }
                Some(kept_in) => println!(
                    "profile {profile}: authorized ({who}); the refresh token is kept in {kept_in}"
                ),
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!(
                "cma-auth-proxy oauth login: {}",
                cma_auth_proxy::error_text::error_chain_text(&e)
            );
            match e {
                OAuthLoginError::NoProfile(_)
                | OAuthLoginError::NotOAuth(_)
                | OAuthLoginError::NotLoopback { .. } => ExitCode::from(EXIT_USAGE),
                _ => ExitCode::FAILURE,
            }
        }
    }
}

fn load(path: &std::path::Path) -> Result<Config, ExitCode> {
    Config::load(path, std::env::vars()).map_err(|e| {
        match &e {
            // The first `run` after `dev`: say where a configuration comes from.
            config::ConfigError::File { key, path, source }
                if key == "--config" && source.kind() == std::io::ErrorKind::NotFound =>
            {
                eprintln!(
                    "cma-auth-proxy: no configuration file at {}; copy config/cma-auth-proxy.example.toml \
                     there and edit it (README, \"First real run\"), or pass --config FILE; \
                     to try the proxy first, `cma-auth-proxy dev` needs no configuration",
                    path.display()
                )
            }
            e => eprintln!("cma-auth-proxy: invalid configuration: {e}"),
        }
        ExitCode::from(EXIT_USAGE)
    })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("cannot start the tokio runtime")
}

/// `RUST_LOG` wins over `log.level`, so an operator can turn up one module without a reload.
fn init_logging(format: LogFormat, level: &str) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let quiet_watcher = quiet_watcher(&filter.to_string());
    // Colour codes only for a person at a terminal: in a file or a pipe they are noise that every
    // reader has to strip.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.finish().with(quiet_watcher).init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .finish()
            .with(quiet_watcher)
            .init(),
    }
}

/// The file-watch library (and the poller and inotify bindings under it) logs every event it sees
/// at debug and trace level. With the log file in a watched directory, a common layout, each such
/// line is itself an event: at `RUST_LOG=trace` an idle proxy would write without end. Their
/// debug and trace events are therefore dropped unless the filter names one of them (e.g.
/// `RUST_LOG=trace,notify=trace`), which an operator does on purpose, with the log elsewhere.
const WATCHER_TARGETS: &[&str] = &["notify", "inotify", "mio"];

fn quiet_watcher(
    directives: &str,
) -> tracing_subscriber::filter::FilterFn<impl Fn(&tracing::Metadata<'_>) -> bool + use<>> {
    let is_watcher = |target: &str| {
        WATCHER_TARGETS.iter().any(|crate_name| {
            target
                .strip_prefix(crate_name)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
        })
    };
    let named = directives
        .split(',')
        .filter_map(|directive| directive.split(['=', '[']).next())
        .any(|target| is_watcher(target.trim()));
    tracing_subscriber::filter::filter_fn(move |metadata| {
        named || *metadata.level() <= tracing::Level::INFO || !is_watcher(metadata.target())
    })
}

/// A signal this soon after the first is taken for the same one: a terminal's Ctrl-C and
/// `timeout -s INT` signal the whole process group, so a wrapper that forwards the signal to the
/// proxy as well delivers it twice within a moment.
const SAME_SIGNAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Resolves on the first SIGTERM or SIGINT; a second one later than [`SAME_SIGNAL`] exits at once.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("cannot listen for SIGTERM");
    let mut int = signal(SignalKind::interrupt()).expect("cannot listen for SIGINT");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    let first = std::time::Instant::now();
    tracing::info!(
        "shutting down (send the signal again, a second or more from now, to exit at once)"
    );
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            if first.elapsed() < SAME_SIGNAL {
                tracing::debug!(
                    "another signal within a second of the first: taken for the same one \
                     (a process group's signal, delivered twice)"
                );
                continue;
            }
            tracing::warn!("second signal: exiting without draining");
            std::process::exit(1);
        }
    });
}
