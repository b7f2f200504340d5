//! The gate against raw sockets: silent devices, wills, malformed and oversized
//! packets, half-sent CONNECTs. Built packet by packet, as a broken or hostile
//! client would send them.

mod common;

use std::time::Duration;

use bytes::BytesMut;
use common::{Backend, TestApp};
use rumqttc::mqttbytes::v4::{Connect, LastWill, Packet};
use rumqttc::mqttbytes::QoS;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

both_backends!(
    a_silent_device_is_dropped_after_one_and_a_half_keepalives_and_its_will_is_sent,
    malformed_and_oversized_packets_close_only_that_connection,
    a_half_sent_connect_is_closed_after_the_connect_timeout,
    qos0_publishes_and_subscriptions_work,
);

fn connect_packet(client_id: &str, user: &str, token: &str, keep_alive: u16, will: Option<LastWill>) -> BytesMut {
    let mut c = Connect::new(client_id);
    c.keep_alive = keep_alive;
    c.set_login(user, token);
    c.last_will = will;
    let mut buf = BytesMut::new();
    c.write(&mut buf).expect("encode connect");
    buf
}

/// Reads packets until the peer closes; returns what arrived, or panics after `limit`.
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> Vec<Packet> {
    let mut buf = BytesMut::new();
    let mut packets = Vec::new();
    tokio::time::timeout(limit, async {
        loop {
            match stream.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {
                    while let Ok(p) = Packet::read(&mut buf, 1 << 20) {
                        packets.push(p);
                    }
                }
            }
        }
    })
    .await
    .expect("the gate closed the connection in time");
    packets
}

async fn connected(app: &TestApp, user: &common::TestUser, keep_alive: u16, will: Option<LastWill>) -> TcpStream {
    let mut s = TcpStream::connect(app.mqtt).await.expect("tcp");
    s.write_all(&connect_packet("raw", &user.id, &user.access_token, keep_alive, will)).await.expect("send connect");
    let mut buf = BytesMut::new();
    loop {
        s.read_buf(&mut buf).await.expect("read connack");
        if let Ok(p) = Packet::read(&mut buf, 1024) {
            assert!(matches!(p, Packet::ConnAck(ref a) if a.code == rumqttc::ConnectReturnCode::Success), "{p:?}");
            return s;
        }
    }
}

async fn a_silent_device_is_dropped_after_one_and_a_half_keepalives_and_its_will_is_sent(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let mut b = app.device(&bob, "bob-phone").await;
    let will_body = json!({"id": "will-1", "to": bob.id, "text": "alice lost her connection"}).to_string();
    let will = LastWill::new(format!("from/{}/msg", alice.id), will_body, QoS::AtLeastOnce, false);
    let mut silent = connected(&app, &alice, 1, Some(will)).await;
    let started = tokio::time::Instant::now();
    read_until_closed(&mut silent, Duration::from_secs(10)).await;
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(1400), "closed too early: {waited:?}");
    let got = b.next_on(&format!("to/{}/msg", bob.id)).await;
    assert_eq!(got["text"], "alice lost her connection");
    assert_eq!(app.message_rows().await, 1);
    app.stop().await;
}

async fn malformed_and_oversized_packets_close_only_that_connection(backend: Backend) {
    let Some(app) = TestApp::spawn_with(backend, |s| s.mqtt.max_packet_size = 4096).await else {
        return;
    };
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let mut b = app.device(&bob, "bob-phone").await;
    let garbage: &[&[u8]] = &[
        &[0x30, 0xFF, 0xFF, 0xFF, 0x7F],             // PUBLISH announcing ~256 MB, no body
        &[0x82, 0x05, 0x00, 0x01, 0x00, 0x01, b'#'], // SUBSCRIBE with a truncated filter
        &[0x30, 0x04, 0x00, 0x09, b'a', b'b'],       // topic length past the packet end
        &[0xF0, 0x00],                               // reserved packet type 15
        &[0x10, 0x02, 0x00, 0x04],                   // a second CONNECT
        &[0x20, 0x02, 0x00, 0x00],                   // CONNACK from a client
    ];
    for bytes in garbage {
        let mut s = connected(&app, &alice, 60, None).await;
        s.write_all(bytes).await.expect("send garbage");
        let started = tokio::time::Instant::now();
        read_until_closed(&mut s, Duration::from_secs(5)).await;
        assert!(started.elapsed() < Duration::from_secs(2), "{bytes:?} was not refused at once");
    }
    let mut big = connected(&app, &alice, 60, None).await;
    let payload = json!({"id": "big", "to": bob.id, "text": "x".repeat(5000)}).to_string();
    let mut buf = BytesMut::new();
    rumqttc::mqttbytes::v4::Publish::new(format!("from/{}/msg", alice.id), QoS::AtMostOnce, payload)
        .write(&mut buf)
        .expect("encode");
    big.write_all(&buf).await.expect("send");
    read_until_closed(&mut big, Duration::from_secs(5)).await;
    assert!(app.gate().stats().malformed_packets.load(std::sync::atomic::Ordering::Relaxed) >= 3);

    // Bob, connected throughout, is unaffected and nothing was stored.
    assert!(b.closed.borrow().is_none());
    assert_eq!(app.message_rows().await, 0);
    let a = app.device(&alice, "alice-phone").await;
    a.publish_json(&format!("from/{}/msg", alice.id), &json!({"id": "ok", "to": bob.id, "text": "after the storm"}))
        .await;
    assert_eq!(b.next_on(&format!("to/{}/msg", bob.id)).await["text"], "after the storm");
    app.stop().await;
}

async fn a_half_sent_connect_is_closed_after_the_connect_timeout(backend: Backend) {
    let Some(app) = TestApp::spawn_with(backend, |s| s.mqtt.connect_timeout_secs = 1).await else {
        return;
    };
    let alice = app.user("alice").await;
    let full = connect_packet("half", &alice.id, &alice.access_token, 30, None);
    let mut idle = TcpStream::connect(app.mqtt).await.expect("tcp");
    let mut half = TcpStream::connect(app.mqtt).await.expect("tcp");
    half.write_all(&full[..full.len() / 2]).await.expect("half");
    // Meanwhile a real device connects at once.
    let started = tokio::time::Instant::now();
    let _ok = app.device(&alice, "alice-phone").await;
    assert!(started.elapsed() < Duration::from_millis(900), "a stalled client delayed another");
    for s in [&mut idle, &mut half] {
        let packets = read_until_closed(s, Duration::from_secs(5)).await;
        assert!(packets.is_empty(), "no CONNACK for an incomplete CONNECT: {packets:?}");
    }
    app.stop().await;
}

async fn qos0_publishes_and_subscriptions_work(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let mut b = common::Device::connect(app.options("bob-qos0", &bob.id, &bob.access_token)).await.expect("connect");
    b.client.subscribe(format!("to/{}/msg", bob.id), rumqttc::QoS::AtMostOnce).await.expect("subscribe");
    let codes = b
        .next_matching(|p| match p {
            rumqttc::Packet::SubAck(a) => Some(a.return_codes.clone()),
            _ => None,
        })
        .await;
    assert_eq!(codes, vec![rumqttc::SubscribeReasonCode::Success(rumqttc::QoS::AtMostOnce)]);
    let a = app.device(&alice, "alice-phone").await;
    let body = json!({"id": "q0", "to": bob.id, "text": "fire and forget"}).to_string();
    a.client.publish(format!("from/{}/msg", alice.id), rumqttc::QoS::AtMostOnce, false, body).await.expect("publish");
    let got = b
        .next_matching(|p| match p {
            rumqttc::Packet::Publish(p) if p.topic.ends_with("/msg") => Some((p.qos, p.payload.clone())),
            _ => None,
        })
        .await;
    assert_eq!(got.0, rumqttc::QoS::AtMostOnce, "delivered at the subscription's QoS");
    assert_eq!(serde_json::from_slice::<serde_json::Value>(&got.1).expect("json")["text"], "fire and forget");
    app.stop().await;
}
