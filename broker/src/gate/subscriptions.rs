//! The gate's own subscriptions on the bus. With the embedded bus one wildcard,
//! `to/#`, brings every downlink. With an external broker the gate subscribes to
//! `to/{uid}/#` while user `uid` has a session here (connected, or persistent and
//! waiting for its device), so each gate receives only its own users' downlinks.
//!
//! The guarantee: a device's CONNACK is sent only once the bus has acknowledged
//! (SUBACK) a subscription covering its user on the gate's current bus connection,
//! so whatever the bus accepts after that CONNACK reaches this gate. (On a broker
//! cluster, "accepts" means: once the cluster has spread the route to the node the
//! publisher is on; EMQX and VerneMQ do this within milliseconds.) While the bus is
//! away nothing is subscribed, and CONNECTs wait, then are refused with "server
//! unavailable" so the device retries; devices catch up with `sync` in any case.
//!
//! Requests are matched to their acknowledgements by packet id: the poller sees
//! each request's packet id as rumqttc sends it, in the order the requests were
//! queued. A new bus client is made for each connection, so no request queued on a
//! broken connection can reach the next one (rumqttc drops or replays such requests
//! and does not resubscribe); each new connection subscribes everything again.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use parley_wire::{topics, UserId};
use rumqttc::{AsyncClient, QoS, SubscribeFilter, SubscribeReasonCode};
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

/// Most filters in one SUBSCRIBE (a gate coming back to the bus resubscribes every user).
const BATCH: usize = 128;

/// A filter the gate needs on the bus.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Key {
    /// `to/#` (embedded bus).
    All,
    /// `to/{uid}/#` (external bus).
    User(UserId),
    /// `ns/#`: the open namespace, when configured.
    Namespace,
}

impl Key {
    fn filter(self) -> String {
        match self {
            Key::All => topics::GATE_DOWNLINK_FILTER.to_string(),
            Key::User(uid) => topics::user_downlink_filter(uid),
            Key::Namespace => format!("{}#", super::namespace::BUS_PREFIX),
        }
    }
}

/// Where one filter's subscription stands on the current bus connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Needed and not yet asked for.
    Wanted,
    /// Asked for by request `id`, not yet acknowledged.
    Requested(u64),
    /// Acknowledged: downlinks for it reach the gate.
    Active,
    /// The bus refused it (its ACL); tried again on the next connection.
    Refused,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Subscribe,
    Unsubscribe,
}

/// What the sender does next.
#[derive(Debug, PartialEq, Eq)]
enum Next {
    /// Its connection is no longer the current one.
    Stale,
    /// Nothing to do until woken.
    Idle,
    Send(Kind, Vec<String>),
}

#[derive(Debug)]
struct Request {
    id: u64,
    kind: Kind,
    keys: Vec<Key>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Bumped for each new bus connection; a sender of an older one stops.
    connection: u64,
    wanted: HashMap<Key, State>,
    to_subscribe: VecDeque<Key>,
    to_unsubscribe: VecDeque<Key>,
    /// Handed to the bus client, packet id not yet known, in order.
    queued: VecDeque<Request>,
    /// Sent, by packet id, waiting for SUBACK or UNSUBACK.
    sent: HashMap<u16, Request>,
    next_request: u64,
    active: usize,
}

/// Counters of the gate's bus subscriptions, for operators and tests.
#[derive(Debug, Default)]
pub struct SubscriptionStats {
    /// Filters the bus acknowledged (SUBACK), counting resubscriptions after a reconnect.
    pub subscribed: AtomicU64,
    /// Filters the bus confirmed removed (UNSUBACK).
    pub unsubscribed: AtomicU64,
}

/// The gate's subscriptions: what it needs, and what the bus has confirmed.
#[derive(Debug)]
pub struct Subscriptions {
    per_user: bool,
    inner: Mutex<Inner>,
    /// Bumped when a subscription becomes active or the bus connection is lost.
    changed: watch::Sender<u64>,
    /// Wakes the sender when there is something to (un)subscribe.
    work: Notify,
    pub stats: SubscriptionStats,
}

impl Default for Subscriptions {
    fn default() -> Self {
        Self::new(false, false)
    }
}

impl Subscriptions {
    /// `per_user`: one filter per user with a session here (external bus), else one
    /// wildcard; `namespace`: one more for the open namespace.
    pub fn new(per_user: bool, namespace: bool) -> Self {
        let mut inner = Inner::default();
        if !per_user {
            inner.wanted.insert(Key::All, State::Wanted);
        }
        if namespace {
            inner.wanted.insert(Key::Namespace, State::Wanted);
        }
        Self {
            per_user,
            inner: Mutex::new(inner),
            changed: watch::channel(0).0,
            work: Notify::new(),
            stats: SubscriptionStats::default(),
        }
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn key(&self, user: UserId) -> Key {
        if self.per_user {
            Key::User(user)
        } else {
            Key::All
        }
    }

    /// Whether the gate subscribes per user (external bus).
    pub fn per_user(&self) -> bool {
        self.per_user
    }

    /// Says whether `user` has a session on this gate; called by the registry, under
    /// its lock, whenever that may have changed (so changes reach the bus in order).
    pub fn set_user(&self, user: UserId, present: bool) {
        if !self.per_user {
            return;
        }
        let key = Key::User(user);
        let mut inner = self.inner();
        match (present, inner.wanted.get(&key).copied()) {
            (true, None) => {
                inner.wanted.insert(key, State::Wanted);
                inner.to_unsubscribe.retain(|k| *k != key);
                inner.to_subscribe.push_back(key);
            }
            (false, Some(state)) => {
                inner.wanted.remove(&key);
                if state == State::Active {
                    inner.active -= 1;
                }
                // Never asked for on this connection: nothing to undo.
                if state != State::Wanted {
                    inner.to_unsubscribe.push_back(key);
                }
            }
            _ => return,
        }
        drop(inner);
        self.work.notify_one();
    }

    /// Whether downlinks for `user` reach the gate now.
    pub fn is_active(&self, user: UserId) -> bool {
        self.inner().wanted.get(&self.key(user)) == Some(&State::Active)
    }

    /// How many filters the bus has confirmed for this gate.
    pub fn active(&self) -> usize {
        self.inner().active
    }

    /// Waits until downlinks for `user` reach the gate, at most `limit`; false if they do not.
    pub async fn wait_active(&self, user: UserId, limit: Duration) -> bool {
        let mut changed = self.changed.subscribe();
        let wait = async {
            loop {
                if self.is_active(user) {
                    return true;
                }
                if changed.changed().await.is_err() {
                    return false;
                }
            }
        };
        tokio::time::timeout(limit, wait).await.unwrap_or(false)
    }

    /// A new bus connection: nothing is subscribed on it yet, so everything needed is
    /// asked for again. Returns the connection's number for [`Subscriptions::send`].
    pub fn reset(&self) -> u64 {
        let mut inner = self.inner();
        inner.connection += 1;
        inner.queued.clear();
        inner.sent.clear();
        inner.to_unsubscribe.clear();
        inner.active = 0;
        let keys: Vec<Key> = inner.wanted.keys().copied().collect();
        for key in &keys {
            inner.wanted.insert(*key, State::Wanted);
        }
        inner.to_subscribe = keys.into();
        let connection = inner.connection;
        drop(inner);
        self.changed.send_modify(|n| *n += 1);
        self.work.notify_one();
        connection
    }

    /// Hands subscription changes to `client` (the bus connection numbered
    /// `connection`) in order, until `stop` or a newer connection.
    pub async fn send(&self, client: AsyncClient, connection: u64, stop: CancellationToken) {
        loop {
            let (kind, filters) = match self.next_request(connection) {
                Next::Send(kind, filters) => (kind, filters),
                Next::Idle => {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = self.work.notified() => continue,
                    }
                }
                Next::Stale => return,
            };
            let handed = async {
                match kind {
                    Kind::Subscribe => {
                        let filters = filters.into_iter().map(|f| SubscribeFilter::new(f, QoS::AtLeastOnce));
                        client.subscribe_many(filters).await
                    }
                    Kind::Unsubscribe => {
                        for filter in filters {
                            client.unsubscribe(filter).await?;
                        }
                        Ok(())
                    }
                }
            };
            let handed = tokio::select! {
                _ = stop.cancelled() => return,
                handed = handed => handed,
            };
            if handed.is_err() {
                // The client is gone; the poller starts a new connection.
                return;
            }
        }
    }

    /// The next request for connection `connection`, queued as if already sent.
    fn next_request(&self, connection: u64) -> Next {
        let mut inner = self.inner();
        if inner.connection != connection {
            return Next::Stale;
        }
        let id = inner.next_request;
        let mut keys = Vec::new();
        while keys.len() < BATCH {
            let Some(key) = inner.to_subscribe.pop_front() else { break };
            if let Some(state @ State::Wanted) = inner.wanted.get_mut(&key) {
                *state = State::Requested(id);
                keys.push(key);
            }
        }
        let kind = if !keys.is_empty() {
            Kind::Subscribe
        } else if let Some(key) = inner.to_unsubscribe.pop_front() {
            // One filter per UNSUBSCRIBE: rumqttc's client sends no more.
            keys.push(key);
            Kind::Unsubscribe
        } else {
            return Next::Idle;
        };
        inner.next_request += 1;
        let filters = keys.iter().map(|k| k.filter()).collect();
        inner.queued.push_back(Request { id, kind, keys });
        Next::Send(kind, filters)
    }

    /// rumqttc sent the oldest queued request as packet `pkid`. An unexpected one
    /// means the bookkeeping cannot be trusted: the caller reconnects.
    pub fn on_sent(&self, pkid: u16, subscribe: bool) -> Result<(), &'static str> {
        let kind = if subscribe { Kind::Subscribe } else { Kind::Unsubscribe };
        let mut inner = self.inner();
        match inner.queued.pop_front() {
            Some(request) if request.kind == kind => {
                inner.sent.insert(pkid, request);
                Ok(())
            }
            _ => Err("a bus (un)subscription the gate did not queue"),
        }
    }

    /// SUBACK for packet `pkid`.
    pub fn on_suback(&self, pkid: u16, codes: &[SubscribeReasonCode]) {
        let mut inner = self.inner();
        let Some(request) = inner.sent.remove(&pkid) else {
            tracing::warn!(pkid, "SUBACK for no request of this gate");
            return;
        };
        let mut activated = 0;
        for (i, key) in request.keys.iter().enumerate() {
            let granted = matches!(codes.get(i), Some(SubscribeReasonCode::Success(_)));
            let Some(state) = inner.wanted.get_mut(key) else { continue };
            if *state != State::Requested(request.id) {
                continue;
            }
            if granted {
                *state = State::Active;
                activated += 1;
            } else {
                *state = State::Refused;
                tracing::error!(filter = %key.filter(), "the bus refused the gate's subscription; check its ACL");
            }
        }
        inner.active += activated;
        drop(inner);
        self.stats.subscribed.fetch_add(activated as u64, Ordering::Relaxed);
        self.changed.send_modify(|n| *n += 1);
    }

    /// UNSUBACK for packet `pkid`.
    pub fn on_unsuback(&self, pkid: u16) {
        if let Some(request) = self.inner().sent.remove(&pkid) {
            self.stats.unsubscribed.fetch_add(request.keys.len() as u64, Ordering::Relaxed);
        }
    }

    /// The bus connection is gone: nothing is subscribed until the next one.
    pub fn lost(&self) {
        let mut inner = self.inner();
        inner.connection += 1;
        inner.active = 0;
        for state in inner.wanted.values_mut() {
            *state = State::Wanted;
        }
        drop(inner);
        self.changed.send_modify(|n| *n += 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn granted(n: usize) -> Vec<SubscribeReasonCode> {
        vec![SubscribeReasonCode::Success(QoS::AtLeastOnce); n]
    }

    #[test]
    fn a_user_is_active_only_after_the_suback_of_its_own_request() {
        let subs = Subscriptions::new(true, false);
        let connection = subs.reset();
        let (alice, bob) = (UserId::new(), UserId::new());
        subs.set_user(alice, true);
        assert_eq!(subs.next_request(connection), Next::Send(Kind::Subscribe, vec![format!("to/{alice}/#")]));
        subs.on_sent(7, true).expect("queued");
        subs.set_user(bob, true);
        assert!(!subs.is_active(alice), "no SUBACK yet");
        subs.on_suback(7, &granted(1));
        assert!(subs.is_active(alice) && !subs.is_active(bob));
        assert_eq!(subs.active(), 1);
    }

    #[test]
    fn leaving_unsubscribes_and_coming_back_subscribes_again_in_order() {
        let subs = Subscriptions::new(true, false);
        let connection = subs.reset();
        let alice = UserId::new();
        subs.set_user(alice, true);
        let filter = vec![format!("to/{alice}/#")];
        assert_eq!(subs.next_request(connection), Next::Send(Kind::Subscribe, filter.clone()));
        subs.on_sent(1, true).expect("queued");
        subs.on_suback(1, &granted(1));
        subs.set_user(alice, false);
        assert_eq!(subs.active(), 0);
        assert_eq!(subs.next_request(connection), Next::Send(Kind::Unsubscribe, filter.clone()));
        subs.set_user(alice, true);
        assert_eq!(subs.next_request(connection), Next::Send(Kind::Subscribe, filter));
        assert_eq!(subs.next_request(connection), Next::Idle);
    }

    #[test]
    fn a_user_gone_before_being_asked_for_costs_nothing_on_the_bus() {
        let subs = Subscriptions::new(true, false);
        let connection = subs.reset();
        let alice = UserId::new();
        subs.set_user(alice, true);
        subs.set_user(alice, false);
        assert_eq!(subs.next_request(connection), Next::Idle);
    }

    #[test]
    fn a_lost_connection_deactivates_everything_and_the_next_one_asks_again() {
        let subs = Subscriptions::new(true, false);
        let first = subs.reset();
        let users: Vec<UserId> = (0..200).map(|_| UserId::new()).collect();
        for u in &users {
            subs.set_user(*u, true);
        }
        let mut pkid = 0;
        while let Next::Send(_, filters) = subs.next_request(first) {
            pkid += 1;
            subs.on_sent(pkid, true).expect("queued");
            subs.on_suback(pkid, &granted(filters.len()));
        }
        assert_eq!(subs.active(), 200);
        subs.lost();
        assert_eq!(subs.active(), 0);
        assert_eq!(subs.next_request(first), Next::Stale, "the old connection's sender stops");
        let second = subs.reset();
        let mut asked = 0;
        while let Next::Send(Kind::Subscribe, filters) = subs.next_request(second) {
            assert!(filters.len() <= BATCH);
            asked += filters.len();
        }
        assert_eq!(asked, 200);
    }

    #[test]
    fn the_embedded_bus_takes_one_wildcard_for_everyone() {
        let subs = Subscriptions::new(false, false);
        let connection = subs.reset();
        subs.set_user(UserId::new(), true);
        assert_eq!(subs.next_request(connection), Next::Send(Kind::Subscribe, vec!["to/#".to_string()]));
        subs.on_sent(1, true).expect("queued");
        subs.on_suback(1, &[SubscribeReasonCode::Failure]);
        assert!(!subs.is_active(UserId::new()), "refused is not active");
        assert_eq!(subs.next_request(connection), Next::Idle, "no retry until the next connection");
    }
}
