//! How the platform's own parts reach the internal bus (rumqttd, or an external
//! MQTT broker): MQTT 3.1.1, clean sessions, no properties, loopback by default.

use std::fmt;
use std::time::Duration;

use rumqttc::{AsyncClient, EventLoop, MqttOptions, NetworkOptions};

/// Largest packet on the bus, either direction; device limits are enforced by the gate.
pub const MAX_BUS_PACKET: usize = 4 * 1024 * 1024;

/// Where the bus listens and the credentials its internal clients use.
#[derive(Clone)]
pub struct BusEndpoint {
    pub host: String,
    pub port: u16,
    /// User name and password; `None` for a broker that takes anonymous clients.
    pub credentials: Option<(String, String)>,
}

impl fmt::Debug for BusEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BusEndpoint")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("username", &self.credentials.as_ref().map(|(user, _)| user))
            .field("password", &"[redacted]")
            .finish()
    }
}

impl fmt::Display for BusEndpoint {
    /// `mqtt://host:port`, for logs and errors (never the credentials).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "mqtt://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "mqtt://{}:{}", self.host, self.port)
        }
    }
}

/// A client of the bus with Nagle's algorithm off: the bus carries small
/// messages one after another, and each would otherwise wait for the peer's
/// delayed ACK (40 ms on Linux) whenever one is still unacknowledged.
pub fn client(options: MqttOptions, capacity: usize) -> (AsyncClient, EventLoop) {
    let (client, mut events) = AsyncClient::new(options, capacity);
    let mut network = NetworkOptions::new();
    network.set_tcp_nodelay(true);
    events.set_network_options(network);
    (client, events)
}

/// A publish-only client of the bus (the HTTP API's, the bridge's downlinks); its
/// event loop runs on its own task until `shutdown`, reconnecting after failures.
pub fn publisher(bus: &BusEndpoint, role: &str, shutdown: tokio_util::sync::CancellationToken) -> AsyncClient {
    let (client, mut events) = client(bus.options(role), 1024);
    tokio::spawn(async move {
        loop {
            let event = tokio::select! {
                _ = shutdown.cancelled() => return,
                event = events.poll() => event,
            };
            if let Err(e) = event {
                tracing::warn!(error = %e, "publisher lost the bus; reconnecting");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    });
    client
}

impl BusEndpoint {
    /// Options for one internal client with a fresh client id; `role` names it in the bus's logs.
    pub fn options(&self, role: &str) -> MqttOptions {
        self.options_with_id(format!("parley-{role}-{}", uuid::Uuid::new_v4().simple()))
    }

    /// Options for one internal client with the client id `id` (a client that
    /// reconnects under its own id takes its previous connection over).
    pub fn options_with_id(&self, id: String) -> MqttOptions {
        let mut options = MqttOptions::new(id, self.host.clone(), self.port);
        if let Some((user, password)) = &self.credentials {
            options.set_credentials(user.clone(), password.clone());
        }
        options
            .set_clean_session(true)
            .set_keep_alive(Duration::from_secs(30))
            .set_max_packet_size(MAX_BUS_PACKET, MAX_BUS_PACKET)
            .set_inflight(100);
        options
    }
}
