//! MQTT 5 raw-client helpers on top of [`super::raw`], packets encoded with the
//! gate's own codec (rumqttc's encoders underneath).

use std::net::SocketAddr;

use bytes::{Bytes, BytesMut};
use parley_wire::codec::{self, ConnectInfo, Inbound, Protocol, Publish, SubscribeFilter};
use rumqttc::v5::mqttbytes::{v5, QoS};
use serde_json::Value;

use super::raw::RawClient;
use super::TestUser;

/// A v5 CONNECT of `user` (anonymous without), clean start, keepalive 30 s.
pub fn connect_info(user: Option<&TestUser>, client_id: &str) -> ConnectInfo {
    let login = user.map(|u| (u.id.as_str(), u.access_token.as_str()));
    super::raw::connect_info(Protocol::V5, client_id, login, 30)
}

/// A v5 raw client, connected (CONNACK checked).
pub async fn v5_client(addr: SocketAddr, info: &ConnectInfo) -> (RawClient, v5::ConnAck) {
    let mut c = RawClient::tcp(addr).await;
    let mut buf = BytesMut::new();
    codec::write_connect(info, &mut buf);
    c.send(&buf).await;
    match c.next_v5().await {
        Some(v5::Packet::ConnAck(ack)) => {
            assert_eq!(ack.code, v5::ConnectReturnCode::Success);
            (c, ack)
        }
        other => panic!("expected CONNACK, got {other:?}"),
    }
}

/// Sends a client packet.
pub async fn send(c: &mut RawClient, packet: Inbound) {
    let mut buf = BytesMut::new();
    codec::write_inbound(Protocol::V5, &packet, &mut buf);
    c.send(&buf).await;
}

/// A PUBLISH of `body` as JSON (no retain, no properties).
pub fn publish(topic: &str, qos: u8, pkid: u16, alias: Option<u16>, body: &Value) -> Inbound {
    Inbound::Publish(Publish {
        topic: topic.into(),
        payload: Bytes::from(body.to_string()),
        qos,
        retain: false,
        dup: false,
        pkid,
        topic_alias: alias,
        subscription_ids: Vec::new(),
        properties: None,
    })
}

/// Subscribes at QoS 1 and waits for the SUBACK.
pub async fn subscribe(c: &mut RawClient, filter: &str, id: Option<usize>) {
    subscribe_with(c, SubscribeFilter::new(filter, 1), id).await;
}

/// The next PUBLISH, acknowledged as its QoS asks (QoS 2: PUBREC now, and the
/// PUBREL that follows is answered with PUBCOMP while waiting for later ones).
pub async fn next_publish(c: &mut RawClient) -> v5::Publish {
    loop {
        match c.next_v5().await {
            Some(v5::Packet::Publish(p)) => {
                match p.qos {
                    QoS::AtLeastOnce => send(c, Inbound::PubAck(p.pkid)).await,
                    QoS::ExactlyOnce => send(c, Inbound::PubRec(p.pkid)).await,
                    QoS::AtMostOnce => {}
                }
                return p;
            }
            Some(v5::Packet::PubRel(r)) => send(c, Inbound::PubComp(r.pkid)).await,
            Some(_) => {}
            None => panic!("closed while waiting for a PUBLISH"),
        }
    }
}

/// Whether no PUBLISH arrives within `wait` (PUBRELs are answered meanwhile).
pub async fn no_publish_within(c: &mut RawClient, wait: std::time::Duration) -> bool {
    tokio::time::timeout(wait, next_publish(c)).await.is_err()
}

/// Subscribes to one filter with all of MQTT 5's options; returns the SUBACK's code.
pub async fn subscribe_with(c: &mut RawClient, filter: SubscribeFilter, id: Option<usize>) -> v5::SubscribeReasonCode {
    send(c, Inbound::Subscribe { pkid: 2, filters: vec![filter], id }).await;
    loop {
        match c.next_v5().await {
            Some(v5::Packet::SubAck(ack)) => return ack.return_codes[0],
            Some(_) => {}
            None => panic!("closed while waiting for a SUBACK"),
        }
    }
}

/// The reason of the DISCONNECT the gate sends (other packets are skipped).
pub async fn disconnect_reason(c: &mut RawClient) -> v5::DisconnectReasonCode {
    loop {
        match c.next_v5().await {
            Some(v5::Packet::Disconnect(d)) => return d.reason_code,
            Some(_) => continue,
            None => panic!("closed without DISCONNECT"),
        }
    }
}
