//! One simulated device: a rumqttc connection that behaves like an app. Against
//! Parley it subscribes to `to/{uid}/#`, sends messages on `from/{uid}/msg` and
//! counts them stored when the acknowledgement comes back; after a reconnect it
//! asks for what it missed (sync, from the highest event it holds without a gap)
//! and, when its session was lost, sends again what was never acknowledged, with
//! the same ids. Against a peer broker it publishes to its room's topic and
//! counts a message acknowledged at PUBACK.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use parley_wire::payloads::{Ack, AckError, Message, SendMessage, SyncAnswer};
use parley_wire::{ConversationId, UserId};
use rand::Rng;
use rumqttc::{
    AsyncClient, ClientError, Event, EventLoop, MqttOptions, NetworkOptions, Outgoing, Packet, Publish, QoS,
};
use serde::Deserialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::lock;
use crate::provision::Account;
use crate::tracker::Tracker;

/// Where a device's messages go.
#[derive(Debug, Clone)]
pub enum Dest {
    /// Parley, 1:1: the other user (the conversation is made by the first message).
    User(String),
    /// Parley: a group conversation.
    Conversation(String),
    /// A peer broker: the room's topic prefix (`bench/r7`), which every member subscribes to.
    Room(String),
}

/// How a device connects.
#[derive(Debug, Clone)]
pub struct Spec {
    pub idx: u32,
    pub account: Account,
    pub dest: Dest,
    pub host: String,
    pub port: u16,
    pub clean_session: bool,
    pub keep_alive_secs: u64,
    /// Wait before a reconnect: at least `backoff_ms`, plus up to `jitter_ms` at random.
    pub backoff_ms: u64,
    pub jitter_ms: u64,
}

impl Spec {
    fn parley(&self) -> bool {
        !matches!(self.dest, Dest::Room(_))
    }
}

/// Publishes waiting for their packet id, and those waiting for PUBACK.
#[derive(Default)]
struct Outbox {
    /// Every QoS 1 publish in the order handed to rumqttc: the message number for
    /// chat messages, `None` for anything else.
    order: VecDeque<Option<u32>>,
    inflight: HashMap<u16, u32>,
}

/// The highest event number held without a gap, and those held above it.
#[derive(Default)]
struct Events {
    upto: i64,
    above: BTreeSet<i64>,
}

impl Events {
    /// Records `seq`; false when it was already held.
    fn add(&mut self, seq: i64) -> bool {
        if seq <= self.upto || !self.above.insert(seq) {
            return false;
        }
        while self.above.remove(&(self.upto + 1)) {
            self.upto += 1;
        }
        true
    }
}

pub struct Device {
    pub spec: Spec,
    client: AsyncClient,
    tracker: Arc<Tracker>,
    outbox: Mutex<Outbox>,
    events: Mutex<Events>,
    /// The 1:1 conversation, learnt from the first acknowledgement.
    conversation: Mutex<Option<String>>,
    pub connected: AtomicBool,
    /// Parley devices, as an app's outbox does: new messages go out at once
    /// while this holds; after a drop they wait until what must be sent again
    /// has gone (`resumed`), so a device never sends its messages out of order.
    sending: AtomicBool,
    /// The messages that waited so, never handed to rumqttc.
    held: Mutex<BTreeSet<u32>>,
    syncs: AtomicU64,
    /// How many times the device has been subscribed and ready.
    ready: watch::Sender<u64>,
}

#[derive(Deserialize)]
struct Head {
    event_seq: i64,
    #[serde(rename = "type")]
    kind: String,
}

impl Device {
    /// Starts connecting; the connection lives until `stop`.
    pub fn start(spec: Spec, tracker: Arc<Tracker>, stop: CancellationToken) -> Arc<Device> {
        let mut options = MqttOptions::new(format!("bench-{}", spec.idx), spec.host.clone(), spec.port);
        if spec.parley() {
            options.set_credentials(spec.account.user_id.clone(), spec.account.token.clone());
        }
        options
            .set_keep_alive(Duration::from_secs(spec.keep_alive_secs))
            .set_clean_session(spec.clean_session)
            .set_inflight(100)
            .set_request_channel_capacity(1000)
            .set_max_packet_size(4 << 20, 1 << 20);
        let (client, mut events) = AsyncClient::new(options, 1000);
        // As the mobile libraries do: a chat message must not wait for a delayed ACK.
        let mut network = NetworkOptions::new();
        network.set_tcp_nodelay(true);
        events.set_network_options(network);
        let device = Arc::new(Device {
            spec,
            client,
            tracker,
            outbox: Mutex::default(),
            events: Mutex::default(),
            conversation: Mutex::default(),
            connected: AtomicBool::new(false),
            sending: AtomicBool::new(true),
            held: Mutex::default(),
            syncs: AtomicU64::new(0),
            ready: watch::channel(0).0,
        });
        tokio::spawn(device.clone().drive(events, stop));
        device
    }

    /// Waits until the device has been ready (connected and subscribed) `times` times.
    pub async fn ready(&self, times: u64, limit: Duration) -> bool {
        let mut rx = self.ready.subscribe();
        tokio::time::timeout(limit, rx.wait_for(|n| *n >= times)).await.is_ok_and(|r| r.is_ok())
    }

    fn subscription(&self) -> String {
        match &self.spec.dest {
            Dest::Room(room) => format!("{room}/#"),
            _ => format!("to/{}/#", self.spec.account.user_id),
        }
    }

    fn topic(&self, channel: &str) -> String {
        match &self.spec.dest {
            Dest::Room(room) => format!("{room}/{channel}"),
            _ => format!("from/{}/{channel}", self.spec.account.user_id),
        }
    }

    fn try_publish(&self, topic: String, qos: QoS, payload: Vec<u8>, chat: Option<u32>) -> Result<(), ClientError> {
        let mut outbox = lock(&self.outbox);
        let counted = qos != QoS::AtMostOnce;
        if counted {
            outbox.order.push_back(chat);
        }
        let result = self.client.try_publish(topic, qos, false, payload);
        if result.is_err() && counted {
            outbox.order.pop_back();
        }
        result
    }

    /// Publishes, waiting while rumqttc's queue is full.
    async fn publish(&self, channel: &str, qos: QoS, payload: Vec<u8>, chat: Option<u32>) {
        let topic = self.topic(channel);
        while let Err(ClientError::TryRequest(_)) = self.try_publish(topic.clone(), qos, payload.clone(), chat) {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    fn chat_payload(&self, k: u32, intended_us: u64) -> Vec<u8> {
        let mut message = SendMessage {
            id: format!("{}-{k}", self.spec.idx),
            to: None,
            conversation_id: None,
            text: intended_us.to_string(),
            reply_to: None,
            kind: None,
            attachment_id: None,
        };
        match &self.spec.dest {
            Dest::User(user) => message.to = user.parse::<uuid::Uuid>().ok().map(UserId),
            Dest::Conversation(c) => message.conversation_id = c.parse::<uuid::Uuid>().ok().map(ConversationId),
            Dest::Room(_) => {}
        }
        serde_json::to_vec(&message).unwrap_or_default()
    }

    /// Sends chat message number `k`, meant to leave at `intended_us`.
    pub async fn send(&self, k: u32, intended_us: u64) {
        self.tracker.sent(self.spec.idx, k, intended_us);
        if !self.sending.load(Relaxed) {
            lock(&self.held).insert(k);
            return;
        }
        self.publish("msg", QoS::AtLeastOnce, self.chat_payload(k, intended_us), Some(k)).await;
    }

    /// A typing signal (QoS 0) into the device's conversation, once it knows it.
    pub async fn typing(&self, start: bool) {
        let conversation = match &self.spec.dest {
            Dest::Conversation(c) => Some(c.clone()),
            Dest::User(_) => lock(&self.conversation).clone(),
            Dest::Room(room) => Some(room.clone()),
        };
        if let Some(c) = conversation {
            let state = if start { "start" } else { "stop" };
            let body = serde_json::json!({"conversation_id": c, "state": state});
            self.publish("typing", QoS::AtMostOnce, body.to_string().into_bytes(), None).await;
        }
    }

    /// A presence change (`away` or `online`).
    pub async fn presence(&self, status: &str) {
        let body = serde_json::json!({"status": status}).to_string().into_bytes();
        self.publish("presence", QoS::AtLeastOnce, body, None).await;
    }

    /// Asks Parley for the events after the last one held without a gap.
    pub fn sync(&self) {
        let after = lock(&self.events).upto;
        let n = self.syncs.fetch_add(1, Relaxed);
        let body = serde_json::json!({"id": format!("sync-{n}"), "after": after, "limit": 1000});
        let _ = self.try_publish(self.topic("sync"), QoS::AtLeastOnce, body.to_string().into_bytes(), None);
    }

    async fn drive(self: Arc<Self>, mut events: EventLoop, stop: CancellationToken) {
        let mut attempt = Instant::now();
        let mut connections = 0u64;
        loop {
            let event = tokio::select! {
                _ = stop.cancelled() => break,
                event = events.poll() => event,
            };
            match event {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    connections += 1;
                    self.connected.store(true, Relaxed);
                    *lock(&self.outbox) = Outbox::default();
                    if connections > 1 {
                        self.tracker.counters.reconnects.fetch_add(1, Relaxed);
                    }
                    if ack.session_present {
                        self.tracker.connected(attempt.elapsed().as_micros() as u64);
                        self.ready.send_modify(|n| *n += 1);
                        self.resumed(false);
                    } else {
                        let _ = self.client.try_subscribe(self.subscription(), QoS::AtLeastOnce);
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    self.tracker.connected(attempt.elapsed().as_micros() as u64);
                    self.ready.send_modify(|n| *n += 1);
                    if connections > 1 {
                        self.resumed(true);
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => self.received(&p),
                Ok(Event::Incoming(Packet::PubAck(ack))) => {
                    let k = lock(&self.outbox).inflight.remove(&ack.pkid);
                    if let Some(k) = k {
                        self.tracker.puback(self.spec.idx, k);
                        if !self.spec.parley() {
                            self.tracker.acked(self.spec.idx, k, 0);
                        }
                    }
                }
                Ok(Event::Outgoing(Outgoing::Publish(pkid))) if pkid != 0 => {
                    let mut outbox = lock(&self.outbox);
                    if let Some(Some(k)) = outbox.order.pop_front() {
                        outbox.inflight.insert(pkid, k);
                    }
                }
                Ok(_) => {}
                Err(_) => {
                    self.connected.store(false, Relaxed);
                    if self.spec.parley() {
                        self.sending.store(false, Relaxed);
                    }
                    let wait = self.spec.backoff_ms + rand::thread_rng().gen_range(0..=self.spec.jitter_ms);
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_millis(wait)) => {}
                    }
                    attempt = Instant::now();
                }
            }
        }
        let _ = self.client.try_disconnect();
        let _ = tokio::time::timeout(Duration::from_millis(200), events.poll()).await;
    }

    /// After a reconnect: ask for what was missed, send again what was not
    /// acknowledged (all of it when the session, and with it rumqttc's
    /// unacknowledged publishes, was lost; else what waited while the device was
    /// away), in order, then let new messages go out at once again.
    fn resumed(self: &Arc<Self>, session_lost: bool) {
        if !self.spec.parley() {
            return;
        }
        self.sync();
        let device = self.clone();
        tokio::spawn(async move {
            let mut next = 0;
            loop {
                let pending: Vec<(u32, u64)> =
                    device.tracker.unacked(device.spec.idx).into_iter().filter(|(k, _)| *k >= next).collect();
                if pending.is_empty() {
                    // Anything sent from here on goes out by itself.
                    device.sending.store(true, Relaxed);
                    break;
                }
                for (k, intended) in pending {
                    let held = lock(&device.held).remove(&k);
                    if session_lost || held {
                        let payload = device.chat_payload(k, intended);
                        device.publish("msg", QoS::AtLeastOnce, payload, Some(k)).await;
                    }
                    next = k + 1;
                }
            }
        });
    }

    fn received(&self, p: &Publish) {
        let channel = p.topic.rsplit('/').next().unwrap_or_default();
        if !self.spec.parley() {
            match (channel, serde_json::from_slice::<SendMessage>(&p.payload)) {
                ("msg", Ok(m)) => self.message(&m.id, &m.text, 0, false),
                _ => {
                    self.tracker.counters.signals.fetch_add(1, Relaxed);
                }
            }
            return;
        }
        match channel {
            "ack" => {
                if let Ok(ack) = serde_json::from_slice::<Ack>(&p.payload) {
                    if let Some((from, k)) = parse_id(&ack.id) {
                        self.tracker.acked(from, k, ack.message_id.0.as_u128());
                    }
                    lock(&self.conversation).get_or_insert_with(|| ack.conversation_id.0.to_string());
                } else if serde_json::from_slice::<AckError>(&p.payload).is_ok() {
                    self.tracker.counters.refused.fetch_add(1, Relaxed);
                }
            }
            "msg" => {
                let Ok(head) = serde_json::from_slice::<Head>(&p.payload) else { return };
                lock(&self.events).add(head.event_seq);
                if head.kind == "message" {
                    if let Ok(m) = serde_json::from_slice::<Message>(&p.payload) {
                        self.message(&m.client_id, &m.text, m.id.0.as_u128(), false);
                    }
                }
            }
            "sync" => self.sync_answer(p),
            _ => {
                self.tracker.counters.signals.fetch_add(1, Relaxed);
                // Receipts, settings, contacts… are events too: hold their numbers.
                if let Ok(head) = serde_json::from_slice::<Head>(&p.payload) {
                    lock(&self.events).add(head.event_seq);
                }
            }
        }
    }

    fn sync_answer(&self, p: &Publish) {
        let Ok(answer) = serde_json::from_slice::<SyncAnswer>(&p.payload) else { return };
        if answer.reset {
            // Nothing to replay: start again from the newest event.
            let mut events = lock(&self.events);
            events.upto = answer.last_seq;
            events.above.clear();
            return;
        }
        for event in &answer.events {
            if !lock(&self.events).add(event.event_seq) || event.kind != "message" {
                continue;
            }
            let data = serde_json::Value::Object(event.data.clone());
            if let Ok(m) = serde_json::from_value::<Message>(data) {
                self.message(&m.client_id, &m.text, m.id.0.as_u128(), true);
            }
        }
        if answer.has_more {
            self.sync();
        }
    }

    fn message(&self, id: &str, text: &str, server: u128, sync: bool) {
        if let (Some((from, k)), Ok(sent_us)) = (parse_id(id), text.parse::<u64>()) {
            self.tracker.delivered(self.spec.idx, from, k, sent_us, server, sync);
        }
    }
}

/// Splits a bench message id `{device}-{k}`.
fn parse_id(id: &str) -> Option<(u32, u32)> {
    let (from, k) = id.split_once('-')?;
    Some((from.parse().ok()?, k.parse().ok()?))
}
