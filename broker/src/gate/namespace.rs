//! The open namespace: a part of the topic space where the gate is a plain MQTT
//! broker, for tests and tools (an MQTT interoperability suite, a load generator's
//! peer runs). Off by default. When on (`mqtt.open_namespace`), any client — and,
//! with `mqtt.allow_anonymous`, clients without credentials — may publish and
//! subscribe there with every feature of MQTT 5: QoS 0–2, retained messages with
//! Retain Handling and Retain As Published, No Local, subscription identifiers,
//! shared subscriptions (`$share/{group}/{filter}`) and the publisher's
//! properties. Parley's own topics (`from/`, `to/`, `sys/`, `$…`) are never part
//! of it, and nothing in it is stored or seen by the bridges.
//!
//! Messages travel between gates on the bus under `ns/{topic}`, wrapped in an
//! envelope (the publishing client, then the MQTT 5 PUBLISH itself) because the bus
//! speaks 3.1.1 without properties. Every gate keeps the retained messages it sees
//! go by, in memory (at most [`MAX_RETAINED`]); a gate started later knows only
//! those published since. A shared subscription's group is the members connected to
//! one gate: each gate delivers one copy per group to one of its own members, so
//! with several gates a group with members on each gets one copy per gate.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{BufMut, Bytes, BytesMut};
use parley_wire::codec::{self, Inbound, Protocol, Publish};
use rumqttc::v5::mqttbytes::v5::PublishProperties;

use super::downlink::{self, Matched, Offered};
use super::session::{Delivery, GateStats, Registry, Session};

/// Prefix of namespace messages on the bus.
pub const BUS_PREFIX: &str = "ns/";

/// Retained messages a gate keeps; beyond that new ones are refused (and counted).
pub const MAX_RETAINED: usize = 10_000;

const ENVELOPE_VERSION: u8 = 1;

/// The user id of clients that connect without credentials.
pub const ANONYMOUS: parley_wire::UserId = parley_wire::UserId(uuid::Uuid::nil());

#[derive(Debug, Clone)]
struct Retained {
    payload: Bytes,
    qos: u8,
    properties: Option<Box<PublishProperties>>,
    stored_at: std::time::Instant,
}

/// Which topics are open, and the retained messages in them.
#[derive(Debug)]
pub struct Namespace {
    /// `None`: every topic outside Parley's own; else topics starting with this prefix.
    prefix: Option<String>,
    pub allow_anonymous: bool,
    retained: Mutex<BTreeMap<String, Retained>>,
    /// Counts the messages given to shared-subscription groups: whose turn it is.
    next_member: AtomicUsize,
}

/// A session that is a member of a shared-subscription group a message matched.
struct Member {
    session: Arc<Session>,
    matched: Matched,
    connected: bool,
    persistent: bool,
}

impl Namespace {
    /// `open` is a topic prefix (`lab/`), or `*` for every topic outside Parley's own.
    pub fn new(open: &str, allow_anonymous: bool) -> Self {
        let prefix = (open != "*").then(|| open.to_string());
        Self { prefix, allow_anonymous, retained: Mutex::new(BTreeMap::new()), next_member: AtomicUsize::new(0) }
    }

    /// Whether `topic` (a name or a filter) lies in the open namespace.
    pub fn contains(&self, topic: &str) -> bool {
        match &self.prefix {
            Some(prefix) => topic.starts_with(prefix.as_str()),
            None => !["from/", "to/", "sys/", "$"].iter().any(|p| topic.starts_with(p)),
        }
    }

    /// The bus message for a publish by client `origin` (its session's key).
    pub fn envelope(origin: &str, p: &Publish) -> (String, Bytes) {
        let mut out = BytesMut::with_capacity(16 + origin.len() + p.topic.len() + p.payload.len());
        out.put_u8(ENVELOPE_VERSION);
        out.put_u16(origin.len() as u16);
        out.put_slice(origin.as_bytes());
        let publish = Publish {
            topic: p.topic.clone(),
            payload: p.payload.clone(),
            qos: p.qos,
            retain: p.retain,
            dup: false,
            pkid: u16::from(p.qos > 0),
            topic_alias: None,
            subscription_ids: Vec::new(),
            properties: p.properties.clone(),
        };
        codec::write_inbound(Protocol::V5, &Inbound::Publish(publish), &mut out);
        (format!("{BUS_PREFIX}{}", p.topic), out.freeze())
    }

    /// Delivers a namespace message from the bus to every matching session of this
    /// gate, and keeps it if it is retained.
    pub fn dispatch(&self, registry: &Registry, stats: &GateStats, max_queued: usize, mut payload: Bytes) {
        let Some((origin, publish)) = open_envelope(&mut payload) else {
            tracing::warn!("unreadable namespace message on the bus; ignored");
            return;
        };
        if publish.retain {
            self.retain(stats, &publish);
        }
        // The publishing client, for No Local (parsed once, compared with each session).
        let origin = origin.split_once('\n').and_then(|(u, c)| Some((u.parse::<parley_wire::UserId>().ok()?, c)));
        let offered = Offered {
            topic: &publish.topic,
            payload: &publish.payload,
            qos: publish.qos,
            retain: publish.retain,
            properties: publish.properties.as_deref(),
        };
        let sessions = registry.all();
        for session in &sessions {
            let own = origin.is_some_and(|(user, client)| session.user == user && session.client_id == client);
            downlink::offer(session, stats, max_queued, &offered, own);
        }
        self.deliver_to_groups(sessions, stats, max_queued, &offered);
    }

    /// One copy for each shared subscription (share name and filter) matching the
    /// message, to one member in turn: among those with a connected device, or, when
    /// none is connected, among the persistent sessions waiting for theirs (QoS 1
    /// and 2 only).
    fn deliver_to_groups(&self, sessions: Vec<Arc<Session>>, stats: &GateStats, max_queued: usize, m: &Offered<'_>) {
        let mut groups: BTreeMap<String, Vec<Member>> = BTreeMap::new();
        for session in sessions {
            let st = session.state();
            let (connected, persistent) = (st.owner.is_some(), st.expiry.is_some());
            for s in
                st.subscriptions.iter().filter(|s| s.group.is_some() && rumqttc::matches(m.topic, s.topic_filter()))
            {
                let matched = Matched {
                    qos: m.qos.min(s.qos),
                    retain: s.retain_as_published && m.retain,
                    subscription_ids: s.id.into_iter().collect(),
                };
                let member = Member { session: session.clone(), matched, connected, persistent };
                groups.entry(s.filter.clone()).or_default().push(member);
            }
        }
        // One turn per message, so every group moves on to its next member.
        let turn = match groups.is_empty() {
            true => return,
            false => self.next_member.fetch_add(1, Ordering::Relaxed),
        };
        for mut members in groups.into_values() {
            if members.iter().any(|member| member.connected) {
                members.retain(|member| member.connected);
            } else {
                members.retain(|member| member.persistent && member.matched.qos > 0);
            }
            if members.is_empty() {
                continue;
            }
            let member = members.swap_remove(turn % members.len());
            downlink::deliver(&member.session, stats, max_queued, m, member.matched);
        }
    }

    fn retain(&self, stats: &GateStats, p: &Publish) {
        let mut retained = self.retained.lock().unwrap_or_else(|e| e.into_inner());
        if p.payload.is_empty() {
            retained.remove(&p.topic);
        } else if retained.len() < MAX_RETAINED || retained.contains_key(&p.topic) {
            let message = Retained {
                payload: p.payload.clone(),
                qos: p.qos,
                properties: p.properties.clone(),
                stored_at: std::time::Instant::now(),
            };
            retained.insert(p.topic.clone(), message);
        } else {
            GateStats::bump(&stats.deliveries_dropped);
            tracing::warn!(topic = %p.topic, "retained message store full; not retained");
        }
    }

    /// The retained messages matching `filter`, as deliveries at most at `qos`
    /// (sent with RETAIN set, whatever Retain As Published says).
    pub fn retained_for(&self, filter: &str, qos: u8, subscription_id: Option<usize>) -> Vec<Delivery> {
        let retained = self.retained.lock().unwrap_or_else(|e| e.into_inner());
        retained
            .iter()
            .filter(|(topic, _)| rumqttc::matches(topic, filter))
            .filter_map(|(topic, r)| {
                let mut d = Delivery {
                    retain: true,
                    properties: r.properties.clone(),
                    queued_at: Some(r.stored_at),
                    ..Delivery::new(topic, r.payload.clone(), r.qos.min(qos), subscription_id.into_iter().collect())
                };
                // A retained message expires too; what is left of its interval goes with it.
                d.still_valid().then(|| {
                    let properties = d.properties.take();
                    d.with_properties(properties)
                })
            })
            .collect()
    }
}

/// A shared subscription's parts: `Ok(Some((share name, filter)))` for
/// `$share/{name}/{filter}`, `Ok(None)` for any other filter, and `Err` for a
/// `$share/` filter without a share name (or with a wildcard in it) or without a
/// filter after it.
pub fn split_shared(filter: &str) -> Result<Option<(&str, &str)>, ()> {
    let Some(rest) = filter.strip_prefix("$share/") else { return Ok(None) };
    match rest.split_once('/') {
        Some((name, inner)) if !name.is_empty() && !name.contains(['+', '#']) && !inner.is_empty() => {
            Ok(Some((name, inner)))
        }
        _ => Err(()),
    }
}

/// How a publishing client is named in envelopes, for No Local: its user and client id.
pub fn session_key(session: &Session) -> String {
    format!("{}\n{}", session.user, session.client_id)
}

fn open_envelope(payload: &mut Bytes) -> Option<(String, Publish)> {
    if payload.len() < 3 || payload[0] != ENVELOPE_VERSION {
        return None;
    }
    let origin_len = usize::from(u16::from_be_bytes([payload[1], payload[2]]));
    let origin = std::str::from_utf8(payload.get(3..3 + origin_len)?).ok()?.to_string();
    let mut rest = BytesMut::from(payload.get(3 + origin_len..)?);
    match codec::read(Protocol::V5, &mut rest, usize::MAX) {
        Ok(Inbound::Publish(p)) => Some((origin, p)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parleys_own_topics_are_never_open() {
        let everything = Namespace::new("*", false);
        for topic in ["TopicA", "TopicA/B", "/TopicA", "#", "+/+", "lab/x", "from", "tofu/x"] {
            assert!(everything.contains(topic), "{topic}");
        }
        for topic in ["from/u/msg", "to/u/#", "sys/presence/g", "$SYS/x", "$share/g/x"] {
            assert!(!everything.contains(topic), "{topic}");
        }
        let lab = Namespace::new("lab/", false);
        assert!(lab.contains("lab/a/b") && lab.contains("lab/#"));
        assert!(!lab.contains("TopicA") && !lab.contains("#") && !lab.contains("from/u/msg"));
    }

    #[test]
    fn shared_filters_split_into_share_name_and_filter() {
        assert_eq!(split_shared("$share/g/lab/#"), Ok(Some(("g", "lab/#"))));
        assert_eq!(split_shared("$share/workers/a/+/c"), Ok(Some(("workers", "a/+/c"))));
        assert_eq!(split_shared("lab/$share/g/x"), Ok(None));
        assert_eq!(split_shared("$SYS/x"), Ok(None));
        for bad in ["$share/", "$share/g", "$share/g/", "$share//x", "$share/+/x", "$share/g#/x"] {
            assert_eq!(split_shared(bad), Err(()), "{bad}");
        }
    }

    #[test]
    fn envelopes_carry_the_publisher_and_the_whole_publish() {
        let properties = PublishProperties {
            user_properties: vec![("a".into(), "2".into())],
            content_type: Some("text/plain".into()),
            ..Default::default()
        };
        let p = Publish {
            topic: "TopicA/B".into(),
            payload: Bytes::from_static(b"qos 2"),
            qos: 2,
            retain: true,
            dup: false,
            pkid: 1,
            topic_alias: None,
            subscription_ids: Vec::new(),
            properties: Some(Box::new(properties)),
        };
        let (topic, mut payload) = Namespace::envelope("user\nclient", &p);
        assert_eq!(topic, "ns/TopicA/B");
        assert_eq!(open_envelope(&mut payload), Some(("user\nclient".to_string(), p)));
        assert_eq!(open_envelope(&mut Bytes::from_static(b"\x02junk")), None);
        assert_eq!(open_envelope(&mut Bytes::from_static(b"\x01\xff\xff")), None);
    }
}
