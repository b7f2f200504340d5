//! `parley`: the whole platform in one binary. This file only parses the command
//! line, sets up logging and signals, and hands over to `parley::app`.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
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
    Serve(Serve),
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

#[derive(Args, Default)]
struct Serve {
    /// Run only these parts (repeat, or separate with commas: `--only gate,api`); the
    /// scheduler runs with the api. Needs an external bus (bus.url).
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Part>,
}

#[derive(Clone, Copy, ValueEnum)]
enum Part {
    /// The MQTT server devices connect to.
    Gate,
    /// Takes uplinks from the bus, applies the rules, stores, publishes downlinks.
    Bridge,
    /// The HTTP API, with the scheduler.
    Api,
}

impl Serve {
    fn parts(&self) -> parley::app::Parts {
        if self.only.is_empty() {
            return parley::app::Parts::ALL;
        }
        let mut parts = parley::app::Parts { gate: false, bridge: false, api: false };
        for part in &self.only {
            match part {
                Part::Gate => parts.gate = true,
                Part::Bridge => parts.bridge = true,
                Part::Api => parts.api = true,
            }
        }
        parts
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let settings = Settings::load(cli.config.as_deref())?;
    parley::telemetry::init(&settings.log.level, &settings.log.format);
    match cli.command.unwrap_or(Command::Serve(Serve::default())) {
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
        Command::Serve(serve) => {
            let parts = serve.parts();
            tracing::info!(settings = %settings, %parts, "starting parley");
            let shutdown = CancellationToken::new();
            tokio::spawn(cancel_on_signal(shutdown.clone()));
            let running =
                parley::app::start_parts(settings, parts, shutdown).await.context("parley could not start")?;
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
