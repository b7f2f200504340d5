//! `parley`: the whole platform in one binary. This file only parses the command
//! line, sets up logging and signals, and hands over to `parley::app`.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use parley_config::Settings;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(name = "parley", version, about = "Messaging backend: MQTT for devices, HTTP for apps and admins")]
struct Cli {
    /// TOML settings file; `PARLEY_…` environment variables override it.
    #[arg(long, short, global = true, env = "PARLEY_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gate, the bus, the bridge, the HTTP API and the scheduler (the default).
    Serve,
    /// Apply database migrations and exit.
    Migrate,
    /// Print the effective settings (secrets redacted) and exit.
    Config,
    /// Give an account a role (how the first admin is made), optionally marking it verified.
    SetRole {
        /// The account's username, email or phone.
        login: String,
        /// user, provider, institution or admin.
        role: String,
        /// Mark the account as checked by the platform.
        #[arg(long)]
        verified: bool,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let settings = Settings::load(cli.config.as_deref())?;
    parley::telemetry::init(&settings.log.level, &settings.log.format);
    match cli.command.unwrap_or(Command::Serve) {
        Command::Config => {
            print!("{settings}");
            Ok(())
        }
        Command::Migrate => {
            let store = parley::app::open_store(&settings).await?;
            tracing::info!(backend = store.backend_name(), "migrations applied");
            store.close().await;
            Ok(())
        }
        Command::SetRole { login, role, verified } => {
            let role = role.parse().map_err(|_| anyhow::anyhow!("role is user, provider, institution or admin"))?;
            let user = parley::app::set_role(&settings, &login, role, verified).await?;
            println!(
                "{} ({}) is now {}{}",
                login,
                user.id,
                user.role.as_str(),
                if verified { ", verified" } else { "" }
            );
            Ok(())
        }
        Command::Serve => {
            tracing::info!(settings = %settings, "starting parley");
            let shutdown = CancellationToken::new();
            tokio::spawn(cancel_on_signal(shutdown.clone()));
            let running = parley::app::start(settings, shutdown).await.context("parley could not start")?;
            running.wait().await.context("parley stopped")?;
            tracing::info!("parley stopped cleanly");
            Ok(())
        }
    }
}

/// SIGINT or SIGTERM cancels `shutdown`, which every part watches.
async fn cancel_on_signal(shutdown: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
    tracing::info!("shutdown requested");
    shutdown.cancel();
}
