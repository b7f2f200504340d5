//! What a run reports: one [`Report`] per target and workload, printed as a
//! table (with each Parley figure's ratio to the peers measured in the same
//! invocation) and written as JSON.

use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::transport::Transport;

/// Latency percentiles, in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p99_9: f64,
    pub max: f64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Percentiles {
        let ms = |us: u64| us as f64 / 1000.0;
        if h.is_empty() {
            return Percentiles::default();
        }
        Percentiles {
            count: h.len(),
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            p99_9: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub target: String,
    /// How the devices reached it.
    pub transport: Transport,
    pub workload: String,
    pub devices: usize,
    /// Members per conversation (2 for 1:1 chat).
    pub room: usize,
    /// Messages per second offered, all devices together.
    pub rate: f64,
    pub seconds: f64,
    pub sent: u64,
    /// Acknowledged: stored (Parley) or PUBACKed (peers).
    pub acked: u64,
    /// Received by members other than the sender (first copies only).
    pub delivered: u64,
    /// Acknowledged per second within the send window.
    pub acked_per_sec: f64,
    /// Deliveries to other members per second within the send window.
    pub delivered_per_sec: f64,
    /// Send → "sent" acknowledgement (stored); for the peers, send → PUBACK.
    pub ack_latency: Percentiles,
    /// Send → delivery to another member.
    pub delivery_latency: Percentiles,
    /// Send → the broker's PUBACK (for Parley, the gate took it).
    pub puback_latency: Percentiles,
    /// Acknowledged and never delivered to some member.
    pub lost: u64,
    pub unacknowledged: u64,
    /// Transport repeats, dropped by id as the protocol tells apps to.
    pub redelivered: u64,
    /// One send stored (and shown) twice.
    pub duplicates: u64,
    pub out_of_order: u64,
    pub refused: u64,
    pub recovered_by_sync: u64,
    pub reconnects: u64,
    pub signals: u64,
    /// Connection set-up (CONNECT → CONNACK and SUBACK).
    pub connect_latency: Percentiles,
    /// Connections accepted per second while all devices connect.
    pub connects_per_sec: f64,
    /// Resident memory of the whole server process.
    pub rss_before: Option<u64>,
    pub rss_after: Option<u64>,
    pub rss_per_device: Option<f64>,
    /// Fault mode: connections the proxy dropped and blackholed.
    pub dropped: u64,
    pub blackholed: u64,
    /// Reconnect storm: seconds from the drop until every device was back.
    pub recovery_seconds: Option<f64>,
    /// CPU seconds the server process used during the run.
    pub server_cpu_seconds: Option<f64>,
    /// Shares of the whole machine's CPU while the workload ran: busy (every
    /// process, the generator included) and stolen by the hypervisor, which a
    /// figure on a shared virtual machine should be read with.
    pub machine_busy: Option<f64>,
    pub machine_stolen: Option<f64>,
}

/// Prints the runs as a table; a Parley row is followed by its ratio to each peer
/// measured for the same workload.
pub fn table(reports: &[Report]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<20} {:<9} {:>6} {:>8} {:>9} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8} {:>5} {:>5} {:>5} {:>9} {:>7}",
        "target",
        "workload",
        "devs",
        "rate",
        "acked/s",
        "deliv/s",
        "ack p99",
        "p50",
        "p99",
        "p99.9",
        "max",
        "lost",
        "dup",
        "order",
        "rss/dev",
        "stolen"
    );
    for r in reports {
        let target = match r.transport {
            Transport::Mqtt => r.target.clone(),
            other => format!("{}/{}", r.target, other.name()),
        };
        let _ = writeln!(
            out,
            "{:<20} {:<9} {:>6} {:>8.0} {:>9.0} {:>9.0} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>5} {:>5} {:>5} {:>9} {:>7}",
            target,
            r.workload,
            r.devices,
            r.rate,
            r.acked_per_sec,
            r.delivered_per_sec,
            r.ack_latency.p99,
            r.delivery_latency.p50,
            r.delivery_latency.p99,
            r.delivery_latency.p99_9,
            r.delivery_latency.max,
            r.lost,
            r.duplicates,
            r.out_of_order,
            r.rss_per_device.map(|b| format!("{:.1} KiB", b / 1024.0)).unwrap_or_default(),
            r.machine_stolen.map(|s| format!("{:.1}%", s * 100.0)).unwrap_or_default()
        );
    }
    let ratios = ratios(reports);
    if !ratios.is_empty() {
        let _ = writeln!(out, "\nratios (Parley / peer, same workload, same run):");
        for line in ratios {
            let _ = writeln!(out, "  {line}");
        }
    }
    out
}

fn ratios(reports: &[Report]) -> Vec<String> {
    let mut lines = Vec::new();
    for parley in reports.iter().filter(|r| r.target.starts_with("parley")) {
        for peer in reports.iter().filter(|r| !r.target.starts_with("parley") && r.workload == parley.workload) {
            let ratio = |a: f64, b: f64| if b > 0.0 { format!("{:.2}", a / b) } else { "-".into() };
            let mut line = format!(
                "{} / {} ({}): deliveries/s {}, p99 delivery {}",
                parley.target,
                peer.target,
                parley.workload,
                ratio(parley.delivered_per_sec, peer.delivered_per_sec),
                ratio(parley.delivery_latency.p99, peer.delivery_latency.p99),
            );
            if let (Some(a), Some(b)) = (parley.rss_per_device, peer.rss_per_device) {
                let _ = write!(line, ", memory per device {}", ratio(a, b));
            }
            if parley.connects_per_sec > 0.0 && peer.connects_per_sec > 0.0 {
                let _ = write!(line, ", connections/s {}", ratio(parley.connects_per_sec, peer.connects_per_sec));
            }
            lines.push(line);
        }
    }
    lines
}
