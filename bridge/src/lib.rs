//! The bridge: takes every uplink (from the gate's lane in one process on the
//! embedded bus; from an external bus through a shared subscription, so several
//! bridges can split the work), applies the domain rules, stores, and hands the
//! results to the users' downlink topics.

mod uplink;
mod work;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parley_domain::Domain;
use parley_wire::bus::{BridgeLane, BusEndpoint, RawUplink};
use parley_wire::topics;
use rumqttc::{Event, Packet, QoS, SubscribeReasonCode};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub use uplink::{handle_messages, handle_uplink};

/// A running bridge's counters and state, for operators and tests.
#[derive(Debug)]
pub struct BridgeStats {
    /// Uplinks (and presence reports) this bridge handled (their downlinks handed on).
    pub uplinks_handled: AtomicU64,
    /// Messages stored in a transaction shared with others of the same batch.
    pub stored_together: AtomicU64,
    /// Batches of messages handled beside the worker, while the one before was stored.
    pub batches_alongside: AtomicU64,
    /// Downlinks handed on, and the bus publishes among them (none on the lane).
    pub downlinks: AtomicU64,
    pub downlink_publishes: AtomicU64,
    /// True while the bridge can take uplinks: at once on the lane, on an external
    /// bus once it has confirmed the bridge's shared subscriptions.
    subscribed: watch::Sender<bool>,
}

impl Default for BridgeStats {
    fn default() -> Self {
        Self {
            uplinks_handled: AtomicU64::new(0),
            stored_together: AtomicU64::new(0),
            batches_alongside: AtomicU64::new(0),
            downlinks: AtomicU64::new(0),
            downlink_publishes: AtomicU64::new(0),
            subscribed: watch::channel(false).0,
        }
    }
}

impl BridgeStats {
    pub fn uplinks_handled(&self) -> u64 {
        self.uplinks_handled.load(Ordering::Relaxed)
    }

    pub fn stored_together(&self) -> u64 {
        self.stored_together.load(Ordering::Relaxed)
    }

    pub fn batches_alongside(&self) -> u64 {
        self.batches_alongside.load(Ordering::Relaxed)
    }

    /// Downlinks handed on, and how many of them were bus publishes.
    pub fn downlinks(&self) -> (u64, u64) {
        (self.downlinks.load(Ordering::Relaxed), self.downlink_publishes.load(Ordering::Relaxed))
    }

    /// Waits until the bridge can take uplinks, at most `limit`.
    pub async fn wait_subscribed(&self, limit: Duration) -> bool {
        let mut rx = self.subscribed.subscribe();
        tokio::time::timeout(limit, rx.wait_for(|s| *s)).await.is_ok_and(|r| r.is_ok())
    }
}

/// Where a bridge takes its uplinks from and hands its downlinks to.
pub enum Link {
    /// The lane of one process on the embedded bus.
    Lane(BridgeLane),
    /// An external bus, shared with other bridges.
    Bus(BusEndpoint),
}

/// Runs the bridge until `shutdown`, counting its work in `stats`.
pub async fn run(
    domain: Domain,
    link: Link,
    stats: Arc<BridgeStats>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let bus = match link {
        Link::Lane(lane) => {
            stats.subscribed.send_replace(true);
            let worker = tokio::spawn(work::work(domain, work::Downlinks::Lane(lane.downlinks), lane.uplinks, stats));
            // The worker ends once the gate has closed the lane, after its last
            // presence report.
            shutdown.cancelled().await;
            let _ = tokio::time::timeout(Duration::from_secs(10), worker).await;
            tracing::info!("bridge stopped");
            return Ok(());
        }
        Link::Bus(bus) => bus,
    };
    // Uplinks are acknowledged to the bus as they arrive (see `work` for why).
    let (client, mut events) = parley_wire::bus::client(bus.options("bridge"), 1024);
    let downlinks = parley_wire::bus::publisher(&bus, "bridge-out", shutdown.child_token());
    let (tx, rx) = parley_wire::bus::uplink_queue(work::BUS_QUEUE_BYTES);
    let worker = tokio::spawn(work::work(domain, work::Downlinks::Bus(downlinks), rx, stats.clone()));
    loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => break,
            event = events.poll() => event,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                tracing::info!(bus = %bus, "bridge connected to the bus");
                // rumqttc does not resubscribe after a reconnect; do it on every ConnAck.
                let filters = [topics::BRIDGE_UPLINK_FILTER, topics::BRIDGE_PRESENCE_FILTER];
                let filters = filters.map(|f| rumqttc::SubscribeFilter::new(f.to_string(), QoS::AtLeastOnce));
                if let Err(e) = client.try_subscribe_many(filters) {
                    tracing::error!(error = %e, "bridge could not subscribe to uplinks");
                }
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                if ack.return_codes.iter().all(|c| matches!(c, SubscribeReasonCode::Success(_))) {
                    stats.subscribed.send_replace(true);
                } else {
                    tracing::error!(bus = %bus, "the bus refused the bridge's shared subscriptions; check its ACL");
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let uplink = RawUplink { topic: p.topic, qos: p.qos as u8, payload: p.payload };
                if tx.send(uplink).await.is_err() {
                    break;
                }
            }
            Ok(_) => {}
            Err(e) => {
                stats.subscribed.send_replace(false);
                tracing::warn!(bus = %bus, error = %e, "bridge lost the bus; reconnecting");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
            }
        }
    }
    drop(tx);
    let _ = tokio::time::timeout(Duration::from_secs(5), worker).await;
    let _ = client.try_disconnect();
    tracing::info!("bridge stopped");
    Ok(())
}
