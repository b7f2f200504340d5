//! `parley-bench rumqttd`: the broker Parley embeds as its bus, alone, as a
//! peer to measure against. Open to anyone on loopback, with its own demo
//! configuration's router settings and Parley's in-flight window.

use std::collections::HashMap;
use std::net::SocketAddr;

use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};

/// Runs rumqttd on 127.0.0.1:`port` until the process is killed.
pub fn run_rumqttd(port: u16) -> anyhow::Result<()> {
    let listen: SocketAddr = ([127, 0, 0, 1], port).into();
    let connections = ConnectionSettings {
        connection_timeout_ms: 10_000,
        max_payload_size: 256 * 1024,
        max_inflight_count: 100,
        auth: None,
        external_auth: None,
        dynamic_filters: true,
    };
    let server = ServerSettings { name: "bench".into(), listen, tls: None, next_connection_delay_ms: 0, connections };
    let config = Config {
        id: 0,
        router: RouterConfig {
            max_connections: 30_000,
            max_outgoing_packet_count: 200,
            max_segment_size: 100 * 1024 * 1024,
            max_segment_count: 10,
            ..RouterConfig::default()
        },
        v4: Some(HashMap::from([("bench".to_string(), server)])),
        ..Config::default()
    };
    Broker::new(config).start()?;
    Ok(())
}
