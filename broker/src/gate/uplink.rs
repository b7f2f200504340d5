//! Uplinks on their way to the bus: devices' publishes, wills and presence reports
//! go through one queue to the gate's uplink connection, in the order they were
//! handed over.
//!
//! On the embedded bus, whatever is waiting for the bridge (`from/…`,
//! `sys/presence/…`) leaves packed, as one publish on `from/_batch` (more if it
//! passes the bus's packet size), which the bridge takes apart in order. There one
//! bridge takes every uplink anyway, and each publish costs the gate, the bus and
//! the bridge a round of work (a write, the router, a read and an acknowledgement)
//! whatever it carries. While the gate is busy (2,000 uplinks a second or more), a
//! pack waits 1 ms after its first uplink for more: the device was acknowledged
//! already, and the bridge, busy with its previous batch under load, would not
//! take it sooner. Below that, uplinks leave as they come. Open-namespace
//! envelopes are for the gates and always go alone, as every uplink does on an
//! external bus.
//!
//! A full queue makes the device's connection wait before it acknowledges, which
//! is the back-pressure a fast device feels.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parley_wire::bus::{pack, Packed, UPLINK_BATCH_TOPIC};
use parley_wire::topics;
use rumqttc::{AsyncClient, QoS};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::GateStats;

/// Uplinks waiting for the bus connection, at most.
const QUEUE: usize = 1024;

/// The most uplinks taken from the queue at once.
const MAX_TAKEN: usize = 1000;

/// How long a pack waits for more uplinks once the first is taken, while the gate
/// is busy. Devices send one by one, and the forwarder would otherwise take each as
/// it comes (measured with parley-bench at 5,500 messages a second: 1.2 uplinks
/// per pack; with the wait, about 30).
const LINGER: Duration = Duration::from_millis(1);

/// The pace is judged over windows this long.
const WINDOW: Duration = Duration::from_millis(100);

/// Uplinks per window from which the gate counts as busy (2,000 a second). Below
/// it, uplinks leave at once: the wait would add up to 2 ms to each (the timer's
/// granularity is 1 ms) and pack next to nothing.
const BUSY: u64 = 200;

/// Whether packs wait for more uplinks: yes while the last whole window brought
/// at least [`BUSY`] uplinks.
struct Pace {
    started: Instant,
    count: u64,
    busy: bool,
}

impl Pace {
    fn new(now: Instant) -> Self {
        Pace { started: now, count: 0, busy: false }
    }

    /// Notes `n` uplinks taken at `now`; says whether to wait for more.
    fn linger(&mut self, n: usize, now: Instant) -> bool {
        let elapsed = now.duration_since(self.started);
        if elapsed >= WINDOW {
            // A window with nothing in it (a pause) counts as quiet.
            self.busy = elapsed < 2 * WINDOW && self.count >= BUSY;
            self.started = now;
            self.count = 0;
        }
        self.count += n as u64;
        self.busy
    }
}

/// The gate's side of the queue; cheap to clone.
#[derive(Clone)]
pub(crate) struct Uplinks {
    tx: mpsc::Sender<Packed>,
}

/// The gate is closing: nothing more reaches the bus.
#[derive(Debug)]
pub(crate) struct Closed;

impl std::fmt::Display for Closed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the gate's uplink connection is closed")
    }
}

impl std::error::Error for Closed {}

impl Uplinks {
    /// Queues an uplink, waiting while the queue is full.
    pub(crate) async fn send(&self, topic: String, qos: QoS, payload: Bytes) -> Result<(), Closed> {
        self.tx.send(Packed { topic, qos: qos as u8, payload }).await.map_err(|_| Closed)
    }

    /// Queues an uplink now, or says why not (full, or closed).
    pub(crate) fn try_send(&self, topic: String, qos: QoS, payload: Bytes) -> Result<(), String> {
        self.tx.try_send(Packed { topic, qos: qos as u8, payload }).map_err(|e| e.to_string())
    }
}

/// The running uplink forwarder.
pub(crate) struct Forwarder {
    task: JoinHandle<()>,
    closing: CancellationToken,
}

impl Forwarder {
    /// Sends what is queued, then disconnects `client`; waits at most `limit`. False
    /// when the queue could not be sent in time.
    pub(crate) async fn finish(self, limit: std::time::Duration) -> bool {
        self.closing.cancel();
        let mut task = self.task;
        if tokio::time::timeout(limit, &mut task).await.is_err() {
            task.abort();
            return false;
        }
        true
    }
}

/// Starts forwarding queued uplinks to the bus through `client`, packed when
/// `packed` (the embedded bus), counting them in `stats`.
pub(crate) fn start(client: AsyncClient, packed: bool, stats: Arc<GateStats>) -> (Uplinks, Forwarder) {
    let (tx, rx) = mpsc::channel(QUEUE);
    let closing = CancellationToken::new();
    let task = tokio::spawn(forward(client, packed, rx, stats, closing.clone()));
    (Uplinks { tx }, Forwarder { task, closing })
}

async fn forward(
    client: AsyncClient,
    packed: bool,
    mut rx: mpsc::Receiver<Packed>,
    stats: Arc<GateStats>,
    closing: CancellationToken,
) {
    let mut taken = Vec::with_capacity(MAX_TAKEN);
    let mut closed = false;
    let mut pace = Pace::new(Instant::now());
    loop {
        tokio::select! {
            biased;
            n = rx.recv_many(&mut taken, MAX_TAKEN) => {
                if n == 0 {
                    break;
                }
                // Every uplink counts towards the pace, a full take included.
                let busy = pace.linger(n, Instant::now());
                if packed && busy && n < MAX_TAKEN {
                    tokio::time::sleep(LINGER).await;
                    while taken.len() < MAX_TAKEN {
                        let Ok(u) = rx.try_recv() else { break };
                        taken.push(u);
                    }
                }
                let n = taken.len();
                stats.uplinks.fetch_add(n as u64, Ordering::Relaxed);
                publish(&client, packed, &mut taken, &stats).await;
            }
            // What is already queued still goes; nothing more is taken.
            _ = closing.cancelled(), if !closed => {
                rx.close();
                closed = true;
            }
        }
    }
    let _ = client.try_disconnect();
}

/// Hands `taken` to the bus, in order.
async fn publish(client: &AsyncClient, packed: bool, taken: &mut Vec<Packed>, stats: &GateStats) {
    for p in bus_publishes(taken, packed) {
        GateStats::bump(&stats.uplink_publishes);
        let qos = if p.qos == 0 { QoS::AtMostOnce } else { QoS::AtLeastOnce };
        if let Err(e) = client.publish_bytes(p.topic, qos, false, p.payload).await {
            tracing::error!(error = %e, "gate could not hand uplinks to the bus");
        }
    }
    taken.clear();
}

/// The bus publishes that carry `taken`, in order: when `packed`, each run of
/// uplinks for the bridge as packs on `from/_batch`; anything else as it is.
fn bus_publishes(taken: &[Packed], packed: bool) -> Vec<Packed> {
    let mut out = Vec::new();
    let mut rest = taken;
    while let Some(first) = rest.first() {
        let run = if packed { rest.iter().take_while(|u| topics::bridge_takes(&u.topic)).count() } else { 0 };
        if run == 0 {
            out.push(first.clone());
            rest = &rest[1..];
            continue;
        }
        let (now, later) = rest.split_at(run);
        let packs = pack(now.iter().map(|u| (u.topic.as_str(), u.qos, &u.payload[..])));
        out.extend(packs.into_iter().map(|payload| Packed { topic: UPLINK_BATCH_TOPIC.into(), qos: 1, payload }));
        rest = later;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use parley_wire::bus::unpack;

    fn uplink(topic: &str, qos: u8, payload: &str) -> Packed {
        Packed { topic: topic.into(), qos, payload: Bytes::copy_from_slice(payload.as_bytes()) }
    }

    #[test]
    fn runs_for_the_bridge_are_packed_in_order_and_envelopes_go_alone() {
        let taken = vec![
            uplink("from/u1/msg", 1, "1"),
            uplink("from/u1/typing", 0, "2"),
            uplink("sys/presence/gate-a", 1, "3"),
            uplink("ns/x/y", 1, "4"),
            uplink("from/u2/msg", 1, "5"),
        ];
        let out = bus_publishes(&taken, true);
        let topics: Vec<&str> = out.iter().map(|p| p.topic.as_str()).collect();
        assert_eq!(topics, ["from/_batch", "ns/x/y", "from/_batch"]);
        assert_eq!(out[0].qos, 1);
        let first = unpack(out[0].payload.clone()).expect("a pack");
        assert_eq!(first, taken[..3]);
        assert_eq!(out[1], taken[3]);
        assert_eq!(unpack(out[2].payload.clone()).expect("a pack"), taken[4..]);
        // An external bus gets each as it is.
        assert_eq!(bus_publishes(&taken, false), taken);
        assert!(bus_publishes(&[], true).is_empty());
    }

    #[test]
    fn packs_wait_only_after_a_busy_window() {
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let mut pace = Pace::new(start);
        // 1,000 a second: never busy.
        assert!((0..300).all(|ms| !pace.linger(1, at(ms))));
        // 2,000 a second for a window: the next window waits.
        assert!(!pace.linger(1, at(300)));
        for ms in 300..400 {
            pace.linger(2, at(ms));
        }
        assert!(pace.linger(1, at(400)));
        assert!(pace.linger(1, at(450)), "busy for the whole window");
        // A quiet window ends it.
        assert!(!pace.linger(1, at(500)));
        // So does a pause longer than a window after a busy one.
        for ms in 500..600 {
            pace.linger(3, at(ms));
        }
        assert!(pace.linger(1, at(600)));
        assert!(!pace.linger(1, at(900)), "a pause is quiet");
    }
}
