//! Starting and stopping the platform's parts in one process: store, bus (the
//! embedded one, or an external broker), gate, bridge, HTTP API and scheduler, all
//! tied to one shutdown token. `serve --only` runs a subset of them.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use parley_api::{AppState, Publisher, ReadinessCheck};
use parley_bridge::{BridgeStats, Link};
use parley_broker::bus::{self, BusProbe};
use parley_broker::gate::{self, GateHandle, GateListener, GateSettings, Kind};
use parley_config::Settings;
use parley_domain::{
    Auth, AuthPolicy, ContactPolicy, Delivery, DeliveryConfig, Domain, Limits, Rate, Store, TokenSettings, Tokens,
};
use parley_wire::bus::BusEndpoint;
use parley_wire::payloads::Outgoing;
use secrecy::ExposeSecret;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Which parts a process runs. The scheduler runs with the api.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parts {
    pub gate: bool,
    pub bridge: bool,
    pub api: bool,
}

impl Parts {
    /// Everything, in one process (`parley serve`).
    pub const ALL: Parts = Parts { gate: true, bridge: true, api: true };
    pub const GATE: Parts = Parts { gate: true, bridge: false, api: false };
    pub const BRIDGE: Parts = Parts { gate: false, bridge: true, api: false };
    pub const API: Parts = Parts { gate: false, bridge: false, api: true };

    pub fn is_all(self) -> bool {
        self == Parts::ALL
    }

    pub fn is_empty(self) -> bool {
        !(self.gate || self.bridge || self.api)
    }
}

impl fmt::Display for Parts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = [(self.gate, "gate"), (self.bridge, "bridge"), (self.api, "api")]
            .into_iter()
            .filter_map(|(on, name)| on.then_some(name))
            .collect();
        f.write_str(&names.join(","))
    }
}

/// Where the gate listens, per transport (`None` when turned off).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GateAddrs {
    pub mqtt: Option<SocketAddr>,
    pub mqtts: Option<SocketAddr>,
    pub ws: Option<SocketAddr>,
    pub wss: Option<SocketAddr>,
}

/// The platform (or the parts of it this process runs), running.
pub struct Running {
    pub parts: Parts,
    /// Where devices connect, when this process runs the gate.
    pub gate_addrs: GateAddrs,
    /// Where the HTTP API listens, when this process runs the api.
    pub http_addr: Option<SocketAddr>,
    pub store: Store,
    pub gate: Option<GateHandle>,
    pub bridge: Option<Arc<BridgeStats>>,
    shutdown: CancellationToken,
    parts_running: JoinSet<(&'static str, anyhow::Result<()>)>,
}

/// Opens the database and applies migrations (what `parley migrate` does).
pub async fn open_store(settings: &Settings) -> anyhow::Result<Store> {
    std::fs::create_dir_all(&settings.data_dir)
        .with_context(|| format!("cannot create data_dir {}", settings.data_dir.display()))?;
    let store = Store::connect(settings.database_url().expose_secret(), settings.database.max_connections)
        .await
        .with_context(|| format!("cannot open the database {}", settings.database_url_for_logs()))?;
    store.migrate().await.context("database migration failed")?;
    Ok(store)
}

/// Sets the role of the account named `login` (the operator's way to make the first admin).
pub async fn set_role(
    settings: &Settings,
    login: &str,
    role: parley_wire::Role,
    verified: bool,
) -> anyhow::Result<parley_domain::StoreUser> {
    let store = open_store(settings).await?;
    let result = parley_domain::set_role_by_login(&store, login, role, verified).await;
    store.close().await;
    result.map_err(|e| anyhow!("{}", e.public_message()))
}

async fn bind(addr: &str, setting: &str, env: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::AddrInUse {
            anyhow!("{addr} is already in use: set {setting} in the config file or {env} to a free address")
        } else {
            anyhow!("cannot listen on {addr} ({setting}): {e}")
        }
    })
}

/// Starts every part; they run until `shutdown` is cancelled or one of them fails.
pub async fn start(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<Running> {
    start_parts(settings, Parts::ALL, shutdown).await
}

/// Starts the given parts. Apart from all of them, they need an external bus
/// (`bus.url`): other processes cannot reach an embedded one.
pub async fn start_parts(settings: Settings, parts: Parts, shutdown: CancellationToken) -> anyhow::Result<Running> {
    if parts.is_empty() {
        bail!("nothing to run: --only names gate, bridge or api");
    }
    let external = settings.external_bus()?;
    if external.is_none() && !parts.is_all() {
        bail!(
            "--only {parts} needs an external bus: set bus.url (PARLEY_BUS__URL) to an MQTT broker every \
             process reaches; the embedded bus lives inside one process and the others could not reach it"
        );
    }
    if !parts.is_all() && settings.auth.signing_key.is_none() && (parts.gate || parts.api) {
        tracing::warn!(
            key_file = %settings.data_dir.join("signing.key").display(),
            "auth.signing_key is unset: this process signs or checks tokens with the key file in data_dir; \
             every gate and api must use the same key (set auth.signing_key, or share data_dir)"
        );
    }
    let store = open_store(&settings).await?;
    tracing::info!(backend = store.backend_name(), database = %settings.database_url_for_logs(), "database ready");
    // Every connection opened and warmed now, not by the first messages after a start.
    match store.warm_up().await {
        Ok(0) => {}
        Ok(connections) => tracing::info!(connections, "database connections warmed up"),
        Err(e) => tracing::warn!(error = %e, "could not open and warm every database connection"),
    }
    let key = match &settings.auth.signing_key {
        Some(key) => key.expose().as_bytes().to_vec(),
        None => parley_domain::load_or_create_signing_key(&settings.data_dir.join("signing.key"))
            .context("cannot read or create the signing key in data_dir")?,
    };
    if key.len() < 32 {
        return Err(anyhow!("auth.signing_key must be at least 32 bytes"));
    }
    let tokens = Tokens::new(
        &key,
        TokenSettings {
            issuer: settings.auth.issuer.clone(),
            audience: settings.auth.audience.clone(),
            access_ttl: Duration::from_secs(settings.auth.access_token_ttl_secs),
            refresh_ttl: Duration::from_secs(settings.auth.refresh_token_ttl_secs),
        },
    );
    let auth = auth(&settings).context("invalid [delivery] settings")?;
    let domain = Domain::new(store.clone(), tokens.clone(), limits(&settings.messages, &settings.data_dir), auth);

    let gate_listeners = match parts.gate {
        true => Some((GateSettings::from_config(&settings.mqtt)?, bind_gate(&settings.mqtt).await?)),
        false => None,
    };
    let gate_addrs = gate_listeners.as_ref().map(|(_, (_, addrs))| *addrs).unwrap_or_default();
    let http =
        if parts.api { Some(bind(&settings.http.listen, "http.listen", "PARLEY_HTTP__LISTEN").await?) } else { None };
    let http_addr = http.as_ref().map(TcpListener::local_addr).transpose()?;
    let bus = match &external {
        Some(external) => {
            let bus = BusEndpoint {
                host: external.host.clone(),
                port: external.port,
                credentials: external.credentials.as_ref().map(|(u, p)| (u.clone(), p.expose_secret().to_string())),
            };
            bus::reach_external(&bus, Duration::from_secs(settings.bus.start_timeout_secs)).await?;
            bus
        }
        None => bus::start_embedded(&settings.bus.listen).await?,
    };

    // On the embedded bus every part runs here: the gate, the bridge and the API
    // hand each other uplinks and downlinks on the lane (wire::bus::lane).
    let (mut gate_lane, mut bridge_lane) = match external {
        Some(_) => (None, None),
        None => {
            let (gate, bridge) = parley_wire::bus::lane();
            (Some(gate), Some(bridge))
        }
    };
    let api_lane = bridge_lane.as_ref().map(|lane| lane.downlinks.clone());
    let mut running = JoinSet::new();
    let bridge = if parts.bridge {
        let stats = Arc::new(BridgeStats::default());
        {
            let (domain, shutdown, handle) = (domain.clone(), shutdown.clone(), stats.clone());
            let link = match bridge_lane.take() {
                Some(lane) => Link::Lane(lane),
                None => Link::Bus(bus.clone()),
            };
            running.spawn(async move { ("bridge", parley_bridge::run(domain, link, handle, shutdown).await) });
        }
        // Uplinks the bus takes before the bridges subscribed would have no reader.
        if !stats.wait_subscribed(Duration::from_secs(settings.bus.start_timeout_secs.max(5))).await {
            bail!("the bridge could not subscribe on the bus at {bus}; see the log for why");
        }
        Some(stats)
    } else {
        None
    };
    let gate = match gate_listeners {
        None => None,
        Some((mut gate_settings, (listeners, _))) => {
            let (gate_tx, gate_rx) = tokio::sync::oneshot::channel();
            gate_settings.embedded_bus = external.is_none();
            let (domain, bus, shutdown, lane) = (domain.clone(), bus.clone(), shutdown.clone(), gate_lane.take());
            running.spawn(async move {
                let ready = move |h| {
                    let _ = gate_tx.send(h);
                };
                ("gate", gate::serve(listeners, gate_settings, domain, &bus, lane, shutdown, ready).await)
            });
            Some(gate_rx.await.map_err(|_| anyhow!("the gate stopped before it started"))?)
        }
    };
    if let Some(http) = http {
        let state = api_state(&settings, &domain, &bus, api_lane, gate_addrs.mqtt, gate.clone(), &shutdown);
        let stop = shutdown.clone();
        running.spawn(async move { ("api", parley_api::serve(http, state, stop).await.map_err(Into::into)) });
        let (domain, shutdown, retention) = (domain.clone(), shutdown.clone(), settings.messages.event_retention_days);
        running.spawn(async move { ("scheduler", crate::scheduler::run(domain, retention, shutdown).await) });
    }
    let contact_policy = domain.limits().contact_policy.as_str();
    tracing::info!(
        parts = %parts,
        mqtt_addr = %shown(gate_addrs.mqtt),
        ws_addr = %shown(gate_addrs.ws),
        mqtts_addr = %shown(gate_addrs.mqtts),
        wss_addr = %shown(gate_addrs.wss),
        http_addr = %shown(http_addr),
        bus = %bus,
        contact_policy,
        "parley is up"
    );
    Ok(Running { parts, gate_addrs, http_addr, store, gate, bridge, shutdown, parts_running: running })
}

/// The api's state: readiness proves the bus with a round trip and, when the gate
/// runs in this process, that it answers a CONNECT.
fn api_state(
    settings: &Settings,
    domain: &Domain,
    bus: &BusEndpoint,
    lane: Option<mpsc::Sender<Vec<Outgoing>>>,
    mqtt_addr: Option<SocketAddr>,
    gate: Option<GateHandle>,
    shutdown: &CancellationToken,
) -> AppState {
    let probe = Arc::new(BusProbe::start(bus, shutdown.clone()));
    let bus_check: ReadinessCheck = Arc::new(move || {
        let probe = probe.clone();
        Box::pin(async move { probe.check(Duration::from_secs(2)).await.map(|_| ()) })
    });
    let mut readiness = vec![("bus", bus_check)];
    if let Some(mqtt_addr) = mqtt_addr {
        let gate_tokens = domain.tokens().clone();
        let gate_check: ReadinessCheck = Arc::new(move || {
            let tokens = gate_tokens.clone();
            Box::pin(async move { gate::self_check(mqtt_addr, &tokens, Duration::from_secs(2)).await })
        });
        readiness.push(("gate", gate_check));
    }
    let publisher: Publisher = match lane {
        Some(lane) => Arc::new(move |outgoing| {
            let lane = lane.clone();
            Box::pin(async move {
                if lane.send(outgoing).await.is_err() {
                    tracing::debug!("the gate has stopped; downlinks dropped");
                }
            })
        }),
        None => {
            let bus_client = bus::publisher(bus, "api", shutdown.clone());
            Arc::new(move |outgoing| {
                let client = bus_client.clone();
                Box::pin(async move {
                    for o in outgoing {
                        if let Err(e) = client.publish_bytes(o.topic(), o.mqtt_qos(), false, o.payload()).await {
                            tracing::error!(error = %e, "could not hand a downlink to the bus");
                        }
                    }
                })
            })
        }
    };
    AppState {
        domain: domain.clone(),
        readiness: Arc::new(readiness),
        publisher,
        cookie_secure: settings.auth.cookie_secure,
        trust_forwarded_for: settings.http.trust_forwarded_for,
        metrics: gate.map(|gate| -> parley_api::MetricsSource { Arc::new(move || gate.prometheus()) }),
    }
}

/// Binds the gate's listeners that are turned on (a non-empty address); at least one must be.
async fn bind_gate(mqtt: &parley_config::MqttSettings) -> anyhow::Result<(Vec<GateListener>, GateAddrs)> {
    let mut listeners = Vec::new();
    let mut addrs = GateAddrs::default();
    let wanted = [
        (&mqtt.listen, Kind::Mqtt, "mqtt.listen", "PARLEY_MQTT__LISTEN", &mut addrs.mqtt),
        (&mqtt.tls_listen, Kind::Mqtts, "mqtt.tls_listen", "PARLEY_MQTT__TLS_LISTEN", &mut addrs.mqtts),
        (&mqtt.ws_listen, Kind::Ws, "mqtt.ws_listen", "PARLEY_MQTT__WS_LISTEN", &mut addrs.ws),
        (&mqtt.wss_listen, Kind::Wss, "mqtt.wss_listen", "PARLEY_MQTT__WSS_LISTEN", &mut addrs.wss),
    ];
    for (addr, kind, setting, env, slot) in wanted {
        if addr.is_empty() {
            continue;
        }
        let listener = bind(addr, setting, env).await?;
        *slot = Some(listener.local_addr()?);
        listeners.push(GateListener { listener, kind });
    }
    if listeners.is_empty() {
        return Err(anyhow!(
            "every gate listener is off: set mqtt.listen, mqtt.tls_listen, mqtt.ws_listen or mqtt.wss_listen"
        ));
    }
    Ok((listeners, addrs))
}

fn shown(addr: Option<SocketAddr>) -> String {
    addr.map_or_else(|| "-".to_string(), |a| a.to_string())
}

impl Running {
    /// Waits until a part stops (or shutdown is requested), then stops the others.
    /// Returns the first part's failure, naming it.
    pub async fn wait(mut self) -> anyhow::Result<()> {
        let mut failure = None;
        tokio::select! {
            biased;
            _ = self.shutdown.cancelled() => {}
            Some(first) = self.parts_running.join_next() => {
                failure = Some(describe(first));
            }
        }
        // Parts stop on their own once shutdown was requested; before that, stopping is a failure.
        let requested = self.shutdown.is_cancelled();
        self.shutdown.cancel();
        while let Some(next) = self.parts_running.join_next().await {
            if let Err(e) = describe(next) {
                tracing::error!(error = %e, "a part failed while stopping");
            }
        }
        self.store.close().await;
        match failure {
            Some(Err(e)) => Err(e),
            Some(Ok(name)) if !requested => Err(anyhow!("{name} stopped unexpectedly")),
            _ => Ok(()),
        }
    }

    /// Requests shutdown and waits for every part to stop.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.wait().await
    }
}

fn describe(
    joined: Result<(&'static str, anyhow::Result<()>), tokio::task::JoinError>,
) -> anyhow::Result<&'static str> {
    match joined {
        Ok((name, Ok(()))) => {
            tracing::info!(part = name, "stopped");
            Ok(name)
        }
        Ok((name, Err(e))) => Err(e.context(format!("{name} failed"))),
        Err(e) => Err(anyhow!("a part panicked: {e}")),
    }
}

fn limits(m: &parley_config::MessageSettings, data_dir: &std::path::Path) -> Limits {
    Limits {
        max_text_chars: m.max_text_chars,
        user_rate: Rate { per_sec: m.user_rate_per_sec, burst: m.user_burst },
        conversation_rate: Rate { per_sec: m.conversation_rate_per_sec, burst: m.conversation_burst },
        uploads_dir: data_dir.join("uploads"),
        max_upload_bytes: m.max_upload_bytes,
        contact_policy: match m.contact_policy {
            parley_config::ContactPolicy::Open => ContactPolicy::Open,
            parley_config::ContactPolicy::Contacts => ContactPolicy::Contacts,
            parley_config::ContactPolicy::Consulted => ContactPolicy::Consulted,
        },
    }
}

fn auth(settings: &Settings) -> anyhow::Result<Auth> {
    let a = &settings.auth;
    let d = &settings.delivery;
    let production = match d.mode.as_str() {
        "production" => true,
        "development" => false,
        other => return Err(anyhow!("delivery.mode is `development` or `production`, not `{other}`")),
    };
    let delivery = Delivery::new(&DeliveryConfig {
        production,
        smtp_url: d.smtp_url.as_ref().map(|s| s.expose().to_string()),
        mail_from: d.mail_from.clone(),
        sms_url: d.sms_url.clone(),
        sms_token: d.sms_token.as_ref().map(|s| s.expose().to_string()),
    })?;
    let secs = Duration::from_secs;
    let policy = AuthPolicy {
        session_lifetime: secs(a.session_lifetime_secs),
        reuse_grace: secs(a.refresh_reuse_grace_secs),
        code_ttl: secs(a.code_ttl_secs),
        code_max_attempts: a.code_max_attempts.max(1),
        code_resend_interval: secs(a.code_resend_interval_secs),
        codes_per_identifier_per_hour: a.codes_per_identifier_per_hour.max(1),
        codes_per_address_per_hour: a.codes_per_address_per_hour.max(1),
        login_failures_per_account: a.login_failures_per_account.max(1),
        login_failures_per_address: a.login_failures_per_address.max(1),
        login_window: secs(a.login_window_secs),
        device_secret_lifetime: secs(a.device_secret_lifetime_secs),
        unverified_release: secs(a.unverified_release_secs),
    };
    Ok(Auth { policy, delivery })
}
