//! The harness for end-to-end tests: a whole Parley on port 0 with a fresh database
//! (SQLite file or a new PostgreSQL database), a real HTTP client and real MQTT
//! clients (rumqttc) talking to it over TCP.
#![allow(dead_code)]

pub mod cluster;
pub mod mosquitto;
pub mod outbox;
pub mod raw;
pub mod v5;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use parley::app::Running;
use parley_config::{DatabaseUrl, Settings};
pub use parley_store::testing::Backend;
use parley_store::testing::TestDatabase;
use rumqttc::{AsyncClient, ConnectionError, Event, MqttOptions, Packet, QoS};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Generates one `#[tokio::test]` per backend for each listed async fn taking a `Backend`.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
              async fn $name() { super::$name(super::common::Backend::Sqlite).await })*
        }
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
              async fn $name() { super::$name(super::common::Backend::Postgres).await })*
        }
    };
}

/// How long any wait in these tests may take before it fails.
pub const DEADLINE: Duration = Duration::from_secs(30);

pub struct TestApp {
    pub running: Option<Running>,
    pub http: String,
    pub mqtt: SocketAddr,
    pub client: reqwest::Client,
    pub settings: Settings,
    _db: TestDatabase,
    _data: tempfile::TempDir,
}

/// A registered, logged-in user.
#[derive(Debug, Clone)]
pub struct TestUser {
    pub id: String,
    pub login: String,
    pub password: String,
    pub access_token: String,
    pub refresh_token: String,
    /// The sign-in the tokens belong to.
    pub session_id: String,
}

impl TestApp {
    /// Starts Parley against a fresh database of `backend`; `None` when PostgreSQL is not configured.
    pub async fn spawn(backend: Backend) -> Option<TestApp> {
        Self::spawn_with(backend, |_| {}).await
    }

    pub async fn spawn_with(backend: Backend, tweak: impl FnOnce(&mut Settings)) -> Option<TestApp> {
        // Failures show the platform's warnings and errors next to the assertion.
        parley::telemetry::init("warn", "text");
        let db = TestDatabase::create(backend).await?;
        let data = tempfile::tempdir().expect("data dir");
        let mut settings = Settings { data_dir: data.path().to_path_buf(), ..Settings::default() };
        settings.database.url = Some(DatabaseUrl::new(db.url.clone()));
        settings.database.max_connections = 5;
        settings.mqtt.listen = "127.0.0.1:0".into();
        settings.http.listen = "127.0.0.1:0".into();
        settings.bus.listen = "127.0.0.1:0".into();
        settings.mqtt.ws_listen = "127.0.0.1:0".into();
        tweak(&mut settings);
        let running = parley::app::start(settings.clone(), CancellationToken::new()).await.expect("parley starts");
        Some(TestApp {
            http: format!("http://{}", running.http_addr.expect("the api runs")),
            mqtt: running.gate_addrs.mqtt.expect("the gate's MQTT listener is on"),
            running: Some(running),
            client: reqwest::Client::new(),
            settings,
            _db: db,
            _data: data,
        })
    }

    /// Starts Parley with mail and SMS delivery going to fakes; `tweak` adjusts the rest.
    pub async fn spawn_with_outbox(
        backend: Backend,
        tweak: impl FnOnce(&mut Settings),
    ) -> Option<(TestApp, outbox::Outbox)> {
        let (outbox, smtp_url, sms_url) = outbox::Outbox::start().await;
        let app = Self::spawn_with(backend, |s| {
            s.delivery.mode = "production".into();
            s.delivery.smtp_url = Some(parley_config::Secret::new(&smtp_url));
            s.delivery.sms_url = Some(sms_url);
            s.delivery.sms_token = Some(parley_config::Secret::new("sms-provider-token"));
            tweak(s);
        })
        .await?;
        Some((app, outbox))
    }

    /// Any request, with optional bearer token, JSON body and extra headers; the status, headers and JSON answer.
    pub async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> (u16, reqwest::header::HeaderMap, Value) {
        let mut req = self.client.request(method, format!("{}{path}", self.http));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req.send().await.expect("http");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        (status, headers, resp.json().await.unwrap_or(Value::Null))
    }

    /// The database this deployment uses.
    pub fn database_url(&self) -> &str {
        &self._db.url
    }

    pub fn running(&self) -> &Running {
        self.running.as_ref().expect("running")
    }

    /// The gate of this deployment.
    pub fn gate(&self) -> &parley_broker::gate::GateHandle {
        self.running().gate.as_ref().expect("a gate runs in this process")
    }

    pub async fn stop(mut self) {
        if let Some(r) = self.running.take() {
            r.stop().await.expect("clean stop");
        }
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let resp = self.client.post(format!("{}{path}", self.http)).json(&body).send().await.expect("http");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        let mut req = self.client.get(format!("{}{path}", self.http));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.expect("http");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// Any request as `user`, with an optional JSON body; the status and the JSON answer.
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        user: &TestUser,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self.client.request(method, format!("{}{path}", self.http)).bearer_auth(&user.access_token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("http");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// Two users with a connected device each: (alice, bob, alice's device, bob's device).
    pub async fn pair(&self) -> (TestUser, TestUser, Device, Device) {
        let alice = self.user("alice").await;
        let bob = self.user("bob").await;
        let a = self.device(&alice, "alice-phone").await;
        let b = self.device(&bob, "bob-phone").await;
        (alice, bob, a, b)
    }

    /// Registers `username` with a password, then logs in by username.
    pub async fn user(&self, username: &str) -> TestUser {
        let password = format!("pw-{username}-long-enough");
        let (status, body) = self.post("/v1/auth/register", json!({"username": username, "password": password})).await;
        assert_eq!(status, 201, "register {username}: {body}");
        self.login(username, &password).await
    }

    pub async fn login(&self, login: &str, password: &str) -> TestUser {
        let (status, body) = self.post("/v1/auth/login", json!({"login": login, "password": password})).await;
        assert_eq!(status, 200, "login {login}: {body}");
        TestUser {
            id: body["user"]["id"].as_str().expect("user id").to_string(),
            login: login.to_string(),
            password: password.to_string(),
            access_token: body["access_token"].as_str().expect("access token").to_string(),
            refresh_token: body["refresh_token"].as_str().expect("refresh token").to_string(),
            session_id: body["session_id"].as_str().expect("session id").to_string(),
        }
    }

    pub fn options(&self, client_id: &str, username: &str, password: &str) -> MqttOptions {
        options_at(self.mqtt, client_id, username, password)
    }

    /// A connected 3.1.1 device of `user`, subscribed to all its downlinks.
    pub async fn device(&self, user: &TestUser, client_id: &str) -> Device {
        device_at(self.mqtt, user, client_id).await
    }

    /// A token for `user`'s sign-in signed with this deployment's key, issued at `issued_at` (Unix seconds).
    pub fn token_issued_at(&self, user: &TestUser, issued_at: i64) -> String {
        let key = parley_domain::load_or_create_signing_key(&self.settings.data_dir.join("signing.key")).expect("key");
        let tokens = parley_domain::Tokens::new(&key, token_settings());
        tokens.issue_access(user.id.parse().expect("uuid"), user.session_id.parse().expect("uuid"), issued_at)
    }

    /// Stored messages, counted by the database itself.
    pub async fn message_rows(&self) -> i64 {
        self.running().store.count_messages().await.expect("count")
    }
}

/// A device: a rumqttc client whose event loop runs in its own task and
/// forwards every incoming packet here.
pub struct Device {
    pub client: AsyncClient,
    /// What CONNACK said about an existing session.
    pub session_present: bool,
    events: mpsc::UnboundedReceiver<Packet>,
    pending: VecDeque<Packet>,
    pub closed: tokio::sync::watch::Receiver<Option<String>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Device {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Device {
    /// Connects and waits for CONNACK; a refusal is returned as the error.
    pub async fn connect(options: MqttOptions) -> Result<Device, ConnectionError> {
        let (client, mut eventloop) = AsyncClient::new(options, 256);
        let connack = tokio::time::timeout(DEADLINE, async {
            loop {
                match eventloop.poll().await? {
                    Event::Incoming(Packet::ConnAck(ack)) => return Ok::<_, ConnectionError>(ack),
                    _ => continue,
                }
            }
        })
        .await
        .expect("CONNACK in time")?;
        assert_eq!(connack.code, rumqttc::ConnectReturnCode::Success);
        let (tx, events) = mpsc::unbounded_channel();
        let (closed_tx, closed) = tokio::sync::watch::channel(None);
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(p)) => {
                        if tx.send(p).is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        let _ = closed_tx.send(Some(e.to_string()));
                        return;
                    }
                }
            }
        });
        Ok(Device { client, session_present: connack.session_present, events, pending: VecDeque::new(), closed, task })
    }

    /// Waits until the gate closes the connection; returns why the client saw it end.
    pub async fn closed_by_server(&self) -> String {
        let mut closed = self.closed.clone();
        let seen = tokio::time::timeout(DEADLINE, closed.wait_for(Option::is_some)).await.expect("closed in time");
        let why = seen.expect("watch").clone().unwrap_or_default();
        why
    }

    /// The next incoming packet matching `pick`, keeping the others for later calls.
    pub async fn next_matching<T>(&mut self, mut pick: impl FnMut(&Packet) -> Option<T>) -> T {
        if let Some(pos) = self.pending.iter().position(|p| pick(p).is_some()) {
            let p = self.pending.remove(pos).expect("pending");
            return pick(&p).expect("picked");
        }
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let p = tokio::time::timeout_at(deadline, self.events.recv())
                .await
                .expect("expected packet did not arrive in time")
                .expect("device event loop ended");
            if let Some(t) = pick(&p) {
                return t;
            }
            self.pending.push_back(p);
        }
    }

    /// The next PUBLISH on `topic`, as JSON.
    pub async fn next_on(&mut self, topic: &str) -> Value {
        self.next_matching(|p| match p {
            Packet::Publish(p) if p.topic == topic => Some(serde_json::from_slice(&p.payload).expect("json payload")),
            _ => None,
        })
        .await
    }

    /// The next message event on `to/{uid}/msg` sent by `sender` (a device also
    /// receives its own user's messages, for multi-device sync).
    pub async fn next_message_from(&mut self, uid: &str, sender: &str) -> Value {
        let topic = format!("to/{uid}/msg");
        self.next_matching(|p| match p {
            Packet::Publish(p) if p.topic == topic => {
                let v: Value = serde_json::from_slice(&p.payload).expect("json payload");
                (v["sender_id"] == sender).then_some(v)
            }
            _ => None,
        })
        .await
    }

    /// Whether anything arrives on `topic` within `wait`.
    pub async fn nothing_on(&mut self, topic: &str, wait: Duration) -> bool {
        self.nothing_matching(|p| matches!(p, Packet::Publish(p) if p.topic == topic), wait).await
    }

    /// Whether no packet for which `hit` holds arrives (or is waiting) within `wait`.
    pub async fn nothing_matching(&mut self, mut hit: impl FnMut(&Packet) -> bool, wait: Duration) -> bool {
        if self.pending.iter().any(&mut hit) {
            return false;
        }
        let deadline = tokio::time::Instant::now() + wait;
        while let Ok(Some(p)) = tokio::time::timeout_at(deadline, self.events.recv()).await {
            let found = hit(&p);
            self.pending.push_back(p);
            if found {
                return false;
            }
        }
        true
    }

    /// Subscribes at QoS 1 and waits for the SUBACK; returns its return codes.
    pub async fn subscribe(&mut self, filter: &str) -> Vec<rumqttc::SubscribeReasonCode> {
        self.client.subscribe(filter, QoS::AtLeastOnce).await.expect("subscribe");
        self.next_matching(|p| match p {
            Packet::SubAck(a) => Some(a.return_codes.clone()),
            _ => None,
        })
        .await
    }

    pub async fn publish_json(&self, topic: &str, body: &Value) {
        self.client.publish(topic, QoS::AtLeastOnce, false, body.to_string()).await.expect("publish");
    }

    pub async fn publish_raw(&self, topic: &str, body: &[u8]) {
        self.client.publish(topic, QoS::AtLeastOnce, false, body.to_vec()).await.expect("publish");
    }
}

/// Options for a device connecting to the gate at `gate`.
pub fn options_at(gate: SocketAddr, client_id: &str, username: &str, password: &str) -> MqttOptions {
    let mut o = MqttOptions::new(client_id, gate.ip().to_string(), gate.port());
    o.set_credentials(username, password);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_max_packet_size(1024 * 1024, 1024 * 1024);
    o
}

/// A connected 3.1.1 device of `user` on the gate at `gate`, subscribed to all its downlinks.
pub async fn device_at(gate: SocketAddr, user: &TestUser, client_id: &str) -> Device {
    let mut d =
        Device::connect(options_at(gate, client_id, &user.id, &user.access_token)).await.expect("device connects");
    d.subscribe(&format!("to/{}/#", user.id)).await;
    d
}

/// The token settings the test deployments use (the defaults).
pub fn token_settings() -> parley_domain::TokenSettings {
    let d = Settings::default().auth;
    parley_domain::TokenSettings {
        issuer: d.issuer,
        audience: d.audience,
        access_ttl: Duration::from_secs(d.access_token_ttl_secs),
        refresh_ttl: Duration::from_secs(d.refresh_token_ttl_secs),
    }
}

/// Waits until `done` holds, polling every 20 ms; fails naming `what` after [`DEADLINE`].
pub async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Unix seconds now.
pub fn now_secs() -> i64 {
    chrono::Utc::now().timestamp()
}
