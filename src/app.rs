//! Starting and stopping the whole platform in one process: store, embedded bus,
//! gate, bridge, HTTP API and scheduler, all tied to one shutdown token.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};
use parley_api::{AppState, Publisher, ReadinessCheck};
use parley_broker::bus::{self, BusProbe};
use parley_broker::gate::{self, GateHandle, GateListener, GateSettings, Kind};
use parley_config::Settings;
use parley_domain::{
    Auth, AuthPolicy, ContactPolicy, Delivery, DeliveryConfig, Domain, Limits, Rate, Store, TokenSettings, Tokens,
};
use secrecy::ExposeSecret;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Where the gate listens, per transport (`None` when turned off).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GateAddrs {
    pub mqtt: Option<SocketAddr>,
    pub mqtts: Option<SocketAddr>,
    pub ws: Option<SocketAddr>,
    pub wss: Option<SocketAddr>,
}

/// The platform, running.
pub struct Running {
    pub gate_addrs: GateAddrs,
    pub http_addr: SocketAddr,
    pub store: Store,
    pub gate: GateHandle,
    shutdown: CancellationToken,
    parts: JoinSet<(&'static str, anyhow::Result<()>)>,
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

/// Starts every part; they run until `shutdown` is cancelled or one of them fails.
pub async fn start(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<Running> {
    let store = open_store(&settings).await?;
    tracing::info!(backend = store.backend_name(), database = %settings.database_url_for_logs(), "database ready");
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

    let gate_settings = GateSettings::from_config(&settings.mqtt)?;
    let (listeners, gate_addrs) = bind_gate(&settings.mqtt).await?;
    let http = bind(&settings.http.listen, "http.listen", "PARLEY_HTTP__LISTEN").await?;
    let http_addr = http.local_addr()?;
    let bus_listen = settings.bus.listen.clone();
    let bus = tokio::task::spawn_blocking(move || bus::start_embedded(&bus_listen)).await??;

    let mut parts = JoinSet::new();
    let (gate_tx, gate_rx) = tokio::sync::oneshot::channel();
    {
        let (domain, bus, shutdown) = (domain.clone(), bus.clone(), shutdown.clone());
        parts.spawn(async move {
            let ready = move |h| {
                let _ = gate_tx.send(h);
            };
            ("gate", gate::serve(listeners, gate_settings, domain, &bus, shutdown, ready).await)
        });
    }
    {
        let (domain, bus, shutdown) = (domain.clone(), bus.clone(), shutdown.clone());
        parts.spawn(async move { ("bridge", parley_bridge::run(domain, &bus, shutdown).await) });
    }
    let probe = Arc::new(BusProbe::start(&bus, shutdown.clone()));
    let bus_check: ReadinessCheck = Arc::new(move || {
        let probe = probe.clone();
        Box::pin(async move { probe.check(Duration::from_secs(2)).await.map(|_| ()) })
    });
    let mut readiness = vec![("bus", bus_check)];
    if let Some(mqtt_addr) = gate_addrs.mqtt {
        let gate_tokens = domain.tokens().clone();
        let gate_check: ReadinessCheck = Arc::new(move || {
            let tokens = gate_tokens.clone();
            Box::pin(async move { gate::self_check(mqtt_addr, &tokens, Duration::from_secs(2)).await })
        });
        readiness.push(("gate", gate_check));
    }
    let bus_client = bus::publisher(&bus, "api", shutdown.clone());
    let publisher: Publisher = Arc::new(move |outgoing| {
        let client = bus_client.clone();
        Box::pin(async move {
            for o in outgoing {
                if let Err(e) = client.publish(o.topic(), o.mqtt_qos(), false, o.payload()).await {
                    tracing::error!(error = %e, "could not hand a downlink to the bus");
                }
            }
        })
    });
    let state = AppState {
        domain: domain.clone(),
        readiness: Arc::new(readiness),
        publisher,
        cookie_secure: settings.auth.cookie_secure,
        trust_forwarded_for: settings.http.trust_forwarded_for,
    };
    {
        let shutdown = shutdown.clone();
        parts.spawn(async move { ("api", parley_api::serve(http, state, shutdown).await.map_err(Into::into)) });
    }
    {
        let (domain, shutdown, retention) = (domain.clone(), shutdown.clone(), settings.messages.event_retention_days);
        parts.spawn(async move { ("scheduler", crate::scheduler::run(domain, retention, shutdown).await) });
    }
    let gate = gate_rx.await.map_err(|_| anyhow!("the gate stopped before it started"))?;
    let contact_policy = domain.limits().contact_policy.as_str();
    tracing::info!(gate = ?gate_addrs, %http_addr, contact_policy, "parley is up");
    Ok(Running { gate_addrs, http_addr, store, gate, shutdown, parts })
}

impl Running {
    /// Waits until a part stops (or shutdown is requested), then stops the others.
    /// Returns the first part's failure, naming it.
    pub async fn wait(mut self) -> anyhow::Result<()> {
        let mut failure = None;
        tokio::select! {
            biased;
            _ = self.shutdown.cancelled() => {}
            Some(first) = self.parts.join_next() => {
                failure = Some(describe(first));
            }
        }
        // Parts stop on their own once shutdown was requested; before that, stopping is a failure.
        let requested = self.shutdown.is_cancelled();
        self.shutdown.cancel();
        while let Some(next) = self.parts.join_next().await {
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
