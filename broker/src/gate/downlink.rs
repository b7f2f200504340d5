//! Downlinks: every `to/{uid}/…` message is queued on the sessions of that user
//! whose subscriptions match, and their connections are woken. They arrive on the
//! lane (one process on the embedded bus: the bridge's and the API's, a batch at a
//! time, in order) or on a bus connection of the gate's own, whose subscriptions
//! `subscriptions.rs` keeps.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parley_domain::SessionsRevoked;
use parley_wire::bus::BusEndpoint;
use parley_wire::payloads::Outgoing as Downlink;
use parley_wire::{topics, UserId};
use rumqttc::{Event, Outgoing, Packet};
use tokio_util::sync::CancellationToken;

use super::namespace::{self, Namespace};
use rumqttc::v5::mqttbytes::v5::PublishProperties;

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
    dispatch_to(registry, stats, max_queued, (user, channel), &Offered::plain(topic, &payload, qos));
}

/// [`dispatch`] for a downlink whose user and channel are known (the lane's).
fn dispatch_to(registry: &Registry, stats: &GateStats, max_queued: usize, to: (UserId, &str), m: &Offered<'_>) {
    let (user, channel) = to;
    if channel == topics::SESSION {
        match serde_json::from_slice::<SessionsRevoked>(m.payload) {
            Ok(r) => {
                let n = registry.revoke(user, &r.revoked);
                tracing::info!(user_id = %user, devices = n, "devices of revoked sign-ins disconnected");
            }
            Err(e) => tracing::warn!(user_id = %user, error = %e, "unreadable sign-in revocation"),
        }
        return;
    }
    let sessions = registry.sessions_of(user);
    if sessions.is_empty() {
        GateStats::bump(&stats.downlinks_unclaimed);
    }
    for session in sessions {
        offer(&session, stats, max_queued, m, false);
    }
}

/// A message offered to the sessions of this gate.
pub struct Offered<'a> {
    pub topic: &'a str,
    pub payload: &'a Bytes,
    pub qos: u8,
    /// Open namespace only: published retained, and with these v5 properties.
    pub retain: bool,
    pub properties: Option<&'a PublishProperties>,
}

impl<'a> Offered<'a> {
    /// A downlink: no retain flag, no properties.
    pub fn plain(topic: &'a str, payload: &'a Bytes, qos: u8) -> Self {
        Self { topic, payload, qos, retain: false, properties: None }
    }
}

/// Queues one message on one session if a subscription matches, at the lower of
/// the message's QoS and the highest granted by the matching subscriptions (those
/// with No Local skip the session's own messages: `own`). Shared subscriptions are
/// not matched here: their groups get one copy each, through [`deliver`].
pub fn offer(session: &Session, stats: &GateStats, max_queued: usize, m: &Offered<'_>, own: bool) {
    let st = session.state();
    let mut granted = None;
    let mut retain = false;
    let mut subscription_ids = Vec::new();
    let matching = st
        .subscriptions
        .iter()
        .filter(|s| s.group.is_none() && !(own && s.no_local) && rumqttc::matches(m.topic, s.topic_filter()));
    for s in matching {
        granted = granted.max(Some(s.qos));
        retain |= s.retain_as_published && m.retain;
        subscription_ids.extend(s.id);
    }
    let Some(granted) = granted else {
        return;
    };
    drop(st);
    deliver(session, stats, max_queued, m, Matched { qos: m.qos.min(granted), retain, subscription_ids });
}

/// What the subscriptions that matched a message make of it for one session.
pub struct Matched {
    /// The QoS it is delivered at.
    pub qos: u8,
    /// Delivered with RETAIN set (Retain As Published).
    pub retain: bool,
    pub subscription_ids: Vec<usize>,
}

/// Queues a matched message on `session` and wakes its connection. A session
/// without a connection keeps only QoS 1 and 2 messages, and only if it is
/// persistent; a full queue drops and counts.
pub fn deliver(session: &Session, stats: &GateStats, max_queued: usize, m: &Offered<'_>, matched: Matched) {
    let mut st = session.state();
    if st.owner.is_none() && (matched.qos == 0 || st.expiry.is_none()) {
        return;
    }
    if st.queue.len() >= max_queued {
        GateStats::bump(&stats.deliveries_dropped);
        let topic = m.topic;
        tracing::warn!(user_id = %session.user, client_id = %session.client_id, topic, "session queue full; message dropped");
        return;
    }
    let delivery = Delivery {
        retain: matched.retain,
        ..Delivery::new(m.topic, m.payload.clone(), matched.qos, matched.subscription_ids)
    };
    st.queue.push_back(delivery.with_properties(m.properties.map(|p| Box::new(p.clone()))));
    drop(st);
    session.notify.notify_one();
}

/// Takes downlinks from the lane until `shutdown`, or until the bridge and the
/// API have let go of it.
pub async fn from_lane(
    mut lane: tokio::sync::mpsc::Receiver<Vec<Downlink>>,
    registry: Arc<Registry>,
    stats: Arc<GateStats>,
    max_queued: usize,
    shutdown: CancellationToken,
) {
    loop {
        let batch = tokio::select! {
            _ = shutdown.cancelled() => return,
            batch = lane.recv() => batch,
        };
        let Some(batch) = batch else { return };
        for d in batch {
            let topic = d.topic();
            dispatch_to(&registry, &stats, max_queued, (d.user, d.channel), &Offered::plain(&topic, &d.body, d.qos));
        }
    }
}

/// Takes downlinks from the bus until `shutdown`: one bus connection at a time, each
/// with a new client (under one client id, so a new connection replaces a stale one
/// on the broker), subscribing afresh on each; dispatches what arrives.
pub async fn run(
    bus: BusEndpoint,
    registry: Arc<Registry>,
    stats: Arc<GateStats>,
    namespace: Option<Arc<Namespace>>,
    max_queued: usize,
    shutdown: CancellationToken,
) {
    let options = bus.options("gate-downlinks");
    let subscriptions = registry.subscriptions();
    loop {
        let (client, mut events) = parley_wire::bus::client(options.clone(), 64);
        let connection = subscriptions.reset();
        let stop = shutdown.child_token();
        let sender = {
            let (registry, client, stop) = (registry.clone(), client.clone(), stop.clone());
            tokio::spawn(async move { registry.subscriptions().send(client, connection, stop).await })
        };
        let why = loop {
            let event = tokio::select! {
                _ = shutdown.cancelled() => break None,
                event = events.poll() => event,
            };
            match event {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    tracing::info!(bus = %bus, per_user = subscriptions.per_user(), "gate connected to the bus for downlinks");
                }
                Ok(Event::Incoming(Packet::Publish(p))) => match &namespace {
                    Some(ns) if p.topic.starts_with(namespace::BUS_PREFIX) => {
                        ns.dispatch(&registry, &stats, max_queued, p.payload);
                    }
                    _ => dispatch(&registry, &stats, max_queued, &p.topic, p.payload, p.qos as u8),
                },
                Ok(Event::Outgoing(Outgoing::Subscribe(pkid))) => {
                    if let Err(e) = subscriptions.on_sent(pkid, true) {
                        break Some(e.to_string());
                    }
                }
                Ok(Event::Outgoing(Outgoing::Unsubscribe(pkid))) => {
                    if let Err(e) = subscriptions.on_sent(pkid, false) {
                        break Some(e.to_string());
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(ack))) => subscriptions.on_suback(ack.pkid, &ack.return_codes),
                Ok(Event::Incoming(Packet::UnsubAck(ack))) => subscriptions.on_unsuback(ack.pkid),
                Ok(_) => {}
                Err(e) => break Some(e.to_string()),
            }
        };
        stop.cancel();
        subscriptions.lost();
        let _ = sender.await;
        let Some(why) = why else {
            let _ = client.try_disconnect();
            return;
        };
        tracing::warn!(bus = %bus, error = %why, "gate lost the bus for downlinks; reconnecting");
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}
