//! The gate: Parley's own MQTT server for devices (3.1.1 and 5 over TCP). It
//! authenticates each CONNECT with the access token, enforces the per-user ACL,
//! forwards allowed uplinks to the bus and delivers downlinks from the bus to the
//! right device sessions.

mod acl;
pub mod codec;
mod connection;
mod downlink;
mod session;

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use parley_domain::{Domain, Tokens};
use parley_wire::bus::BusEndpoint;
use rumqttc::{AsyncClient, QoS};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use session::GateStats;
use session::Registry;

/// The gate's limits, from `[mqtt]` settings.
#[derive(Debug, Clone)]
pub struct GateSettings {
    pub max_packet_size: usize,
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
}

impl GateSettings {
    pub fn from_config(mqtt: &parley_config::MqttSettings) -> Self {
        Self {
            max_packet_size: mqtt.max_packet_size as usize,
            connect_timeout: Duration::from_secs(mqtt.connect_timeout_secs),
            session_expiry: Duration::from_secs(mqtt.session_expiry_secs),
            max_queued: mqtt.max_queued_messages,
            max_inflight: mqtt.max_inflight,
            max_subscriptions: mqtt.max_subscriptions,
            max_sessions_per_user: 32,
            write_timeout: Duration::from_secs(30),
            node_id: mqtt.node_id.clone(),
        }
    }
}

/// What every connection of the gate shares.
pub(crate) struct Shared {
    settings: GateSettings,
    domain: Domain,
    registry: Arc<Registry>,
    stats: Arc<GateStats>,
    bus: AsyncClient,
    next_connection: AtomicU64,
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
}

/// Serves devices on `listener` until `shutdown`, then closes every connection
/// (v5 devices are told the server is shutting down) and returns.
pub async fn serve(
    listener: TcpListener,
    settings: GateSettings,
    domain: Domain,
    bus: &BusEndpoint,
    shutdown: CancellationToken,
    ready: impl FnOnce(GateHandle),
) -> anyhow::Result<()> {
    let (client, events) = AsyncClient::new(bus.options("gate"), 1024);
    // Whatever this gate reported before it (re)started no longer holds.
    let reset = serde_json::json!({ "reset": true }).to_string();
    client.publish(parley_wire::topics::gate_presence(&settings.node_id), QoS::AtLeastOnce, false, reset).await?;
    let registry = Arc::new(Registry::default());
    let stats = Arc::new(GateStats::default());
    let tasks = TaskTracker::new();
    tasks.spawn(downlink::run(
        client.clone(),
        events,
        registry.clone(),
        stats.clone(),
        settings.max_queued,
        shutdown.clone(),
    ));
    tasks.spawn(purge_expired_sessions(registry.clone(), shutdown.clone()));
    ready(GateHandle { stats: stats.clone(), registry: registry.clone() });
    let shared = Arc::new(Shared {
        settings,
        domain,
        registry: registry.clone(),
        stats,
        bus: client.clone(),
        next_connection: AtomicU64::new(1),
    });
    tracing::info!(addr = %listener.local_addr()?, "gate listening for devices");
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                tasks.spawn(connection::serve(shared.clone(), stream, peer, shutdown.clone()));
            }
            Err(e) => {
                // Out of file descriptors and the like: pause instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    registry.kick_all();
    tasks.close();
    let _ = tokio::time::timeout(Duration::from_secs(5), tasks.wait()).await;
    let _ = client.try_disconnect();
    tracing::info!("gate stopped");
    Ok(())
}

async fn purge_expired_sessions(registry: Arc<Registry>, shutdown: CancellationToken) {
    let mut every = tokio::time::interval(Duration::from_secs(30));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = every.tick() => {
                let n = registry.purge_expired();
                if n > 0 {
                    tracing::info!(sessions = n, "expired device sessions forgotten");
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
