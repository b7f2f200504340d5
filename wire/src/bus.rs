//! How the platform's own parts reach each other: through the internal bus
//! (rumqttd, or an external MQTT broker: MQTT 3.1.1, clean sessions, no
//! properties, loopback by default) and, in one process on the embedded bus,
//! through the lane.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rumqttc::{AsyncClient, EventLoop, MqttOptions, NetworkOptions};
use tokio::sync::{mpsc, Semaphore, TryAcquireError};
use tokio_util::sync::CancellationToken;

use crate::payloads::Outgoing;

/// Largest packet on the bus, either direction; device limits are enforced by the gate.
pub const MAX_BUS_PACKET: usize = 4 * 1024 * 1024;

/// An uplink as the gate forwards it to a bridge: its topic, QoS and payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawUplink {
    pub topic: String,
    pub qos: u8,
    pub payload: Bytes,
}

/// Bytes of uplinks (topics and payloads) the lane holds for the bridge, at most:
/// as much as the embedded bus's log kept when uplinks went through it. When it
/// is full, a device's connection waits before it acknowledges: the back-pressure
/// a fast device feels. A bound in bytes, not in uplinks, keeps the memory
/// bounded whatever the packet size, and lets a bridge that is busy storing a
/// batch find the next one waiting (at a bound of 1,000 uplinks, devices stalled
/// behind a full lane: 4,064-5,121 messages a second delivered on PostgreSQL
/// instead of 5,947-7,339; measured with parley-bench).
pub const LANE_BYTES: usize = 32 * 1024 * 1024;

/// Batches of downlinks the lane holds for the gate, at most.
pub const LANE_DOWNLINKS: usize = 1024;

/// The lane's ends: on the embedded bus the process's gate, bridge and API are the
/// bus's only clients (its password is made at each start and never leaves the
/// process), so they hand each other uplinks and downlinks in memory, in order,
/// instead of through the bus. Each trip through rumqttd cost a message a write,
/// the router thread, a read and an acknowledgement on loopback (measured with
/// parley-bench; docs/benchmarks.md). An external bus, where several processes
/// share the work, is the bus alone.
pub fn lane() -> (GateLane, BridgeLane) {
    let (up_tx, up_rx) = uplink_queue(LANE_BYTES);
    let (down_tx, down_rx) = mpsc::channel(LANE_DOWNLINKS);
    (GateLane { uplinks: up_tx, downlinks: down_rx }, BridgeLane { uplinks: up_rx, downlinks: down_tx })
}

/// The gate's end of the lane: uplinks for the bridge leave on it, downlinks
/// (the bridge's and the API's) arrive on it.
pub struct GateLane {
    pub uplinks: UplinkSender,
    pub downlinks: mpsc::Receiver<Vec<Outgoing>>,
}

/// The bridge's end of the lane; the API hands its downlinks to a clone of
/// `downlinks`.
pub struct BridgeLane {
    pub uplinks: UplinkReceiver,
    pub downlinks: mpsc::Sender<Vec<Outgoing>>,
}

/// A queue of uplinks, in order, bounded by their bytes (topic and payload).
pub fn uplink_queue(bytes: usize) -> (UplinkSender, UplinkReceiver) {
    let (tx, rx) = mpsc::unbounded_channel();
    let room = Arc::new(Semaphore::new(bytes));
    let closed = CancellationToken::new();
    (UplinkSender { tx, room: room.clone(), bytes, closed: closed.clone() }, UplinkReceiver { rx, room, bytes, closed })
}

/// Why an uplink was not queued.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum QueueError {
    #[error("uplinks are no longer taken")]
    Closed,
    #[error("the uplink queue is full")]
    Full,
}

/// What an uplink counts against a queue's bound: at least 1, at most the bound.
fn weight(u: &RawUplink, bytes: usize) -> u32 {
    let w = (u.topic.len() + u.payload.len()).clamp(1, bytes);
    u32::try_from(w).unwrap_or(u32::MAX)
}

/// The sending side of an uplink queue; cheap to clone.
#[derive(Clone)]
pub struct UplinkSender {
    tx: mpsc::UnboundedSender<RawUplink>,
    room: Arc<Semaphore>,
    bytes: usize,
    closed: CancellationToken,
}

impl UplinkSender {
    /// Takes no more uplinks from any sender; the receiver gets what is queued,
    /// then 0. For a gate that is done, while something (a will waiting for its
    /// delay) may still hold a sender.
    pub fn close(&self) {
        self.room.close();
        self.closed.cancel();
    }

    /// Queues `u`, waiting while the queue has no room for it.
    pub async fn send(&self, u: RawUplink) -> Result<(), QueueError> {
        let permit = self.room.acquire_many(weight(&u, self.bytes)).await.map_err(|_| QueueError::Closed)?;
        self.tx.send(u).map_err(|_| QueueError::Closed)?;
        permit.forget();
        Ok(())
    }

    /// Queues `u` now, or says why not.
    pub fn try_send(&self, u: RawUplink) -> Result<(), QueueError> {
        let permit = self.room.try_acquire_many(weight(&u, self.bytes)).map_err(|e| match e {
            TryAcquireError::Closed => QueueError::Closed,
            TryAcquireError::NoPermits => QueueError::Full,
        })?;
        self.tx.send(u).map_err(|_| QueueError::Closed)?;
        permit.forget();
        Ok(())
    }
}

/// The receiving side of an uplink queue; dropping it fails every sender.
pub struct UplinkReceiver {
    rx: mpsc::UnboundedReceiver<RawUplink>,
    room: Arc<Semaphore>,
    bytes: usize,
    closed: CancellationToken,
}

impl UplinkReceiver {
    /// Uplinks waiting to be taken.
    pub fn len(&self) -> usize {
        self.rx.len()
    }

    /// Nothing is waiting to be taken.
    pub fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }

    /// Takes up to `limit` uplinks into `buf`, waiting for the first; 0 once the
    /// queue is empty and every sender is gone or the queue was closed.
    pub async fn recv_many(&mut self, buf: &mut Vec<RawUplink>, limit: usize) -> usize {
        let before = buf.len();
        let n = tokio::select! {
            biased;
            n = self.rx.recv_many(buf, limit) => n,
            () = self.closed.cancelled() => {
                while buf.len() - before < limit {
                    let Ok(u) = self.rx.try_recv() else { break };
                    buf.push(u);
                }
                buf.len() - before
            }
        };
        let freed: usize = buf[before..].iter().map(|u| weight(u, self.bytes) as usize).sum();
        self.room.add_permits(freed);
        n
    }
}

impl Drop for UplinkReceiver {
    fn drop(&mut self) {
        self.room.close();
    }
}

/// Where the bus listens and the credentials its internal clients use.
#[derive(Clone)]
pub struct BusEndpoint {
    pub host: String,
    pub port: u16,
    /// User name and password; `None` for a broker that takes anonymous clients.
    pub credentials: Option<(String, String)>,
}

impl fmt::Debug for BusEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BusEndpoint")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("username", &self.credentials.as_ref().map(|(user, _)| user))
            .field("password", &"[redacted]")
            .finish()
    }
}

impl fmt::Display for BusEndpoint {
    /// `mqtt://host:port`, for logs and errors (never the credentials).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "mqtt://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "mqtt://{}:{}", self.host, self.port)
        }
    }
}

/// A client of the bus with Nagle's algorithm off: the bus carries small
/// messages one after another, and each would otherwise wait for the peer's
/// delayed ACK (40 ms on Linux) whenever one is still unacknowledged.
pub fn client(options: MqttOptions, capacity: usize) -> (AsyncClient, EventLoop) {
    let (client, mut events) = AsyncClient::new(options, capacity);
    let mut network = NetworkOptions::new();
    network.set_tcp_nodelay(true);
    events.set_network_options(network);
    (client, events)
}

/// A publish-only client of the bus (the HTTP API's, the bridge's downlinks); its
/// event loop runs on its own task until `shutdown`, reconnecting after failures.
pub fn publisher(bus: &BusEndpoint, role: &str, shutdown: tokio_util::sync::CancellationToken) -> AsyncClient {
    let (client, mut events) = client(bus.options(role), 1024);
    tokio::spawn(async move {
        loop {
            let event = tokio::select! {
                _ = shutdown.cancelled() => return,
                event = events.poll() => event,
            };
            if let Err(e) = event {
                tracing::warn!(error = %e, "publisher lost the bus; reconnecting");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    });
    client
}

impl BusEndpoint {
    /// Options for one internal client with a fresh client id; `role` names it in the bus's logs.
    pub fn options(&self, role: &str) -> MqttOptions {
        self.options_with_id(format!("parley-{role}-{}", uuid::Uuid::new_v4().simple()))
    }

    /// Options for one internal client with the client id `id` (a client that
    /// reconnects under its own id takes its previous connection over).
    pub fn options_with_id(&self, id: String) -> MqttOptions {
        let mut options = MqttOptions::new(id, self.host.clone(), self.port);
        if let Some((user, password)) = &self.credentials {
            options.set_credentials(user.clone(), password.clone());
        }
        options
            .set_clean_session(true)
            .set_keep_alive(Duration::from_secs(30))
            .set_max_packet_size(MAX_BUS_PACKET, MAX_BUS_PACKET)
            .set_inflight(100);
        options
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uplink(topic: &str, payload: &[u8]) -> RawUplink {
        RawUplink { topic: topic.into(), qos: 1, payload: Bytes::copy_from_slice(payload) }
    }

    #[tokio::test]
    async fn the_uplink_queue_keeps_order_and_holds_its_bytes_at_most() {
        let (tx, mut rx) = uplink_queue(100);
        tx.send(uplink("from/a/msg", &[1; 40])).await.expect("room for 50 bytes");
        tx.send(uplink("from/a/msg", &[2; 40])).await.expect("room for 50 more");
        // Full: one more byte does not fit, and a sender waits.
        assert_eq!(tx.try_send(uplink("x", b"")), Err(QueueError::Full));
        let waiting = tokio::spawn({
            let tx = tx.clone();
            async move { tx.send(uplink("from/b/msg", &[3; 10])).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "a sender got past a full queue");
        // Taking makes room, in the order sent.
        let mut taken = Vec::new();
        assert_eq!(rx.recv_many(&mut taken, 10).await, 2);
        waiting.await.expect("task").expect("room after the take");
        assert_eq!(rx.recv_many(&mut taken, 10).await, 1);
        let firsts: Vec<u8> = taken.iter().map(|u| u.payload[0]).collect();
        assert_eq!(firsts, [1, 2, 3]);
        // An uplink larger than the whole bound still goes, alone.
        tx.send(uplink("from/c/msg", &[4; 500])).await.expect("an empty queue takes anything");
        assert_eq!(tx.try_send(uplink("x", b"")), Err(QueueError::Full));
        assert_eq!(rx.recv_many(&mut taken, 10).await, 1);
        assert_eq!(taken[3].payload.len(), 500);
    }

    #[tokio::test]
    async fn senders_fail_once_the_receiver_is_gone() {
        let (tx, rx) = uplink_queue(10);
        tx.send(uplink("from/a/msg", b"1234567890")).await.expect("room");
        let blocked = tokio::spawn({
            let tx = tx.clone();
            async move { tx.send(uplink("from/a/msg", b"more")).await }
        });
        tokio::task::yield_now().await;
        drop(rx);
        assert_eq!(blocked.await.expect("task"), Err(QueueError::Closed), "a waiting sender is released");
        assert_eq!(tx.try_send(uplink("x", b"")), Err(QueueError::Closed));
        assert_eq!(tx.send(uplink("x", b"")).await, Err(QueueError::Closed));
    }

    #[tokio::test]
    async fn a_closed_queue_hands_over_what_it_holds_then_ends() {
        let (tx, mut rx) = uplink_queue(1000);
        let held = tx.clone();
        tx.send(uplink("sys/presence/g", b"last report")).await.expect("room");
        tx.close();
        assert_eq!(held.try_send(uplink("from/a/msg", b"late")), Err(QueueError::Closed));
        let mut taken = Vec::new();
        assert_eq!(rx.recv_many(&mut taken, 10).await, 1);
        assert_eq!(taken[0].payload, &b"last report"[..]);
        // Ends although `held` is still alive.
        assert_eq!(rx.recv_many(&mut taken, 10).await, 0);
    }
}
