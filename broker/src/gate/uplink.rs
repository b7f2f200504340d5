//! Uplinks on their way: devices' publishes, wills and presence reports, in the
//! order they were handed over. What is for the bridge (`from/…`,
//! `sys/presence/…`) goes straight into the lane when there is one (one process
//! on the embedded bus); anything else (open-namespace envelopes, which are for
//! the gates), and everything on an external bus, goes through one queue to the
//! gate's uplink connection, one publish each.
//!
//! A full lane or queue makes the device's connection wait before it
//! acknowledges, which is the back-pressure a fast device feels.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use parley_wire::bus::{uplink_queue, RawUplink, UplinkReceiver, UplinkSender};
use parley_wire::topics;
use rumqttc::{AsyncClient, QoS};
use tokio::task::JoinHandle;

use super::GateStats;

/// Bytes of uplinks (topics and payloads) waiting for the bus connection, at most.
const QUEUE_BYTES: usize = 4 * 1024 * 1024;

/// The most uplinks taken from the queue at once.
const MAX_TAKEN: usize = 1000;

/// Where the gate hands uplinks; cheap to clone.
#[derive(Clone)]
pub(crate) struct Uplinks {
    /// The bridge's end of the lane, if there is one.
    lane: Option<UplinkSender>,
    /// The queue of the bus connection.
    bus: UplinkSender,
    stats: Arc<GateStats>,
}

/// The gate is closing (or the bridge has stopped): nothing more is taken.
#[derive(Debug)]
pub(crate) struct Closed;

impl std::fmt::Display for Closed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("uplinks are no longer taken")
    }
}

impl std::error::Error for Closed {}

impl Uplinks {
    /// Hands an uplink on, waiting while the lane or queue is full.
    pub(crate) async fn send(&self, topic: String, qos: QoS, payload: Bytes) -> Result<(), Closed> {
        let uplink = RawUplink { topic, qos: qos as u8, payload };
        self.route(&uplink.topic).send(uplink).await.map_err(|_| Closed)?;
        GateStats::bump(&self.stats.uplinks);
        Ok(())
    }

    /// Hands an uplink on now, or says why not (full, or closed).
    pub(crate) fn try_send(&self, topic: String, qos: QoS, payload: Bytes) -> Result<(), String> {
        let uplink = RawUplink { topic, qos: qos as u8, payload };
        self.route(&uplink.topic).try_send(uplink).map_err(|e| e.to_string())?;
        GateStats::bump(&self.stats.uplinks);
        Ok(())
    }

    /// The lane for what the bridge takes, when there is one; else the bus queue.
    fn route(&self, topic: &str) -> &UplinkSender {
        match &self.lane {
            Some(lane) if topics::bridge_takes(topic) => lane,
            _ => &self.bus,
        }
    }

    /// The gate is done: the bridge takes what is on the lane, then stops.
    pub(crate) fn close_lane(&self) {
        if let Some(lane) = &self.lane {
            lane.close();
        }
    }
}

/// The running uplink forwarder.
pub(crate) struct Forwarder {
    task: JoinHandle<()>,
    queue: UplinkSender,
}

impl Forwarder {
    /// Sends what is queued, then disconnects `client`; waits at most `limit`. False
    /// when the queue could not be sent in time.
    pub(crate) async fn finish(self, limit: std::time::Duration) -> bool {
        // What is already queued still goes; nothing more is taken.
        self.queue.close();
        let mut task = self.task;
        if tokio::time::timeout(limit, &mut task).await.is_err() {
            task.abort();
            return false;
        }
        true
    }
}

/// Starts forwarding queued uplinks to the bus through `client`, one publish
/// each; what is for the bridge goes into `lane` instead, when there is one.
pub(crate) fn start(client: AsyncClient, lane: Option<UplinkSender>, stats: Arc<GateStats>) -> (Uplinks, Forwarder) {
    let (tx, rx) = uplink_queue(QUEUE_BYTES);
    let task = tokio::spawn(forward(client, rx, stats.clone()));
    (Uplinks { lane, bus: tx.clone(), stats }, Forwarder { task, queue: tx })
}

async fn forward(client: AsyncClient, mut rx: UplinkReceiver, stats: Arc<GateStats>) {
    let mut taken = Vec::with_capacity(MAX_TAKEN);
    while rx.recv_many(&mut taken, MAX_TAKEN).await > 0 {
        for p in taken.drain(..) {
            stats.uplink_publishes.fetch_add(1, Ordering::Relaxed);
            let qos = if p.qos == 0 { QoS::AtMostOnce } else { QoS::AtLeastOnce };
            if let Err(e) = client.publish_bytes(p.topic, qos, false, p.payload).await {
                tracing::error!(error = %e, "gate could not hand uplinks to the bus");
            }
        }
    }
    let _ = client.try_disconnect();
}
