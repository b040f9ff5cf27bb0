//! The `regmirror` command: `serve` runs the mirror, `check-config` validates and prints the
//! effective configuration.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use regmirror::Config;

#[derive(Parser)]
#[command(
    name = "regmirror",
    version,
    about = "A pull-through caching mirror for container registries"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the mirror.
    Serve {
        /// Config file (default: ./mirror.toml if present, else built-in defaults).
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
    /// Validate a config and print the effective one (secrets redacted).
    CheckConfig {
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
}

fn main() {
    if let Err(e) = real_main() {
        eprintln!("error: {e:#}");
        std::process::exit(2);
    }
}

fn real_main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { config } => {
            let cfg = Config::load(config.as_deref())?;
            print!("{}", cfg.redacted_toml());
            eprintln!("config OK");
            Ok(())
        }
        Command::Serve { config } => {
            let cfg = Config::load(config.as_deref())?;
            init_logging(&cfg);
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the tokio runtime")?
                .block_on(serve(cfg))
        }
    }
}

async fn serve(cfg: Config) -> anyhow::Result<()> {
    let plain = tokio::net::TcpListener::bind(cfg.server.listen)
        .await
        .with_context(|| format!("binding {}", cfg.server.listen))?;
    let tls = match &cfg.server.tls {
        Some(t) => Some(
            tokio::net::TcpListener::bind(t.listen)
                .await
                .with_context(|| format!("binding the TLS listener {}", t.listen))?,
        ),
        None => None,
    };
    tracing::info!(
        addr = %plain.local_addr()?,
        tls = ?tls.as_ref().and_then(|l| l.local_addr().ok()),
        upstreams = ?cfg.upstreams.keys().collect::<Vec<_>>(),
        "regmirror listening"
    );
    let listeners = regmirror::server::Listeners { plain, tls };
    regmirror::run(cfg, listeners, shutdown_signal()).await?;
    tracing::info!("stopped");
    Ok(())
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing the SIGINT handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}

fn init_logging(cfg: &Config) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&cfg.log.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if cfg.log.format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}
