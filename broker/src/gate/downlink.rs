//! Downlinks: every `to/{uid}/…` message on the bus is queued on the sessions of
//! that user whose subscriptions match, and their connections are woken.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parley_domain::SessionsRevoked;
use parley_wire::{topics, UserId};
use rumqttc::{AsyncClient, Event, EventLoop, Packet, QoS};
use tokio_util::sync::CancellationToken;

use super::session::{Delivery, GateStats, Registry, Session};

/// Queues a downlink on every matching session of the topic's user. Sign-in
/// revocations (`to/{uid}/session`) are for the gate itself: they disconnect the
/// devices of the revoked sign-ins and are never delivered.
pub fn dispatch(registry: &Registry, stats: &GateStats, max_queued: usize, topic: &str, payload: Bytes, qos: u8) {
    let parsed = topics::downlink_parts(topic).and_then(|(u, c)| Some((u.parse::<UserId>().ok()?, c)));
    let Some((user, channel)) = parsed else {
        tracing::debug!(topic, "downlink for no user; ignored");
        return;
    };
    if channel == topics::SESSION {
        match serde_json::from_slice::<SessionsRevoked>(&payload) {
            Ok(r) => {
                let n = registry.revoke(user, &r.revoked);
                tracing::info!(user_id = %user, devices = n, "devices of revoked sign-ins disconnected");
            }
            Err(e) => tracing::warn!(user_id = %user, error = %e, "unreadable sign-in revocation"),
        }
        return;
    }
    for session in registry.sessions_of(user) {
        offer(&session, stats, max_queued, topic, payload.clone(), qos);
    }
}

/// Queues one message on one session if a subscription matches, at the lower of
/// the message's and the subscription's QoS. A session without a connection keeps
/// only QoS 1 messages, and only if it is persistent; a full queue drops and counts.
pub fn offer(session: &Session, stats: &GateStats, max_queued: usize, topic: &str, payload: Bytes, qos: u8) {
    let mut st = session.state();
    let mut granted = None;
    let mut subscription_ids = Vec::new();
    for s in st.subscriptions.iter().filter(|s| rumqttc::matches(topic, &s.filter)) {
        granted = granted.max(Some(s.qos));
        subscription_ids.extend(s.id);
    }
    let Some(granted) = granted else {
        return;
    };
    let qos = qos.min(granted);
    if st.owner.is_none() && (qos == 0 || st.expiry.is_none()) {
        return;
    }
    if st.queue.len() >= max_queued {
        GateStats::bump(&stats.deliveries_dropped);
        tracing::warn!(user_id = %session.user, client_id = %session.client_id, topic, "session queue full; message dropped");
        return;
    }
    st.queue.push_back(Delivery { topic: topic.to_string(), payload, qos, subscription_ids });
    drop(st);
    session.notify.notify_one();
}

/// Polls the gate's bus connection: subscribes to every downlink on each (re)connect
/// and dispatches what arrives, until `shutdown`.
pub async fn run(
    client: AsyncClient,
    mut events: EventLoop,
    registry: Arc<Registry>,
    stats: Arc<GateStats>,
    max_queued: usize,
    shutdown: CancellationToken,
) {
    loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => return,
            event = events.poll() => event,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                tracing::info!("gate connected to the bus");
                // Subscribing from the polling task must not wait on the channel it drains.
                if let Err(e) = client.try_subscribe(topics::GATE_DOWNLINK_FILTER, QoS::AtLeastOnce) {
                    tracing::error!(error = %e, "gate could not subscribe to downlinks");
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                dispatch(&registry, &stats, max_queued, &p.topic, p.payload, p.qos as u8);
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "gate lost the bus; reconnecting");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
            }
        }
    }
}
