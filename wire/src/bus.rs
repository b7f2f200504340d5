//! How the platform's own parts reach the internal bus (rumqttd, or an external
//! MQTT broker): MQTT 3.1.1, clean sessions, no properties, loopback by default.

use std::fmt;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use rumqttc::{AsyncClient, EventLoop, MqttOptions, NetworkOptions};

/// Largest packet on the bus, either direction; device limits are enforced by the gate.
pub const MAX_BUS_PACKET: usize = 4 * 1024 * 1024;

/// Packs on the embedded bus, where one gate and one bridge do all the work: the
/// bridge sends a batch's downlinks as one publish on this topic (the gate takes
/// `to/#`), and the gate sends whatever uplinks are waiting as one publish on
/// [`UPLINK_BATCH_TOPIC`] (the bridge takes `from/#`), instead of one publish, one
/// write and one acknowledgement each. No user's topic is either (user ids are
/// UUIDs, and devices publish only under their own), and devices never see them.
pub const DOWNLINK_BATCH_TOPIC: &str = "to/_batch";

/// Uplinks packed into one bus message; see [`DOWNLINK_BATCH_TOPIC`].
pub const UPLINK_BATCH_TOPIC: &str = "from/_batch";

const PACK_VERSION: u8 = 1;

/// Room left in a pack for the MQTT header and topic.
const PACK_LIMIT: usize = MAX_BUS_PACKET - 1024;

/// One message in a pack: its topic, QoS and payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packed {
    pub topic: String,
    pub qos: u8,
    pub payload: Bytes,
}

/// Packs messages (topic, QoS, payload), in order, into as few bus payloads as fit
/// [`MAX_BUS_PACKET`]: a version byte, then for each a 2-byte topic length, the
/// topic, the QoS byte, a 4-byte payload length and the payload.
pub fn pack<T: AsRef<str>, P: AsRef<[u8]>>(messages: impl IntoIterator<Item = (T, u8, P)>) -> Vec<Bytes> {
    let mut packs = Vec::new();
    let mut out = BytesMut::new();
    for (topic, qos, payload) in messages {
        let (topic, payload) = (topic.as_ref(), payload.as_ref());
        let size = 2 + topic.len() + 1 + 4 + payload.len();
        if out.len() > 1 && out.len() + size > PACK_LIMIT {
            packs.push(std::mem::take(&mut out).freeze());
        }
        if out.is_empty() {
            out.put_u8(PACK_VERSION);
        }
        out.reserve(size);
        out.put_u16(topic.len() as u16);
        out.put_slice(topic.as_bytes());
        out.put_u8(qos);
        out.put_u32(payload.len() as u32);
        out.put_slice(payload);
    }
    if !out.is_empty() {
        packs.push(out.freeze());
    }
    packs
}

/// The messages in a pack (payloads share its memory); `None` if it is not one.
pub fn unpack(mut pack: Bytes) -> Option<Vec<Packed>> {
    if pack.first() != Some(&PACK_VERSION) {
        return None;
    }
    pack.advance(1);
    let mut messages = Vec::new();
    while !pack.is_empty() {
        let topic_len = usize::from(pack.try_get_u16().ok()?);
        let topic = String::from_utf8(pack.get(..topic_len)?.to_vec()).ok()?;
        pack.advance(topic_len);
        let qos = pack.try_get_u8().ok()?;
        let len = usize::try_from(pack.try_get_u32().ok()?).ok()?;
        if pack.len() < len {
            return None;
        }
        messages.push(Packed { topic, qos, payload: pack.split_to(len) });
    }
    Some(messages)
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packs_read_back_in_order_and_anything_else_is_refused() {
        let downlinks = vec![
            ("to/a/ack".to_string(), 1, b"{\"id\":\"1\"}".to_vec()),
            ("to/b/msg".to_string(), 1, Vec::new()),
            ("to/b/typing".to_string(), 0, vec![0xff; 300]),
        ];
        let packs = pack(downlinks.clone());
        assert_eq!(packs.len(), 1);
        let back = unpack(packs[0].clone()).expect("a pack");
        let back: Vec<_> = back.into_iter().map(|p| (p.topic, p.qos, p.payload.to_vec())).collect();
        assert_eq!(back, downlinks);
        assert!(pack(Vec::<(String, u8, Vec<u8>)>::new()).is_empty());
        for bad in [&b""[..], b"\x02", b"\x01\x00", b"\x01\x00\x01a\x01\x00\x00\x00\x09short"] {
            assert_eq!(unpack(Bytes::copy_from_slice(bad)), None, "{bad:?}");
        }
    }

    #[test]
    fn messages_beyond_one_bus_packet_go_in_more_packs() {
        let big = vec![7u8; 1024 * 1024];
        let packs = pack((0..9).map(|i| (format!("to/u{i}/msg"), 1, &big[..])));
        assert_eq!(packs.len(), 3, "three messages of 1 MiB fit in one bus packet, not four");
        assert!(packs.iter().all(|p| p.len() <= MAX_BUS_PACKET - 1024));
        let topics: Vec<String> = packs.into_iter().flat_map(|p| unpack(p).expect("pack")).map(|p| p.topic).collect();
        assert_eq!(topics, (0..9).map(|i| format!("to/u{i}/msg")).collect::<Vec<_>>());
    }
}
