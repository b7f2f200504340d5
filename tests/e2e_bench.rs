//! parley-bench against the real `parley` binary and Mosquitto: a short run of
//! each kind must come out clean (everything acknowledged delivered once, in
//! order), and the fault mode must really cut connections and still lose nothing.

use std::path::PathBuf;
use std::time::Duration;

use parley_bench::targets::{Kind, Programs, Target};
use parley_bench::transport::Transport;
use parley_bench::workloads::{self, Options, Workload};

fn programs(transport: Transport) -> Programs {
    Programs {
        parley: PathBuf::from(env!("CARGO_BIN_EXE_parley")),
        mosquitto: PathBuf::from("mosquitto"),
        bench: PathBuf::from("parley-bench"),
        postgres: None,
        bus: None,
        log: "warn".into(),
        transport,
    }
}

fn options(workload: Workload, devices: usize, rate: f64, seconds: f64) -> Options {
    Options {
        workload,
        devices,
        room: 2,
        rate,
        seconds,
        warmup: 0.5,
        drain: 20.0,
        connect_parallel: 50,
        keep_alive_secs: 30,
        backoff_ms: 50,
        jitter_ms: 200,
        fault_every: Duration::from_millis(100),
        blackhole_hold: Duration::from_secs(3),
        progress: false,
        run_id: uuid::Uuid::new_v4().simple().to_string()[..8].to_string(),
    }
}

/// Starts `kind` fresh, runs the workload against it, stops it, and returns the report.
async fn run(kind: Kind, options: &Options) -> parley_bench::report::Report {
    run_over(kind, Transport::Mqtt, options).await
}

async fn run_over(kind: Kind, transport: Transport, options: &Options) -> parley_bench::report::Report {
    let target = Target::start(kind, &programs(transport)).await.expect("target starts");
    let report = workloads::run(&target, options).await;
    target.stop().await.expect("stops");
    report.expect("the run completes")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_chat_run_against_parley_delivers_everything_once_and_in_order() {
    let report = run(Kind::ParleySqlite, &options(Workload::Chat, 10, 100.0, 2.0)).await;
    assert!(report.sent >= 200, "{report:?}");
    assert_eq!(report.acked, report.sent, "every message stored: {report:?}");
    assert_eq!(report.delivered, report.sent, "each 1:1 message reaches the other member: {report:?}");
    assert_eq!((report.lost, report.duplicates, report.out_of_order, report.refused), (0, 0, 0, 0), "{report:?}");
    assert_eq!(report.ack_latency.count, report.delivery_latency.count, "{report:?}");
    assert!(report.ack_latency.p50 > 0.0 && report.ack_latency.p50 <= report.ack_latency.max, "{report:?}");
    assert!(report.server_cpu_seconds.is_some_and(|s| s > 0.0), "{report:?}");
    // The machine was busy (Parley and the generator ran); what was stolen is a share.
    assert!(report.machine_busy.is_some_and(|b| b > 0.0 && b <= 1.0), "{report:?}");
    assert!(report.machine_stolen.is_some_and(|s| (0.0..1.0).contains(&s)), "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_run_against_mosquitto_counts_pubacks_as_acknowledgements() {
    let report = run(Kind::Mosquitto, &options(Workload::Chat, 10, 100.0, 2.0)).await;
    assert!(report.sent >= 200, "{report:?}");
    assert_eq!((report.acked, report.delivered, report.lost), (report.sent, report.sent, 0), "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_the_fault_proxy_nothing_acknowledged_is_lost_or_stored_twice() {
    let mut faults = options(Workload::Faults, 10, 40.0, 5.0);
    faults.keep_alive_secs = 2;
    faults.fault_every = Duration::from_millis(150);
    let report = run(Kind::ParleySqlite, &faults).await;
    assert!(report.dropped + report.blackholed >= 10, "the proxy did its job: {report:?}");
    assert!(report.reconnects >= 5, "{report:?}");
    assert_eq!(report.acked, report.sent, "every message stored in the end: {report:?}");
    assert_eq!((report.lost, report.duplicates, report.unacknowledged), (0, 0, 0), "{report:?}");
    assert_eq!(report.delivered, report.sent, "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_websocket_on_tls_the_run_is_as_clean_and_idle_devices_are_measured_over_tls() {
    // The devices reach only the gate's wss listener (the target's address), so
    // every message went through a TLS and a WebSocket handshake and framing.
    let report = run_over(Kind::ParleySqlite, Transport::Wss, &options(Workload::Chat, 10, 100.0, 2.0)).await;
    assert_eq!(report.transport, Transport::Wss);
    assert!(report.sent >= 200, "{report:?}");
    assert_eq!((report.acked, report.delivered), (report.sent, report.sent), "{report:?}");
    assert_eq!((report.lost, report.duplicates, report.out_of_order), (0, 0, 0), "{report:?}");

    let idle = run_over(Kind::ParleySqlite, Transport::Mqtts, &options(Workload::Idle, 50, 0.0, 0.0)).await;
    assert!(idle.rss_per_device.is_some_and(|b| b > 0.0), "{idle:?}");
    assert!(idle.connects_per_sec > 0.0, "{idle:?}");

    let refused = Target::start(Kind::Rumqttd, &programs(Transport::Ws)).await;
    assert!(refused.is_err_and(|e| e.to_string().contains("TCP only")));
}
