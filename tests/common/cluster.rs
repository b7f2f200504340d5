//! Parley scaled out in one test process: a real Mosquitto as the bus, gates and
//! bridges each running as their own part set (`parley serve --only …`), and an
//! api, all on port 0 and sharing one fresh database.

use std::net::SocketAddr;

use parley::app::{Parts, Running};
use parley_broker::gate::GateHandle;
use parley_config::{BusUrl, DatabaseUrl, Secret, Settings};
use parley_store::testing::TestDatabase;
use tokio_util::sync::CancellationToken;

use super::mosquitto::Mosquitto;
use super::{device_at, Backend, Device, TestApp, TestUser};

pub struct TestCluster {
    /// The api: HTTP helpers (`user`, `send`, …) work as on a whole platform, and its
    /// `mqtt` is the first gate's address.
    pub app: TestApp,
    pub gates: Vec<Running>,
    pub bridges: Vec<Running>,
    pub bus: Mosquitto,
}

/// Settings of one part of a cluster on `bus`, sharing `db` and `data`.
pub fn part_settings(db: &TestDatabase, data: &std::path::Path, bus: &str) -> Settings {
    let mut s = Settings { data_dir: data.to_path_buf(), ..Settings::default() };
    s.database.url = Some(DatabaseUrl::new(db.url.clone()));
    s.database.max_connections = 3;
    s.mqtt.listen = "127.0.0.1:0".into();
    s.mqtt.ws_listen = "127.0.0.1:0".into();
    s.http.listen = "127.0.0.1:0".into();
    s.bus.url = Some(BusUrl::new(bus));
    s.bus.start_timeout_secs = 10;
    // Every gate and the api must sign and check tokens with one key.
    s.auth.signing_key = Some(Secret::new("scale-out-test-signing-key-of-enough-bytes"));
    s
}

impl TestCluster {
    /// One Mosquitto, then `bridges` bridges, `gates` gates (`gate-0`, `gate-1`, …) and
    /// an api. `None` when PostgreSQL is not configured or mosquitto is not installed.
    pub async fn spawn(backend: Backend, gates: usize, bridges: usize) -> Option<TestCluster> {
        parley::telemetry::init("warn", "text");
        let bus = Mosquitto::start()?;
        let db = TestDatabase::create(backend).await?;
        let data = tempfile::tempdir().expect("data dir");
        let settings = part_settings(&db, data.path(), &bus.url(None));
        let start = |parts: Parts, settings: Settings| async move {
            parley::app::start_parts(settings, parts, CancellationToken::new()).await.expect("part starts")
        };
        let mut running_bridges = Vec::new();
        for _ in 0..bridges {
            running_bridges.push(start(Parts::BRIDGE, settings.clone()).await);
        }
        let mut running_gates = Vec::new();
        for i in 0..gates {
            let mut s = settings.clone();
            s.mqtt.node_id = format!("gate-{i}");
            running_gates.push(start(Parts::GATE, s).await);
        }
        let api = start(Parts::API, settings.clone()).await;
        let app = TestApp {
            http: format!("http://{}", api.http_addr.expect("the api listens")),
            mqtt: running_gates.first().and_then(|g| g.gate_addrs.mqtt).expect("a cluster has a gate"),
            running: Some(api),
            client: reqwest::Client::new(),
            settings,
            _db: db,
            _data: data,
        };
        Some(TestCluster { app, gates: running_gates, bridges: running_bridges, bus })
    }

    pub fn gate(&self, i: usize) -> &GateHandle {
        self.gates[i].gate.as_ref().expect("a gate")
    }

    pub fn gate_addr(&self, i: usize) -> SocketAddr {
        self.gates[i].gate_addrs.mqtt.expect("a gate listens")
    }

    /// A connected device of `user` on gate `i`, subscribed to all its downlinks.
    pub async fn device_on(&self, i: usize, user: &TestUser, client_id: &str) -> Device {
        device_at(self.gate_addr(i), user, client_id).await
    }

    /// Uplinks (and presence reports) each bridge has handled.
    pub fn bridge_work(&self) -> Vec<u64> {
        self.bridges.iter().map(|b| b.bridge.as_ref().expect("a bridge").uplinks_handled()).collect()
    }

    /// A plain MQTT client of the bus itself, as a gate or a bridge would be.
    pub async fn bus_client(&self, id: &str) -> Device {
        let mut o = rumqttc::MqttOptions::new(id, "127.0.0.1", self.bus.port);
        o.set_keep_alive(std::time::Duration::from_secs(30));
        Device::connect(o).await.expect("bus client connects")
    }

    /// Stops every part cleanly (each must stop without error).
    pub async fn stop(self) {
        for part in self.gates.into_iter().chain(self.bridges) {
            part.stop().await.expect("clean stop");
        }
        self.app.stop().await;
    }
}
