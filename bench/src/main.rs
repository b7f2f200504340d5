//! `parley-bench`: the command line. Starts each target in turn, runs the
//! workload against it, prints the table with ratios, and writes the JSON.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use parley_bench::report::{table, Report};
use parley_bench::targets::{Kind, Programs, Target};
use parley_bench::transport::Transport;
use parley_bench::workloads::{self, Options, Workload};

#[derive(Parser)]
#[command(name = "parley-bench", version, about = "Load generator for Parley and its peers (rumqttd, Mosquitto)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a workload against one or more targets, each started fresh.
    Run(Run),
    /// Run the bare rumqttd peer on 127.0.0.1:PORT (started by `run` itself).
    #[command(hide = true)]
    Rumqttd {
        #[arg(long)]
        port: u16,
    },
}

#[derive(Args)]
struct Run {
    #[arg(value_enum)]
    workload: Workload,
    /// Targets, in order: parley-sqlite, parley-postgres, rumqttd, mosquitto.
    #[arg(long, value_delimiter = ',', default_value = "parley-sqlite,rumqttd,mosquitto")]
    targets: Vec<String>,
    /// An administrative PostgreSQL URL (each run creates and drops its own database there).
    #[arg(long, env = "PARLEY_BENCH_POSTGRES")]
    postgres: Option<String>,
    /// Run Parley on this external MQTT broker as its bus instead of the embedded rumqttd.
    #[arg(long)]
    parley_bus: Option<String>,
    /// Parley's log filter (`log.level`), e.g. `warn,parley_bridge=debug` to see each batch.
    #[arg(long, default_value = "warn")]
    parley_log: String,
    /// How devices connect: MQTT over TCP, TLS (mqtts), WebSocket (ws) or WebSocket on
    /// TLS (wss). The devices speak MQTT to a proxy in this process that carries it
    /// over the transport, so the server does a phone's or a browser's work.
    #[arg(long, value_enum, default_value_t = Transport::Mqtt)]
    transport: Transport,
    /// Simulated devices (one account each).
    #[arg(long, default_value_t = 100)]
    devices: usize,
    /// Members per conversation for `fanout` (1:1 workloads use 2).
    #[arg(long, default_value_t = 10)]
    room: usize,
    /// Messages per second, all devices together.
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// Measured seconds of traffic.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Seconds of traffic before measuring.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Seconds to wait at the end for what is still in flight.
    #[arg(long, default_value_t = 15.0)]
    drain: f64,
    #[arg(long, default_value_t = 200)]
    connect_parallel: usize,
    /// Device keepalive in seconds.
    #[arg(long, default_value_t = 30)]
    keep_alive: u64,
    /// Reconnect back-off: the least wait, and the random extra on top (ms).
    #[arg(long, default_value_t = 100)]
    backoff_ms: u64,
    #[arg(long, default_value_t = 2000)]
    jitter_ms: u64,
    /// Fault mode: one connection dropped or blackholed every this many ms.
    #[arg(long, default_value_t = 100)]
    fault_every_ms: u64,
    /// Fault mode: how long a blackholed connection stays open (s).
    #[arg(long, default_value_t = 20)]
    blackhole_secs: u64,
    /// Write the reports here as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// The parley binary (default: next to this one).
    #[arg(long)]
    parley: Option<PathBuf>,
    #[arg(long, default_value = "mosquitto")]
    mosquitto: PathBuf,
    /// No progress lines.
    #[arg(long)]
    quiet: bool,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Rumqttd { port } => parley_bench::peer::run_rumqttd(port),
        Command::Run(run) => tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(bench(run)),
    }
}

async fn bench(run: Run) -> anyhow::Result<()> {
    let bench = std::env::current_exe().context("where is this binary?")?;
    let programs = Programs {
        parley: run.parley.clone().unwrap_or_else(|| bench.with_file_name("parley")),
        mosquitto: run.mosquitto.clone(),
        bench,
        postgres: run.postgres.clone(),
        bus: run.parley_bus.clone(),
        log: run.parley_log.clone(),
        transport: run.transport,
    };
    let kinds = run.targets.iter().map(|t| Kind::parse(t)).collect::<anyhow::Result<Vec<_>>>()?;
    let options = Options {
        workload: run.workload,
        devices: run.devices,
        room: if run.workload == Workload::Fanout { run.room } else { 2 },
        rate: run.rate,
        seconds: run.seconds,
        warmup: run.warmup,
        drain: run.drain,
        connect_parallel: run.connect_parallel,
        keep_alive_secs: run.keep_alive,
        backoff_ms: run.backoff_ms,
        jitter_ms: run.jitter_ms,
        fault_every: Duration::from_millis(run.fault_every_ms.max(1)),
        blackhole_hold: Duration::from_secs(run.blackhole_secs),
        progress: !run.quiet,
        run_id: uuid::Uuid::new_v4().simple().to_string()[..8].to_string(),
    };
    let mut reports: Vec<Report> = Vec::new();
    for kind in kinds {
        eprintln!("{kind}: {} with {} devices", run.workload.name(), run.devices);
        let target = Target::start(kind, &programs).await?;
        let outcome = workloads::run(&target, &options).await;
        target.stop().await?;
        let report = outcome.with_context(|| format!("{kind}: {}", run.workload.name()))?;
        eprintln!("{}", table(std::slice::from_ref(&report)));
        reports.push(report);
    }
    println!("{}", table(&reports));
    if let Some(path) = &run.json {
        std::fs::write(path, serde_json::to_vec_pretty(&reports)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}
