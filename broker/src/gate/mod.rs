//! The gate: Parley's own MQTT server for devices (3.1.1 and 5 over TCP, TLS,
//! WebSocket and WebSocket over TLS). It authenticates each CONNECT with the access token, enforces the per-user ACL,
//! forwards allowed uplinks to the bus and delivers downlinks from the bus to the
//! right device sessions.

mod acl;
/// The MQTT codec lives with the wire contract (the load generator and test clients use it too).
pub use parley_wire::codec;
mod connection;
mod downlink;
mod limits;
mod namespace;
mod session;
mod subscriptions;
mod transport;
mod uplink;

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use parley_domain::{Domain, Rate, Tokens};
use parley_wire::bus::{BusEndpoint, GateLane};
use parley_wire::UserId;
use rumqttc::{AsyncClient, Event, Outgoing, QoS};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use acl::TopicLimits;
use codec::Refusal;
use limits::Admission;
pub use limits::Flapping;
use namespace::Namespace;
pub use session::GateStats;
use session::{Attached, Registry};
pub use subscriptions::SubscriptionStats;
use subscriptions::Subscriptions;
pub use transport::{tls_acceptor, GateListener, Kind, TransportSettings};

/// The gate's limits, from `[mqtt]` settings.
#[derive(Debug, Clone)]
pub struct GateSettings {
    pub max_packet_size: usize,
    /// Time for the TLS and WebSocket handshakes and the CONNECT together.
    pub connect_timeout: Duration,
    pub session_expiry: Duration,
    pub max_queued: usize,
    pub max_inflight: u16,
    pub max_subscriptions: usize,
    pub max_sessions_per_user: usize,
    /// A device that does not take our bytes within this time is dropped.
    pub write_timeout: Duration,
    /// This gate's name in presence reports.
    pub node_id: String,
    /// The bus is the embedded one, with this gate the only gate on it: the gate
    /// takes every downlink on the bus with one subscription. On an external bus
    /// (several gates) it subscribes to each connected user's downlinks.
    pub embedded_bus: bool,
    /// How long a CONNECT waits for the bus to confirm the user's downlink subscription
    /// before the device is refused with "server unavailable" (shorter than the usual
    /// client CONNACK time-outs, 5 s in rumqttc, so the device hears why).
    pub bus_wait: Duration,
    pub max_keep_alive: u16,
    pub max_client_id_len: usize,
    pub topics: TopicLimits,
    /// Per connection; `None` is no limit.
    pub publish_rate: Option<Rate>,
    pub byte_rate: Option<Rate>,
    /// New connections per client address.
    pub connection_rate: Option<Rate>,
    pub flapping: Option<Flapping>,
    pub transport: TransportSettings,
    /// The open namespace (`*` or a topic prefix), and whether anonymous clients may use it.
    pub open_namespace: Option<String>,
    pub allow_anonymous: bool,
}

fn rate(per_sec: u32, burst: u32) -> Option<Rate> {
    (per_sec > 0).then_some(Rate { per_sec, burst: burst.max(per_sec) })
}

impl GateSettings {
    /// The gate's settings; reads the TLS certificate and key when a TLS listener is configured.
    pub fn from_config(mqtt: &parley_config::MqttSettings) -> anyhow::Result<Self> {
        let tls = if mqtt.tls_listen.is_empty() && mqtt.wss_listen.is_empty() {
            None
        } else {
            let (Some(cert), Some(key)) = (&mqtt.tls_cert_file, &mqtt.tls_key_file) else {
                bail!(
                    "mqtt.tls_listen and mqtt.wss_listen need mqtt.tls_cert_file and mqtt.tls_key_file \
                     (PARLEY_MQTT__TLS_CERT_FILE, PARLEY_MQTT__TLS_KEY_FILE)"
                );
            };
            Some(tls_acceptor(cert, key).context("mqtt.tls_cert_file / mqtt.tls_key_file")?)
        };
        if !mqtt.ws_path.starts_with('/') {
            bail!("mqtt.ws_path must start with `/`, not {:?}", mqtt.ws_path);
        }
        let max_packet_size = mqtt.max_packet_size as usize;
        Ok(Self {
            max_packet_size,
            connect_timeout: Duration::from_secs(mqtt.connect_timeout_secs),
            session_expiry: Duration::from_secs(mqtt.session_expiry_secs),
            max_queued: mqtt.max_queued_messages,
            max_inflight: mqtt.max_inflight,
            max_subscriptions: mqtt.max_subscriptions,
            max_sessions_per_user: 32,
            write_timeout: Duration::from_secs(30),
            node_id: mqtt.node_id.clone(),
            embedded_bus: true,
            bus_wait: Duration::from_secs(3),
            max_keep_alive: if mqtt.max_keep_alive_secs == 0 { u16::MAX } else { mqtt.max_keep_alive_secs },
            max_client_id_len: mqtt.max_client_id_len,
            topics: TopicLimits { max_len: mqtt.max_topic_len, max_levels: mqtt.max_topic_levels.max(1) },
            publish_rate: rate(mqtt.publish_rate_per_sec, mqtt.publish_burst),
            // A whole packet must fit in one burst.
            byte_rate: rate(mqtt.bytes_per_sec, mqtt.bytes_burst.max(mqtt.max_packet_size)),
            connection_rate: rate(mqtt.connections_per_sec_per_address, mqtt.connections_burst_per_address),
            flapping: (mqtt.flapping_max_connects > 0).then(|| Flapping {
                max_connects: mqtt.flapping_max_connects,
                window: Duration::from_secs(mqtt.flapping_window_secs),
                ban: Duration::from_secs(mqtt.flapping_ban_secs),
            }),
            transport: TransportSettings { tls, ws_path: mqtt.ws_path.clone(), ws_max_message: max_packet_size + 4096 },
            open_namespace: (!mqtt.open_namespace.is_empty()).then(|| mqtt.open_namespace.clone()),
            allow_anonymous: mqtt.allow_anonymous,
        })
    }
}

/// What every connection of the gate shares.
pub(crate) struct Shared {
    settings: GateSettings,
    domain: Domain,
    registry: Arc<Registry>,
    stats: Arc<GateStats>,
    uplinks: uplink::Uplinks,
    next_connection: AtomicU64,
    admission: Admission,
    /// The open namespace, when configured.
    namespace: Option<Arc<Namespace>>,
    presence_seq: PresenceSeq,
}

impl Shared {
    /// Waits until downlinks for `user` reach this gate (its bus subscription is
    /// acknowledged), so that whatever is published after the device's CONNACK
    /// reaches it. If the bus does not confirm in time, the connection's claim on the
    /// session is undone and the device is told to retry ("server unavailable").
    pub(crate) async fn await_downlinks(
        &self,
        user: UserId,
        attached: &Attached,
        connection: u64,
    ) -> Result<(), Refusal> {
        if self.registry.subscriptions().wait_active(user, self.settings.bus_wait).await {
            return Ok(());
        }
        tracing::warn!(user_id = %user, wait = ?self.settings.bus_wait, "the bus did not confirm the user's downlinks; CONNECT refused");
        self.registry.release(&attached.session, connection, !attached.present);
        Err(Refusal::ServerUnavailable)
    }
}

/// A running gate's counters, for operators and tests.
#[derive(Clone)]
pub struct GateHandle {
    stats: Arc<GateStats>,
    registry: Arc<Registry>,
}

impl GateHandle {
    pub fn stats(&self) -> &GateStats {
        &self.stats
    }

    /// (sessions, connected sessions).
    pub fn session_counts(&self) -> (usize, usize) {
        self.registry.counts()
    }

    /// The gate's counters and gauges in the Prometheus text format.
    pub fn prometheus(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        for (name, counter) in self.stats.counters() {
            let value = counter.load(std::sync::atomic::Ordering::Relaxed);
            let _ = writeln!(out, "# TYPE parley_gate_{name}_total counter\nparley_gate_{name}_total {value}");
        }
        let (sessions, connected) = self.session_counts();
        let _ = writeln!(out, "# TYPE parley_gate_sessions gauge\nparley_gate_sessions {sessions}");
        let _ = writeln!(out, "# TYPE parley_gate_connected_devices gauge\nparley_gate_connected_devices {connected}");
        out
    }

    /// How many downlink filters the bus has confirmed for this gate: with an
    /// external bus one per user with a session here, else the one wildcard.
    pub fn bus_subscriptions(&self) -> usize {
        self.registry.subscriptions().active()
    }

    /// Whether `user`'s downlinks reach this gate now.
    pub fn receives_downlinks_of(&self, user: UserId) -> bool {
        self.registry.subscriptions().is_active(user)
    }

    /// Subscriptions made and removed on the bus.
    pub fn bus_subscription_stats(&self) -> &SubscriptionStats {
        &self.registry.subscriptions().stats
    }
}

/// Serves devices on `listeners` until `shutdown`, then closes every connection
/// (v5 devices are told the server is shutting down) and returns.
pub async fn serve(
    listeners: Vec<GateListener>,
    settings: GateSettings,
    domain: Domain,
    bus: &BusEndpoint,
    lane: Option<GateLane>,
    shutdown: CancellationToken,
    ready: impl FnOnce(GateHandle),
) -> anyhow::Result<()> {
    // Uplinks, wills and presence reports go out on one connection; downlinks come
    // in on another (downlink.rs), so neither waits behind the other.
    let (client, events) = parley_wire::bus::client(bus.options("gate"), 64);
    let mut uplink_connection = tokio::spawn(poll_uplinks(events, bus.to_string()));
    // Whatever this gate reported before it (re)started no longer holds.
    let presence_topic = parley_wire::topics::gate_presence(&settings.node_id);
    let presence_seq = PresenceSeq::default();
    let ((), seq) = presence_seq.stamp(|| ());
    let stats = Arc::new(GateStats::default());
    let (lane_uplinks, lane_downlinks) = match lane {
        Some(GateLane { uplinks, downlinks }) => (Some(uplinks), Some(downlinks)),
        None => (None, None),
    };
    let (uplinks, forwarder) = uplink::start(client, lane_uplinks, stats.clone());
    uplinks.send(presence_topic.clone(), QoS::AtLeastOnce, presence_reset(seq)).await?;
    let namespace =
        settings.open_namespace.as_deref().map(|open| Arc::new(Namespace::new(open, settings.allow_anonymous)));
    let subscriptions = Subscriptions::new(!settings.embedded_bus, namespace.is_some());
    let registry = Arc::new(Registry::new(Arc::new(subscriptions)));
    let tasks = TaskTracker::new();
    tasks.spawn(downlink::run(
        bus.clone(),
        registry.clone(),
        stats.clone(),
        namespace.clone(),
        settings.max_queued,
        shutdown.clone(),
    ));
    if let Some(downlinks) = lane_downlinks {
        let (registry, stats, max_queued) = (registry.clone(), stats.clone(), settings.max_queued);
        tasks.spawn(downlink::from_lane(downlinks, registry, stats, max_queued, shutdown.clone()));
    }
    ready(GateHandle { stats: stats.clone(), registry: registry.clone() });
    let admission = Admission::new(settings.connection_rate, settings.flapping);
    let shared = Arc::new(Shared {
        settings,
        domain,
        registry: registry.clone(),
        stats,
        uplinks,
        next_connection: AtomicU64::new(1),
        admission,
        namespace,
        presence_seq,
    });
    tasks.spawn(housekeeping(shared.clone(), shutdown.clone()));
    for GateListener { listener, kind } in listeners {
        tracing::info!(addr = %listener.local_addr()?, %kind, "gate listening for devices");
        tasks.spawn(accept(listener, kind, shared.clone(), tasks.clone(), shutdown.clone()));
    }
    shutdown.cancelled().await;
    registry.kick_all();
    tasks.close();
    let _ = tokio::time::timeout(Duration::from_secs(5), tasks.wait()).await;
    // This gate holds no device any more: say so (the bridges mark its users offline),
    // then leave the bus once that and the last reports are out.
    let ((), seq) = shared.presence_seq.stamp(|| ());
    let _ = shared.uplinks.try_send(presence_topic, QoS::AtLeastOnce, presence_reset(seq));
    shared.uplinks.close_lane();
    let sent = forwarder.finish(Duration::from_secs(2)).await;
    if !sent || tokio::time::timeout(Duration::from_secs(2), &mut uplink_connection).await.is_err() {
        uplink_connection.abort();
        tracing::warn!("the gate's last presence reports may not have reached the bus");
    }
    tracing::info!("gate stopped");
    Ok(())
}

/// Accepts on one listener until `shutdown`; each connection gets its own task
/// at once, so nothing a device does (or fails to do) delays the next accept.
async fn accept(
    listener: tokio::net::TcpListener,
    kind: Kind,
    shared: Arc<Shared>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                tasks.spawn(connection::serve(shared.clone(), stream, peer, kind, shutdown.clone()));
            }
            Err(e) => {
                // Out of file descriptors and the like: pause instead of spinning.
                tracing::warn!(error = %e, %kind, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

fn presence_reset(seq: i64) -> bytes::Bytes {
    serde_json::json!({ "reset": true, "seq": seq }).to_string().into()
}

/// Numbers this gate's presence reports: milliseconds since the epoch, strictly
/// increasing, so bridges applying them out of order keep the newest.
#[derive(Debug, Default)]
pub(crate) struct PresenceSeq(std::sync::Mutex<i64>);

impl PresenceSeq {
    /// The next number, with `measure` (the report's content) taken under the same
    /// lock, so a later number always goes with a later measurement.
    pub(crate) fn stamp<T>(&self, measure: impl FnOnce() -> T) -> (T, i64) {
        let mut last = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        *last = now.max(*last + 1);
        (measure(), *last)
    }
}

/// Polls the gate's uplink connection (rumqttc reconnects it) until the gate
/// disconnects it on the way out.
async fn poll_uplinks(mut events: rumqttc::EventLoop, bus: String) {
    loop {
        match events.poll().await {
            Ok(Event::Outgoing(Outgoing::Disconnect)) => return,
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(bus, error = %e, "gate lost the bus for uplinks; reconnecting");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// Every 30 s: forgets expired sessions, and addresses and clients that went quiet.
async fn housekeeping(shared: Arc<Shared>, shutdown: CancellationToken) {
    let mut every = tokio::time::interval(Duration::from_secs(30));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = every.tick() => {
                let n = shared.registry.purge_expired();
                if n > 0 {
                    tracing::info!(sessions = n, "expired device sessions forgotten");
                }
                let bans = shared.admission.purge();
                if bans > 0 {
                    tracing::info!(bans, "flapping clients still banned");
                }
            }
        }
    }
}

/// Proves the gate answers devices: a real MQTT CONNECT to `addr` with a validly
/// signed token for a sign-in that does not exist, which the gate must refuse with
/// "not authorized" (0x05) after checking the signature and looking the sign-in up
/// in the database. A bad-credentials answer or none at all fails the check.
pub async fn self_check(addr: std::net::SocketAddr, tokens: &Tokens, limit: Duration) -> Result<(), String> {
    use rumqttc::{ConnectReturnCode, ConnectionError, Event, MqttOptions, Packet};
    let host = match addr.ip() {
        std::net::IpAddr::V4(ip) if ip.is_unspecified() => std::net::Ipv4Addr::LOCALHOST.into(),
        std::net::IpAddr::V6(ip) if ip.is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
        ip => ip,
    };
    let user = parley_wire::UserId::new();
    let token = tokens.issue_access(user, uuid::Uuid::now_v7(), chrono_free_now_secs());
    let mut options =
        MqttOptions::new(format!("parley-readyz-{}", uuid::Uuid::new_v4().simple()), host.to_string(), addr.port());
    options.set_credentials(user.to_string(), token).set_keep_alive(Duration::from_secs(5));
    let (client, mut events) = AsyncClient::new(options, 4);
    let answer = tokio::time::timeout(limit, async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(ack))) if ack.code == ConnectReturnCode::NotAuthorized => {
                    return Ok(())
                }
                Ok(Event::Incoming(Packet::ConnAck(ack))) => return Err(format!("unexpected CONNACK: {:?}", ack.code)),
                Ok(_) => {}
                Err(ConnectionError::ConnectionRefused(ConnectReturnCode::NotAuthorized)) => return Ok(()),
                Err(ConnectionError::ConnectionRefused(code)) => return Err(format!("unexpected CONNACK: {code:?}")),
                Err(e) => return Err(format!("gate unreachable: {e}")),
            }
        }
    })
    .await
    .unwrap_or_else(|_| Err(format!("no CONNACK from the gate within {limit:?}")));
    let _ = client.try_disconnect();
    answer
}

/// Unix seconds now.
pub(crate) fn chrono_free_now_secs() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}
