//! The bridge: takes every uplink from the bus (through a shared subscription, so
//! several bridges can split the work), applies the domain rules, stores, and
//! publishes the results to the users' downlink topics.

mod uplink;
mod work;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parley_domain::Domain;
use parley_wire::bus::{unpack, BusEndpoint, Packed, UPLINK_BATCH_TOPIC};
use parley_wire::topics;
use rumqttc::{Event, Packet, QoS, SubscribeReasonCode};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

pub use uplink::{handle_messages, handle_uplink};

/// A running bridge's counters and state, for operators and tests.
#[derive(Debug)]
pub struct BridgeStats {
    /// Uplinks (and presence reports) this bridge handled (downlinks handed to the bus).
    pub uplinks_handled: AtomicU64,
    /// Messages stored in a transaction shared with others of the same batch.
    pub stored_together: AtomicU64,
    /// Downlinks handed to the bus, and the publishes that carried them (fewer when packed).
    pub downlinks: AtomicU64,
    pub downlink_publishes: AtomicU64,
    /// True while the bus has confirmed the bridge's shared subscriptions.
    subscribed: watch::Sender<bool>,
}

impl Default for BridgeStats {
    fn default() -> Self {
        Self {
            uplinks_handled: AtomicU64::new(0),
            stored_together: AtomicU64::new(0),
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

    /// Downlinks handed to the bus, and the bus publishes that carried them.
    pub fn downlinks(&self) -> (u64, u64) {
        (self.downlinks.load(Ordering::Relaxed), self.downlink_publishes.load(Ordering::Relaxed))
    }

    /// Waits until the bus has confirmed the bridge's subscriptions, at most `limit`.
    pub async fn wait_subscribed(&self, limit: Duration) -> bool {
        let mut rx = self.subscribed.subscribe();
        tokio::time::timeout(limit, rx.wait_for(|s| *s)).await.is_ok_and(|r| r.is_ok())
    }
}

/// Runs the bridge until `shutdown`, counting its work in `stats`. `embedded`: the
/// bus is the embedded one, whose one gate takes every downlink, so downlinks go
/// packed (see `work`).
pub async fn run(
    domain: Domain,
    bus: &BusEndpoint,
    embedded: bool,
    stats: Arc<BridgeStats>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    // Uplinks are acknowledged to the bus as they arrive (see `work` for why).
    let (client, mut events) = parley_wire::bus::client(bus.options("bridge"), 1024);
    let downlinks = parley_wire::bus::publisher(bus, "bridge-out", shutdown.child_token());
    let (tx, rx) = mpsc::channel::<Packed>(work::MAX_BATCH);
    let worker = tokio::spawn(work::work(domain, downlinks, embedded, rx, stats.clone()));
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
            // A gate's pack of uplinks (embedded bus) is taken apart here, in order.
            Ok(Event::Incoming(Packet::Publish(p))) if p.topic == UPLINK_BATCH_TOPIC => match unpack(p.payload) {
                Some(uplinks) => {
                    for u in uplinks {
                        if tx.send(u).await.is_err() {
                            break;
                        }
                    }
                }
                None => tracing::warn!(bus = %bus, "unreadable pack of uplinks on the bus; ignored"),
            },
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let uplink = Packed { topic: p.topic, qos: p.qos as u8, payload: p.payload };
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
