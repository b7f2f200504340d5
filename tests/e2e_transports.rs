//! Every transport the gate serves — MQTT over TCP, TLS, WebSocket (as a browser
//! opens it) and WebSocket over TLS — carrying one conversation between them, the
//! refusals each transport has, and handshakes that stall.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::BytesMut;
use common::raw::{connect_v4, connect_v5, RawClient, TestCert};
use common::{Backend, Device, TestApp};
use rumqttc::mqttbytes::v4;
use rumqttc::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5;
use rumqttc::{TlsConfiguration, Transport};
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

// Transports do not touch the database: these run on SQLite only.

async fn with_every_transport(cert: &TestCert, tweak: impl FnOnce(&mut parley_config::Settings)) -> TestApp {
    let (cert_file, key_file) = (cert.cert_file.clone(), cert.key_file.clone());
    TestApp::spawn_with(Backend::Sqlite, move |s| {
        s.mqtt.tls_listen = "127.0.0.1:0".into();
        s.mqtt.wss_listen = "127.0.0.1:0".into();
        s.mqtt.tls_cert_file = Some(cert_file);
        s.mqtt.tls_key_file = Some(key_file);
        tweak(s);
    })
    .await
    .expect("sqlite app")
}

fn message(to: &str, id: &str, text: &str) -> String {
    json!({"id": id, "to": to, "text": text}).to_string()
}

fn publish_v4(topic: &str, pkid: u16, payload: String) -> BytesMut {
    let mut p = v4::Publish::new(topic, QoS::AtLeastOnce, payload);
    p.pkid = pkid;
    let mut buf = BytesMut::new();
    p.write(&mut buf).expect("encode publish");
    buf
}

/// Reads 3.1.1 packets, acknowledging every QoS 1 PUBLISH, until one on `topic` sent by `sender`; returns its JSON.
async fn next_publish_v4(client: &mut RawClient, topic: &str, sender: &str) -> Value {
    loop {
        if let v4::Packet::Publish(p) = client.next_v4().await.expect("connection open") {
            let mut ack = BytesMut::new();
            v4::PubAck::new(p.pkid).write(&mut ack).expect("encode puback");
            client.send(&ack).await;
            let body: Value = serde_json::from_slice(&p.payload).expect("json");
            if p.topic == topic && body["sender_id"] == sender {
                return body;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_on_tcp_tls_websocket_and_secure_websocket_talk_to_each_other() {
    let cert = TestCert::new();
    let app = with_every_transport(&cert, |_| {}).await;
    let addrs = app.running().gate_addrs;
    let (alice, bob, carol, dave) =
        (app.user("alice").await, app.user("bob").await, app.user("carol").await, app.user("dave").await);

    // Bob: rumqttc over plain TCP.
    let mut b = app.device(&bob, "bob-phone").await;

    // Alice: rumqttc over TLS, trusting only the gate's certificate.
    let mut options_tls =
        rumqttc::MqttOptions::new("alice-tls", "127.0.0.1", addrs.mqtts.expect("tls listener").port());
    options_tls.set_credentials(alice.id.clone(), alice.access_token.clone());
    options_tls.set_transport(Transport::Tls(TlsConfiguration::Rustls(cert.client_config())));
    let mut a = Device::connect(options_tls).await.expect("alice connects over TLS");
    a.subscribe(&format!("to/{}/#", alice.id)).await;

    // Carol: a browser's MQTT library over WebSocket; the CONNECT split over two
    // messages, then SUBSCRIBE and PUBLISH together in one.
    let mut c = RawClient::ws(addrs.ws.expect("ws listener"), "/mqtt", None).await;
    let connect = connect_v4("carol-browser", &carol.id, &carol.access_token, 30);
    let (first, second) = connect.split_at(7);
    c.send(first).await;
    c.send(second).await;
    assert!(matches!(c.next_v4().await, Some(v4::Packet::ConnAck(ack)) if ack.code == v4::ConnectReturnCode::Success));
    let mut batch = BytesMut::new();
    v4::Subscribe::new(format!("to/{}/#", carol.id), QoS::AtLeastOnce).write(&mut batch).expect("encode subscribe");
    batch.extend_from_slice(&publish_v4(
        &format!("from/{}/msg", carol.id),
        7,
        message(&bob.id, "c1", "from a browser"),
    ));
    c.send(&batch).await;
    let mut acks = Vec::new();
    while acks.len() < 2 {
        match c.next_v4().await.expect("open") {
            v4::Packet::SubAck(s) => acks.push(format!("suback {:?}", s.return_codes)),
            v4::Packet::PubAck(p) => acks.push(format!("puback {}", p.pkid)),
            _ => {}
        }
    }
    acks.sort();
    assert_eq!(acks, ["puback 7", "suback [Success(AtLeastOnce)]"]);
    let got = b.next_on(&format!("to/{}/msg", bob.id)).await;
    assert_eq!((got["text"].as_str(), got["sender_id"].as_str()), (Some("from a browser"), Some(carol.id.as_str())));

    // Dave: MQTT 5 over WebSocket over TLS.
    let mut d = RawClient::ws(addrs.wss.expect("wss listener"), "/mqtt", Some(&cert)).await;
    d.send(&connect_v5("dave-wss", &dave.id, &dave.access_token, 30)).await;
    match d.next_v5().await {
        Some(v5::Packet::ConnAck(ack)) => {
            assert_eq!(ack.code, v5::ConnectReturnCode::Success);
            let props = ack.properties.expect("v5 CONNACK properties");
            assert_eq!(props.max_packet_size, Some(256 * 1024), "the gate announces its maximum packet size");
        }
        other => panic!("expected CONNACK, got {other:?}"),
    }
    let mut sub = BytesMut::new();
    v5::Packet::Subscribe(v5::Subscribe::new(
        v5::Filter::new(format!("to/{}/#", dave.id), rumqttc::v5::mqttbytes::QoS::AtLeastOnce),
        None,
    ))
    .write(&mut sub, None)
    .expect("encode");
    d.send(&sub).await;
    assert!(matches!(d.next_v5().await, Some(v5::Packet::SubAck(_))));

    // Round the table: bob → alice (TCP → TLS), alice → dave (TLS → WSS), dave → carol (WSS → WS).
    b.publish_json(&format!("from/{}/msg", bob.id), &json!({"id": "b1", "to": alice.id, "text": "hi alice"})).await;
    assert_eq!(a.next_on(&format!("to/{}/msg", alice.id)).await["text"], "hi alice");
    a.publish_json(&format!("from/{}/msg", alice.id), &json!({"id": "a1", "to": dave.id, "text": "hi dave"})).await;
    let got = loop {
        match d.next_v5().await.expect("open") {
            v5::Packet::Publish(p) if p.topic == format!("to/{}/msg", dave.id).as_bytes() => {
                let mut ack = BytesMut::new();
                v5::Packet::PubAck(v5::PubAck::new(p.pkid, None)).write(&mut ack, None).expect("encode");
                d.send(&ack).await;
                break serde_json::from_slice::<Value>(&p.payload).expect("json");
            }
            _ => continue,
        }
    };
    assert_eq!(got["text"], "hi dave");
    let mut pubd = BytesMut::new();
    let mut p = v5::Publish::new(
        format!("from/{}/msg", dave.id),
        rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
        message(&carol.id, "d1", "hi carol"),
        None,
    );
    p.pkid = 1;
    v5::Packet::Publish(p).write(&mut pubd, None).expect("encode");
    d.send(&pubd).await;
    assert_eq!(next_publish_v4(&mut c, &format!("to/{}/msg", carol.id), &dave.id).await["text"], "hi carol");
    assert_eq!(app.message_rows().await, 4);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_and_tls_refusals_are_clear_and_touch_no_one_else() {
    let cert = TestCert::new();
    let app = with_every_transport(&cert, |_| {}).await;
    let addrs = app.running().gate_addrs;
    let ws = addrs.ws.expect("ws listener");
    let (alice, bob) = (app.user("alice").await, app.user("bob").await);
    let mut b = app.device(&bob, "bob-phone").await;

    // The wrong path is a 404; a browser offering only other subprotocols a 400.
    let request = common::raw::browser_request(&format!("ws://{ws}/chat"));
    match tokio_tungstenite::client_async(request, TcpStream::connect(ws).await.expect("tcp")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => assert_eq!(response.status(), 404),
        other => panic!("expected 404, got {:?}", other.map(|(_, r)| r.status())),
    }
    let mut request = common::raw::browser_request(&format!("ws://{ws}/mqtt"));
    request.headers_mut().insert("Sec-WebSocket-Protocol", "graphql-ws".parse().expect("header"));
    match tokio_tungstenite::client_async(request, TcpStream::connect(ws).await.expect("tcp")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => assert_eq!(response.status(), 400),
        other => panic!("expected 400, got {:?}", other.map(|(_, r)| r.status())),
    }
    // A client that offers no subprotocol at all is served anyway.
    let request = format!("ws://{ws}/mqtt");
    let (mut lenient, _) = tokio_tungstenite::client_async(request, TcpStream::connect(ws).await.expect("tcp"))
        .await
        .expect("upgrade without a subprotocol");
    use futures_util::{SinkExt, StreamExt};
    let connect = connect_v4("lenient", &alice.id, &alice.access_token, 30);
    lenient.send(tokio_tungstenite::tungstenite::Message::Binary(connect.freeze())).await.expect("send");
    match lenient.next().await {
        Some(Ok(tokio_tungstenite::tungstenite::Message::Binary(b))) => assert_eq!(&b[..], [0x20, 0x02, 0x00, 0x00]),
        other => panic!("expected a CONNACK, got {other:?}"),
    }

    // A text frame is not MQTT: that connection ends, counted as malformed.
    let mut texting = RawClient::ws(ws, "/mqtt", None).await;
    texting.send(&connect_v4("texting", &alice.id, &alice.access_token, 30)).await;
    assert!(matches!(texting.next_v4().await, Some(v4::Packet::ConnAck(_))));
    texting.send_text("{\"hello\":1}").await;
    assert!(texting.closed_within(Duration::from_secs(5)).await, "a text frame closes the connection");

    // A packet over the maximum size inside a WebSocket message: refused like on TCP.
    let mut big = RawClient::ws(ws, "/mqtt", None).await;
    big.send(&connect_v4("big", &alice.id, &alice.access_token, 30)).await;
    assert!(matches!(big.next_v4().await, Some(v4::Packet::ConnAck(_))));
    big.send(&[0x30, 0xFF, 0xFF, 0xFF, 0x7F]).await;
    assert!(big.closed_within(Duration::from_secs(5)).await, "a huge announced length closes the connection");

    // A TLS client that does not trust the certificate fails its handshake; MQTT bytes
    // sent in clear to the TLS port end the connection.
    let tls = addrs.mqtts.expect("tls listener");
    let before = app.gate().stats().handshakes_failed.load(Ordering::Relaxed);
    let stranger = TestCert::new();
    let connector = tokio_rustls::TlsConnector::from(stranger.client_config());
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name");
    assert!(connector.connect(name, TcpStream::connect(tls).await.expect("tcp")).await.is_err());
    let mut clear = TcpStream::connect(tls).await.expect("tcp");
    clear.write_all(&connect_v4("clear", &alice.id, &alice.access_token, 30)).await.expect("send");
    let mut clear = RawClient::tcp_from(clear);
    assert!(clear.closed_within(Duration::from_secs(5)).await);
    let plain_http = reqwest::get(format!("http://{ws}/mqtt")).await;
    assert!(!matches!(&plain_http, Ok(r) if r.status().is_success()), "a plain HTTP request: {plain_http:?}");
    let stats = app.gate().stats();
    // The gate counts a failed handshake once it sees the failure, which may be
    // after the client gave up on it.
    let failed = || stats.handshakes_failed.load(Ordering::Relaxed);
    common::wait_until("the three failed handshakes are counted", || failed() >= before + 3).await;
    assert!(stats.malformed_packets.load(Ordering::Relaxed) >= 1);

    // Bob saw none of it and still chats.
    assert!(b.closed.borrow().is_none());
    let a = app.device(&alice, "alice-phone").await;
    a.publish_json(&format!("from/{}/msg", alice.id), &json!({"id": "ok", "to": bob.id, "text": "still here"})).await;
    assert_eq!(b.next_on(&format!("to/{}/msg", bob.id)).await["text"], "still here");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_handshakes_never_delay_others_and_are_closed_after_the_timeout() {
    let cert = TestCert::new();
    let app = with_every_transport(&cert, |s| s.mqtt.connect_timeout_secs = 1).await;
    let addrs = app.running().gate_addrs;
    let (tcp, tls, ws, wss) =
        (addrs.mqtt.expect("tcp"), addrs.mqtts.expect("tls"), addrs.ws.expect("ws"), addrs.wss.expect("wss"));
    let alice = app.user("alice").await;
    let started = tokio::time::Instant::now();
    let mut stalled = vec![
        ("idle TCP", RawClient::tcp(tcp).await),
        ("idle on the TLS port", RawClient::tcp(tls).await),
        ("idle on the WebSocket port", RawClient::tcp(ws).await),
        ("TLS done, no upgrade", RawClient::tls(wss, &cert).await),
        ("TLS done, no CONNECT", RawClient::tls(tls, &cert).await),
    ];
    let mut half_hello = RawClient::tcp(tls).await;
    // A TLS record header announcing a ClientHello that never comes.
    half_hello.send(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00]).await;
    stalled.push(("half a TLS handshake", half_hello));
    let mut half_upgrade = RawClient::tcp(ws).await;
    half_upgrade.send(b"GET /mqtt HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n").await;
    stalled.push(("half a WebSocket upgrade", half_upgrade));
    let mut half_secure_upgrade = RawClient::tls(wss, &cert).await;
    half_secure_upgrade.send(b"GET /mqtt HTTP/1.1\r\nHost: 127.0.0.1\r\n").await;
    stalled.push(("half a WebSocket upgrade over TLS", half_secure_upgrade));
    let mut half_connect = RawClient::ws(ws, "/mqtt", None).await;
    let connect = connect_v4("half", &alice.id, &alice.access_token, 30);
    half_connect.send(&connect[..connect.len() / 2]).await;
    stalled.push(("half a CONNECT over WebSocket", half_connect));

    // Meanwhile devices connect on every transport at once.
    for (kind, mut client, v5) in [
        ("tcp", RawClient::tcp(tcp).await, false),
        ("tls", RawClient::tls(tls, &cert).await, true),
        ("ws", RawClient::ws(ws, "/mqtt", None).await, false),
        ("wss", RawClient::ws(wss, "/mqtt", Some(&cert)).await, true),
    ] {
        let id = format!("alice-{kind}");
        if v5 {
            client.send(&connect_v5(&id, &alice.id, &alice.access_token, 30)).await;
            assert!(
                matches!(client.next_v5().await, Some(v5::Packet::ConnAck(a)) if a.code == v5::ConnectReturnCode::Success)
            );
        } else {
            client.send(&connect_v4(&id, &alice.id, &alice.access_token, 30)).await;
            assert!(
                matches!(client.next_v4().await, Some(v4::Packet::ConnAck(a)) if a.code == v4::ConnectReturnCode::Success)
            );
        }
    }
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "stalled handshakes delayed others: {:?}",
        started.elapsed()
    );

    for (what, client) in &mut stalled {
        assert!(client.closed_within(Duration::from_secs(5)).await, "{what} was never closed");
    }
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(950), "closed before the time-out: {waited:?}");
    // Counted as the gate drops the connection, just after the device sees it close.
    let timed_out = || app.gate().stats().handshakes_timed_out.load(Ordering::Relaxed);
    common::wait_until("every stalled handshake is counted", || timed_out() >= stalled.len() as u64).await;
    assert_eq!(timed_out(), stalled.len() as u64);
    app.stop().await;
}
