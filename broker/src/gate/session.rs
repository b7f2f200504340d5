//! Device sessions: subscriptions, the queue of messages waiting for the device,
//! and what it has not acknowledged yet. A session outlives its connection when the
//! device asked for a persistent one, so short drops lose nothing.
//!
//! Sessions are keyed by (user, client id): a client id chosen by another user is
//! another session, so no device can take over or read someone else's.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use parley_wire::UserId;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use rumqttc::v5::mqttbytes::v5::PublishProperties;

use super::subscriptions::Subscriptions;

/// A message waiting to go to a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub topic: String,
    pub payload: Bytes,
    pub qos: u8,
    /// v5 Subscription Identifiers of the matching subscriptions.
    pub subscription_ids: Vec<usize>,
    /// The RETAIN flag as sent (open namespace only: retained on subscribe, or Retain As Published).
    pub retain: bool,
    /// v5 properties passed through (open namespace only).
    pub properties: Option<Box<PublishProperties>>,
    /// When it was queued, for a message with a v5 Message Expiry Interval.
    pub queued_at: Option<Instant>,
}

impl Delivery {
    /// A plain downlink: no retain flag, no properties.
    pub fn new(topic: &str, payload: Bytes, qos: u8, subscription_ids: Vec<usize>) -> Self {
        Self {
            topic: topic.to_string(),
            payload,
            qos,
            subscription_ids,
            retain: false,
            properties: None,
            queued_at: None,
        }
    }

    /// A message with `properties`, timed if they carry a Message Expiry Interval.
    pub fn with_properties(mut self, properties: Option<Box<PublishProperties>>) -> Self {
        self.queued_at = properties.as_ref().and_then(|p| p.message_expiry_interval).map(|_| Instant::now());
        self.properties = properties;
        self
    }

    /// Whether the message may still go out (MQTT 5 §3.3.2.3.3): false once its
    /// Message Expiry Interval has passed; otherwise the interval is reduced by the
    /// time the message waited.
    pub fn still_valid(&mut self) -> bool {
        let (Some(queued_at), Some(p)) = (self.queued_at, self.properties.as_mut()) else { return true };
        let Some(interval) = p.message_expiry_interval else { return true };
        let waited = u32::try_from(queued_at.elapsed().as_secs()).unwrap_or(u32::MAX);
        if waited >= interval {
            return false;
        }
        p.message_expiry_interval = Some(interval - waited);
        self.queued_at = None;
        true
    }
}

/// A QoS 1 or 2 message written to the device and not yet acknowledged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inflight {
    pub pkid: u16,
    pub delivery: Delivery,
    /// QoS 2: PUBREC received and PUBREL sent; waiting for PUBCOMP.
    pub released: bool,
}

/// One subscription filter and the QoS granted for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    /// As the device sent it (`$share/{group}/{filter}` for a shared one).
    pub filter: String,
    /// The share name of a shared subscription (open namespace only): each message
    /// goes to one member of the group on this gate, not to every one.
    pub group: Option<String>,
    pub qos: u8,
    /// v5 Subscription Identifier, echoed on what the subscription delivers.
    pub id: Option<usize>,
    /// v5 No Local: not the messages this same client published (open namespace).
    pub no_local: bool,
    /// v5 Retain As Published: keep the RETAIN flag on live messages (open namespace).
    pub retain_as_published: bool,
}

impl Subscription {
    /// The filter topics are matched against (without `$share/{group}/`).
    pub fn topic_filter(&self) -> &str {
        match &self.group {
            Some(group) => &self.filter["$share/".len() + group.len() + 1..],
            None => &self.filter,
        }
    }
}

/// A session's mutable state; always reached through [`Session::state`].
#[derive(Debug, Default)]
pub struct SessionState {
    pub subscriptions: Vec<Subscription>,
    pub queue: VecDeque<Delivery>,
    /// QoS 1 and 2 messages written to the device and not yet acknowledged, in send order.
    pub inflight: VecDeque<Inflight>,
    /// QoS 2 packet ids received from the device and not yet released.
    pub incoming_qos2: HashSet<u16>,
    next_pkid: u16,
    /// The connection that owns the session now, if any.
    pub owner: Option<u64>,
    /// Cancelled to push the owning connection out (takeover, shutdown).
    pub kick: CancellationToken,
    /// The sign-in the owning connection's token belongs to.
    pub sign_in: Option<uuid::Uuid>,
    /// Cancelled when that sign-in is revoked.
    pub revoked: CancellationToken,
    /// Whether the session survives its connection, and for how long.
    pub expiry: Option<Duration>,
    /// When an ownerless persistent session is forgotten.
    pub expires_at: Option<Instant>,
}

impl SessionState {
    /// The next free packet id for a message to the device (1..=65535, skipping in-flight ones).
    pub fn next_pkid(&mut self) -> u16 {
        loop {
            self.next_pkid = self.next_pkid.wrapping_add(1);
            if self.next_pkid == 0 {
                continue;
            }
            if !self.inflight.iter().any(|i| i.pkid == self.next_pkid) {
                return self.next_pkid;
            }
        }
    }
}

/// A device session.
#[derive(Debug)]
pub struct Session {
    pub user: UserId,
    pub client_id: String,
    state: Mutex<SessionState>,
    /// Woken when the queue grows, so the owning connection writes.
    pub notify: Notify,
}

impl Session {
    /// The state, even if a holder panicked (the state stays consistent per operation).
    pub fn state(&self) -> MutexGuard<'_, SessionState> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Counters the gate keeps for operators and tests.
#[derive(Debug, Default)]
pub struct GateStats {
    pub connections_accepted: AtomicU64,
    pub connections_refused: AtomicU64,
    pub publishes_refused: AtomicU64,
    pub subscriptions_refused: AtomicU64,
    pub deliveries_dropped: AtomicU64,
    pub malformed_packets: AtomicU64,
    /// Packets announcing more than the maximum packet size (the connection is closed).
    pub packets_too_large: AtomicU64,
    /// TLS or WebSocket handshakes that failed.
    pub handshakes_failed: AtomicU64,
    /// Connections closed for not finishing their handshakes and CONNECT in time.
    pub handshakes_timed_out: AtomicU64,
    /// CONNECTs refused because their address opened connections too fast.
    pub connections_rate_limited: AtomicU64,
    /// CONNECTs refused because the client is banned for flapping.
    pub connections_banned: AtomicU64,
    /// Times a connection was paused for going over its publish or byte rate.
    pub connections_throttled: AtomicU64,
    /// Downlinks that reached this gate for a user with no session here (with an
    /// external bus, only those in flight while the user's last session goes).
    pub downlinks_unclaimed: AtomicU64,
    /// Uplinks (device publishes, wills, presence reports) handed on, and how many
    /// of them were bus publishes (on the lane, only open-namespace envelopes).
    pub uplinks: AtomicU64,
    pub uplink_publishes: AtomicU64,
}

impl GateStats {
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Every counter with its name, for the metrics page.
    pub fn counters(&self) -> [(&'static str, &AtomicU64); 15] {
        [
            ("connections_accepted", &self.connections_accepted),
            ("connections_refused", &self.connections_refused),
            ("publishes_refused", &self.publishes_refused),
            ("subscriptions_refused", &self.subscriptions_refused),
            ("deliveries_dropped", &self.deliveries_dropped),
            ("malformed_packets", &self.malformed_packets),
            ("packets_too_large", &self.packets_too_large),
            ("handshakes_failed", &self.handshakes_failed),
            ("handshakes_timed_out", &self.handshakes_timed_out),
            ("connections_rate_limited", &self.connections_rate_limited),
            ("connections_banned", &self.connections_banned),
            ("connections_throttled", &self.connections_throttled),
            ("downlinks_unclaimed", &self.downlinks_unclaimed),
            ("uplinks", &self.uplinks),
            ("uplink_publishes", &self.uplink_publishes),
        ]
    }
}

type Key = (UserId, String);

/// Every session of this gate, findable by (user, client id) and by user. It tells
/// the gate's bus subscriptions whenever a user's first session appears or last one
/// goes, under its own lock, so those changes reach the bus in the order they happened.
#[derive(Debug, Default)]
pub struct Registry {
    inner: Mutex<Maps>,
    subscriptions: Arc<Subscriptions>,
}

#[derive(Debug, Default)]
struct Maps {
    sessions: HashMap<Key, Arc<Session>>,
    by_user: HashMap<UserId, Vec<Arc<Session>>>,
}

/// What [`Registry::attach`] found.
pub struct Attached {
    pub session: Arc<Session>,
    pub present: bool,
    /// Cancelled when a later connection takes this session over.
    pub kick: CancellationToken,
    /// Cancelled when the connection's sign-in is revoked.
    pub revoked: CancellationToken,
}

impl Registry {
    pub fn new(subscriptions: Arc<Subscriptions>) -> Self {
        Self { inner: Mutex::default(), subscriptions }
    }

    pub fn subscriptions(&self) -> &Subscriptions {
        &self.subscriptions
    }

    fn maps(&self) -> MutexGuard<'_, Maps> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Tells the subscriptions whether `user` still has a session here (call under the lock).
    fn sync_user(&self, maps: &Maps, user: UserId) {
        self.subscriptions.set_user(user, maps.by_user.contains_key(&user));
    }

    /// Makes `connection` the owner of the (user, client id) session, pushing out any
    /// previous owner. With `clean_start`, or when the old session expired, a new
    /// session replaces the old one. Refuses (returns `None`) when the user already
    /// has `max_per_user` sessions and none of them can be evicted.
    pub fn attach(
        &self,
        user: UserId,
        client_id: &str,
        connection: u64,
        sign_in: uuid::Uuid,
        clean_start: bool,
        expiry: Option<Duration>,
        max_per_user: usize,
    ) -> Option<Attached> {
        let now = Instant::now();
        let mut maps = self.maps();
        let key = (user, client_id.to_string());
        let existing = maps.sessions.get(&key).cloned();
        let reusable = existing.as_ref().filter(|s| {
            let st = s.state();
            !clean_start && st.expires_at.is_none_or(|t| t > now)
        });
        let (session, present) = match reusable {
            Some(s) => (s.clone(), true),
            None => {
                if let Some(old) = existing {
                    old.state().kick.cancel();
                    maps.remove(&old);
                }
                let count = maps.by_user.get(&user).map_or(0, Vec::len);
                if count >= max_per_user && !maps.evict_oldest_offline(user) {
                    self.sync_user(&maps, user);
                    return None;
                }
                let s = Arc::new(Session {
                    user,
                    client_id: client_id.to_string(),
                    state: Mutex::new(SessionState::default()),
                    notify: Notify::new(),
                });
                maps.sessions.insert(key, s.clone());
                maps.by_user.entry(user).or_default().push(s.clone());
                self.sync_user(&maps, user);
                (s, false)
            }
        };
        let (kick, revoked) = {
            let mut st = session.state();
            st.kick.cancel();
            st.kick = CancellationToken::new();
            st.owner = Some(connection);
            st.sign_in = Some(sign_in);
            st.revoked = CancellationToken::new();
            st.expiry = expiry;
            st.expires_at = None;
            (st.kick.clone(), st.revoked.clone())
        };
        Some(Attached { session, present, kick, revoked })
    }

    /// Called when `connection` ends: a persistent session waits for its device,
    /// anything else is forgotten. Does nothing if another connection took over.
    pub fn detach(&self, session: &Arc<Session>, connection: u64) {
        let mut maps = self.maps();
        let mut st = session.state();
        if st.owner != Some(connection) {
            return;
        }
        st.owner = None;
        match st.expiry {
            Some(expiry) if !expiry.is_zero() => st.expires_at = Some(Instant::now() + expiry),
            _ => {
                drop(st);
                maps.remove(session);
                self.sync_user(&maps, session.user);
            }
        }
    }

    /// Undoes [`Registry::attach`] for a connection that will not be accepted after
    /// all: a session it `created` is forgotten, a resumed one waits for its device again.
    pub fn release(&self, session: &Arc<Session>, connection: u64, created: bool) {
        if !created {
            return self.detach(session, connection);
        }
        let mut maps = self.maps();
        if session.state().owner == Some(connection) {
            maps.remove(session);
            self.sync_user(&maps, session.user);
        }
    }

    /// Disconnects `user`'s devices connected under any of the `sign_ins`; returns how many.
    pub fn revoke(&self, user: UserId, sign_ins: &[uuid::Uuid]) -> usize {
        let mut count = 0;
        for session in self.sessions_of(user) {
            let st = session.state();
            if st.owner.is_some() && st.sign_in.is_some_and(|s| sign_ins.contains(&s)) {
                st.revoked.cancel();
                count += 1;
            }
        }
        count
    }

    /// Every session of this gate (for the open namespace, which matches them all).
    pub fn all(&self) -> Vec<Arc<Session>> {
        self.maps().sessions.values().cloned().collect()
    }

    /// The sessions of `user` (connected or waiting).
    pub fn sessions_of(&self, user: UserId) -> Vec<Arc<Session>> {
        self.maps().by_user.get(&user).cloned().unwrap_or_default()
    }

    /// How many of `user`'s sessions have a connected device.
    pub fn connected_devices(&self, user: UserId) -> usize {
        self.sessions_of(user).iter().filter(|s| s.state().owner.is_some()).count()
    }

    /// Forgets persistent sessions whose device stayed away past their expiry.
    pub fn purge_expired(&self) -> usize {
        let now = Instant::now();
        let mut maps = self.maps();
        let expired: Vec<_> =
            maps.sessions.values().filter(|s| s.state().expires_at.is_some_and(|t| t <= now)).cloned().collect();
        for s in &expired {
            maps.remove(s);
            self.sync_user(&maps, s.user);
        }
        expired.len()
    }

    /// Pushes every connection out (shutdown).
    pub fn kick_all(&self) {
        for s in self.maps().sessions.values() {
            s.state().kick.cancel();
        }
    }

    /// How many sessions exist, and how many have a connected device.
    pub fn counts(&self) -> (usize, usize) {
        let maps = self.maps();
        let connected = maps.sessions.values().filter(|s| s.state().owner.is_some()).count();
        (maps.sessions.len(), connected)
    }
}

impl Maps {
    /// Forgets exactly this session (not a newer one under the same key).
    fn remove(&mut self, session: &Arc<Session>) {
        let key = (session.user, session.client_id.clone());
        if self.sessions.get(&key).is_some_and(|s| Arc::ptr_eq(s, session)) {
            self.sessions.remove(&key);
        }
        if let Some(list) = self.by_user.get_mut(&session.user) {
            list.retain(|s| !Arc::ptr_eq(s, session));
            if list.is_empty() {
                self.by_user.remove(&session.user);
            }
        }
    }

    fn evict_oldest_offline(&mut self, user: UserId) -> bool {
        let oldest = self
            .by_user
            .get(&user)
            .and_then(|list| {
                list.iter().filter_map(|s| s.state().expires_at.map(|t| (t, s.clone()))).min_by_key(|(t, _)| *t)
            })
            .map(|(_, s)| s);
        match oldest {
            Some(s) => {
                self.remove(&s);
                true
            }
            None => false,
        }
    }
}
