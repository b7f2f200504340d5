//! How uplinks are worked off: in bus order, by one worker. Whatever arrived while
//! the previous batch was being stored is taken at once: a run of messages shares
//! one transaction, any other uplink is handled alone in its place. Each uplink is
//! acknowledged on the bus, in order, once its downlinks were handed to the bus,
//! so a crash leaves nothing acknowledged and unhandled.
//!
//! Downlinks leave on a connection of their own. On the subscribing connection,
//! acknowledgements queue behind publishes: rumqttc takes no request while its
//! window of unacknowledged publishes is full, and the bus sends nothing more
//! until it gets them (with several workers sharing it, the bridge stalled for
//! good). Measured with parley-bench, see docs/benchmarks.md.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use parley_domain::Domain;
use parley_wire::{topics, UserId};
use rumqttc::{AsyncClient, Publish};
use tokio::sync::mpsc;

use crate::{handle_messages, handle_uplink, BridgeStats};

/// The most uplinks taken at once. rumqttd holds back more than about 100
/// unacknowledged ones for the bridge anyway.
const MAX_BATCH: usize = 128;

/// The bridge's two bus clients: the subscriber's, for acknowledgements, and a
/// publisher's, for downlinks.
pub(crate) struct Bus {
    pub acks: AsyncClient,
    pub downlinks: AsyncClient,
}

/// Runs until `uplinks` closes.
pub(crate) async fn work(domain: Domain, bus: Bus, mut uplinks: mpsc::Receiver<Publish>, stats: Arc<BridgeStats>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while uplinks.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let mut rest = batch.as_slice();
        while let Some(first) = rest.first() {
            let run = rest.iter().take_while(|p| message_sender(&p.topic).is_some()).count();
            let (now, later) = rest.split_at(run.max(1));
            let outs = if run == 0 {
                vec![handle_uplink(&domain, &first.topic, &first.payload).await]
            } else {
                let messages: Vec<(UserId, &[u8])> =
                    now.iter().filter_map(|p| Some((message_sender(&p.topic)?, &p.payload[..]))).collect();
                let (outs, together) = handle_messages(&domain, &messages).await;
                stats.stored_together.fetch_add(together as u64, Ordering::Relaxed);
                outs
            };
            for (publish, out) in now.iter().zip(outs) {
                for d in out {
                    if let Err(e) = bus.downlinks.publish(d.topic(), d.mqtt_qos(), false, d.payload()).await {
                        tracing::error!(error = %e, "bridge could not publish a downlink");
                    }
                }
                if let Err(e) = bus.acks.ack(publish).await {
                    tracing::warn!(error = %e, "bridge could not acknowledge an uplink");
                }
                stats.uplinks_handled.fetch_add(1, Ordering::Relaxed);
            }
            rest = later;
        }
        batch.clear();
    }
}

/// The sender of a message uplink (`from/{uid}/msg`).
fn message_sender(topic: &str) -> Option<UserId> {
    topics::parse_uplink(topic).filter(|u| u.kind == topics::MSG).map(|u| u.user)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_message_uplinks_join_a_run() {
        let uid = "0193b6d0-7c1e-7a55-8f0e-3f0b1c2d4e5f";
        assert_eq!(message_sender(&format!("from/{uid}/msg")).map(|u| u.to_string()), Some(uid.to_string()));
        for other in [
            format!("from/{uid}/receipt"),
            format!("from/{uid}/msg/x"),
            "from/nobody/msg".into(),
            "sys/presence/g".into(),
        ] {
            assert_eq!(message_sender(&other), None, "{other}");
        }
    }
}
