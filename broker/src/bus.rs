//! The internal bus: an embedded rumqttd on loopback that carries uplinks from
//! gates to bridges and downlinks back. Only Parley's own parts connect, with a
//! password generated at each start (see shared/RUMQTT-NOTES.md for why devices
//! never reach it). Configured with `bus.url`, an external MQTT broker takes its
//! place and nothing is started here.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use parley_wire::bus::{BusEndpoint, MAX_BUS_PACKET};
use rumqttc::{AsyncClient, ConnectReturnCode, ConnectionError, Event, Packet, QoS};

use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings, Strategy};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

const BUS_USER: &str = "parley";

/// Starts rumqttd on its own threads, listening on the loopback address `listen`
/// (port 0 picks a free port), and returns how to reach it once it accepts.
pub async fn start_embedded(listen: &str) -> anyhow::Result<BusEndpoint> {
    let mut addr: SocketAddr = listen.parse().with_context(|| format!("bus.listen {listen:?} is not an address"))?;
    if !addr.ip().is_loopback() {
        bail!("bus.listen must be a loopback address (the bus is internal), not {addr}");
    }
    if addr.port() == 0 {
        // rumqttd binds by address only, so find a free port first.
        let probe = std::net::TcpListener::bind(addr).context("no free loopback port for the bus")?;
        addr = probe.local_addr()?;
    } else if std::net::TcpListener::bind(addr).is_err() {
        bail!("bus port {addr} is in use: set bus.listen (PARLEY_BUS__LISTEN) to a free loopback port, or 127.0.0.1:0");
    }
    let password = format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple());
    let connections = ConnectionSettings {
        connection_timeout_ms: 10_000,
        max_payload_size: MAX_BUS_PACKET,
        max_inflight_count: 500,
        auth: Some(HashMap::from([(BUS_USER.to_string(), password.clone())])),
        external_auth: None,
        dynamic_filters: true,
    };
    let server =
        ServerSettings { name: "parley-bus".into(), listen: addr, tls: None, next_connection_delay_ms: 0, connections };
    let config = Config {
        id: 0,
        router: RouterConfig {
            max_connections: 1024,
            max_outgoing_packet_count: 1000,
            // The database is the record; the bus keeps only a short log per filter. A
            // reader that falls behind by a whole segment skips to the oldest kept one
            // (rumqttd: "read cursor jumped"), so a segment holds what a bridge may lag
            // in a burst: at 1 MiB, bursts of 10,000 messages a second lost uplinks
            // (measured with parley-bench; docs/benchmarks.md).
            max_segment_size: 16 * 1024 * 1024,
            max_segment_count: 2,
            // Round robin, the default, hands a `$share` member one message per
            // pass of the router; sticky hands over whatever is waiting, to the
            // member that has it until it leaves (one bridge per process).
            shared_subscriptions_strategy: Strategy::Sticky,
            ..RouterConfig::default()
        },
        v4: Some(HashMap::from([("internal".to_string(), server)])),
        ..Config::default()
    };
    std::thread::Builder::new()
        .name("parley-bus".into())
        .spawn(move || {
            let mut broker = Broker::new(config);
            if let Err(e) = broker.start() {
                tracing::error!(error = %e, "embedded bus stopped");
            }
        })
        .context("could not start the bus thread")?;
    let bus =
        BusEndpoint { host: ip_text(addr.ip()), port: addr.port(), credentials: Some((BUS_USER.into(), password)) };
    wait_until_listening(&bus).await?;
    tracing::info!(%addr, "embedded bus listening on loopback");
    Ok(bus)
}

fn ip_text(ip: IpAddr) -> String {
    ip.to_string()
}

/// Waits until the embedded bus, started on its thread, answers Parley's connection.
async fn wait_until_listening(bus: &BusEndpoint) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match hello(bus, Duration::from_secs(1)).await {
            Ok(()) => return Ok(()),
            Err(NoHello::Refused(code)) => bail!("the embedded bus on {bus} refused Parley's connection ({code:?})"),
            Err(NoHello::Unreachable(why)) if tokio::time::Instant::now() >= deadline => {
                bail!("the embedded bus did not start listening on {bus} ({why})")
            }
            Err(NoHello::Unreachable(_)) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// Why a connection to the bus went unanswered.
enum NoHello {
    /// The broker answered and refused, other than as unavailable: waiting would not help.
    Refused(ConnectReturnCode),
    /// Not reachable, or not yet.
    Unreachable(String),
}

/// One connection of Parley's to `bus`, answered with CONNACK within `limit`, then
/// closed. Closed without DISCONNECT: rumqttd 0.20 logs a client that sends one as
/// leaving twice, and a bare TCP connection that never sends CONNECT, both as
/// errors; a connection closed after CONNACK as information.
async fn hello(bus: &BusEndpoint, limit: Duration) -> Result<(), NoHello> {
    let (_client, mut events) = parley_wire::bus::client(bus.options("start"), 4);
    let answered = tokio::time::timeout(limit, async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(e),
            }
        }
    })
    .await;
    match answered {
        Ok(Ok(())) => Ok(()),
        Ok(Err(ConnectionError::ConnectionRefused(code))) if code != ConnectReturnCode::ServiceUnavailable => {
            Err(NoHello::Refused(code))
        }
        Ok(Err(e)) => Err(NoHello::Unreachable(e.to_string())),
        Err(_) => Err(NoHello::Unreachable("no CONNACK".to_string())),
    }
}

/// Waits until the external bus accepts a connection, retrying (with a warning per
/// failure) for at most `limit`. A broker that refuses Parley's credentials fails at
/// once: waiting would not help.
pub async fn reach_external(bus: &BusEndpoint, limit: Duration) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let why = match hello(bus, left.max(Duration::from_millis(100))).await {
            Ok(()) => {
                tracing::info!(%bus, "external bus reachable");
                return Ok(());
            }
            Err(NoHello::Refused(code)) => {
                bail!(
                    "the bus at {bus} refused Parley's connection ({code:?}): check the user name and password \
                     in bus.url (PARLEY_BUS__URL) and the broker's ACL"
                )
            }
            Err(NoHello::Unreachable(why)) => why,
        };
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "the bus at {bus} is unreachable ({why}) after {}s: check bus.url (PARLEY_BUS__URL), \
                 or raise bus.start_timeout_secs if the broker starts slowly",
                limit.as_secs()
            );
        }
        tracing::warn!(%bus, error = %why, attempt, "waiting for the external bus");
        tokio::time::sleep(Duration::from_secs(1).min(deadline.saturating_duration_since(tokio::time::Instant::now())))
            .await;
    }
}

/// Proves the bus works with a real round trip: publish a number, see it come back.
pub struct BusProbe {
    client: AsyncClient,
    topic: String,
    /// True while the probe's subscription stands (set on SUBACK, cleared on a drop).
    subscribed: watch::Receiver<bool>,
    seen: watch::Receiver<u64>,
    sent: AtomicU64,
}

impl BusProbe {
    /// Connects a probe client; it lives until `shutdown`.
    pub fn start(bus: &BusEndpoint, shutdown: CancellationToken) -> BusProbe {
        let topic = format!("parley/probe/{}", uuid::Uuid::new_v4().simple());
        let (client, mut events) = parley_wire::bus::client(bus.options("probe"), 16);
        let (tx, seen) = watch::channel(0u64);
        let (sub_tx, subscribed) = watch::channel(false);
        let sub_client = client.clone();
        let sub_topic = topic.clone();
        tokio::spawn(async move {
            loop {
                let event = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    event = events.poll() => event,
                };
                match event {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        let _ = sub_client.try_subscribe(sub_topic.clone(), QoS::AtMostOnce);
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        sub_tx.send_replace(true);
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        if let Some(n) = std::str::from_utf8(&p.payload).ok().and_then(|s| s.parse().ok()) {
                            tx.send_replace(n);
                        }
                    }
                    Ok(_) => {}
                    Err(_) => {
                        sub_tx.send_replace(false);
                        tokio::time::sleep(Duration::from_millis(500)).await
                    }
                }
            }
        });
        BusProbe { client, topic, subscribed, seen, sent: AtomicU64::new(0) }
    }

    /// One round trip through the bus within `limit`, or why not.
    pub async fn check(&self, limit: Duration) -> Result<Duration, String> {
        let started = Instant::now();
        let n = self.sent.fetch_add(1, Ordering::Relaxed) + 1;
        let mut seen = self.seen.clone();
        let mut subscribed = self.subscribed.clone();
        let round_trip = async {
            subscribed.wait_for(|s| *s).await.map_err(|_| "bus probe stopped".to_string())?;
            self.client
                .publish(self.topic.clone(), QoS::AtMostOnce, false, n.to_string())
                .await
                .map_err(|e| format!("bus publish failed: {e}"))?;
            seen.wait_for(|v| *v >= n).await.map_err(|_| "bus probe stopped".to_string())?;
            Ok::<_, String>(())
        };
        match tokio::time::timeout(limit, round_trip).await {
            Ok(Ok(())) => Ok(started.elapsed()),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(format!("no bus round trip within {limit:?}")),
        }
    }
}

pub use parley_wire::bus::publisher;
