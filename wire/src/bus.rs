//! How the platform's own parts reach the internal bus (rumqttd, or an external
//! MQTT broker): MQTT 3.1.1, clean sessions, no properties, loopback by default.

use std::fmt;
use std::time::Duration;

use rumqttc::MqttOptions;

/// Largest packet on the bus, either direction; device limits are enforced by the gate.
pub const MAX_BUS_PACKET: usize = 4 * 1024 * 1024;

/// Where the bus listens and the credentials its internal clients use.
#[derive(Clone)]
pub struct BusEndpoint {
    pub host: String,
    pub port: u16,
    pub username: String,
    pub password: String,
}

impl fmt::Debug for BusEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BusEndpoint")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("username", &self.username)
            .field("password", &"[redacted]")
            .finish()
    }
}

impl BusEndpoint {
    /// Options for one internal client; `role` names it in the bus's logs.
    pub fn options(&self, role: &str) -> MqttOptions {
        let id = format!("parley-{role}-{}", uuid::Uuid::new_v4().simple());
        let mut options = MqttOptions::new(id, self.host.clone(), self.port);
        options
            .set_credentials(self.username.clone(), self.password.clone())
            .set_clean_session(true)
            .set_keep_alive(Duration::from_secs(30))
            .set_max_packet_size(MAX_BUS_PACKET, MAX_BUS_PACKET)
            .set_inflight(100);
        options
    }
}
