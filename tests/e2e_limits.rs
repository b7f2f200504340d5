//! The gate's limits, each pushed past its edge by a real client: rates that slow a
//! device down without losing what it sent, admission that refuses before the token
//! is checked, sizes refused in each protocol version's own terms, and a flood of
//! connections that leaves established devices alone.
//!
//! Limits do not touch the database: these run on SQLite only.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::BytesMut;
use common::raw::{connect_v4, connect_v5, RawClient};
use common::{Backend, TestApp};
use rumqttc::mqttbytes::v4;
use rumqttc::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5;
use serde_json::json;

async fn app_with(tweak: impl FnOnce(&mut parley_config::Settings)) -> TestApp {
    TestApp::spawn_with(Backend::Sqlite, tweak).await.expect("sqlite app")
}

async fn connack_v5(client: &mut RawClient) -> v5::ConnAck {
    match client.next_v5().await {
        Some(v5::Packet::ConnAck(ack)) => ack,
        other => panic!("expected CONNACK, got {other:?}"),
    }
}

async fn connack_v4(client: &mut RawClient) -> v4::ConnectReturnCode {
    match client.next_v4().await {
        Some(v4::Packet::ConnAck(ack)) => ack.code,
        other => panic!("expected CONNACK, got {other:?}"),
    }
}

/// Sends `count` chat messages from a new device of `from` to `to`; returns the device.
async fn send_burst(
    app: &TestApp,
    from: &common::TestUser,
    to: &common::TestUser,
    count: usize,
    text: &str,
) -> common::Device {
    let d = app.device(from, &format!("{}-burst", from.login)).await;
    for i in 0..count {
        let body = json!({"id": format!("m{i}"), "to": to.id, "text": format!("{text} {i}")});
        d.publish_json(&format!("from/{}/msg", from.id), &body).await;
    }
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_over_its_publish_rate_is_slowed_down_and_loses_nothing() {
    let app = app_with(|s| {
        s.mqtt.publish_rate_per_sec = 5;
        s.mqtt.publish_burst = 5;
    })
    .await;
    let (alice, bob) = (app.user("alice").await, app.user("bob").await);
    let mut b = app.device(&bob, "bob-phone").await;
    let started = tokio::time::Instant::now();
    let _sender = send_burst(&app, &alice, &bob, 15, "hello").await;
    let mut texts = Vec::new();
    for _ in 0..15 {
        texts.push(b.next_on(&format!("to/{}/msg", bob.id)).await["text"].as_str().expect("text").to_string());
    }
    let took = started.elapsed();
    assert_eq!(texts, (0..15).map(|i| format!("hello {i}")).collect::<Vec<_>>(), "all delivered, in order");
    // Ten publishes past a burst of five at five per second cannot take less than two seconds.
    assert!(took >= Duration::from_millis(1900), "the rate was not applied: {took:?}");
    assert!(app.gate().stats().connections_throttled.load(Ordering::Relaxed) >= 1);
    assert_eq!(app.message_rows().await, 15);
    // Bob's own connection has its own bucket.
    let started = tokio::time::Instant::now();
    for i in 0..5 {
        b.publish_json(&format!("from/{}/msg", bob.id), &json!({"id": format!("r{i}"), "to": alice.id, "text": "re"}))
            .await;
    }
    for _ in 0..5 {
        b.next_on(&format!("to/{}/ack", bob.id)).await;
    }
    assert!(started.elapsed() < Duration::from_millis(900), "another device was slowed: {:?}", started.elapsed());
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_over_its_byte_rate_is_slowed_down_and_loses_nothing() {
    let app = app_with(|s| {
        s.mqtt.max_packet_size = 8 * 1024;
        s.mqtt.bytes_per_sec = 8 * 1024;
        s.mqtt.bytes_burst = 8 * 1024;
    })
    .await;
    let (alice, bob) = (app.user("alice").await, app.user("bob").await);
    let mut b = app.device(&bob, "bob-phone").await;
    let started = tokio::time::Instant::now();
    let text = "x".repeat(2000);
    let _sender = send_burst(&app, &alice, &bob, 12, &text).await;
    for i in 0..12 {
        let got = b.next_on(&format!("to/{}/msg", bob.id)).await;
        assert_eq!(got["text"], format!("{text} {i}"));
    }
    // About 24 KiB at 8 KiB/s after a burst of 8 KiB: two seconds. The gate reads, then pays, so
    // the last read (at most one burst) comes free: never less than one second.
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(1000), "the byte rate was not applied: {took:?}");
    assert!(app.gate().stats().connections_throttled.load(Ordering::Relaxed) >= 1);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_opening_connections_too_fast_is_refused_before_its_token_is_checked() {
    let app = app_with(|s| {
        s.mqtt.connections_per_sec_per_address = 1;
        s.mqtt.connections_burst_per_address = 3;
    })
    .await;
    let alice = app.user("alice").await;
    for i in 0..3 {
        let mut c = RawClient::tcp(app.mqtt).await;
        c.send(&connect_v5(&format!("c{i}"), &alice.id, &alice.access_token, 30)).await;
        assert_eq!(connack_v5(&mut c).await.code, v5::ConnectReturnCode::Success);
    }
    // A forged token would be "bad user name or password"; the rate answers first.
    let mut v5c = RawClient::tcp(app.mqtt).await;
    v5c.send(&connect_v5("c4", &alice.id, "not-a-token", 30)).await;
    assert_eq!(connack_v5(&mut v5c).await.code, v5::ConnectReturnCode::ConnectionRateExceeded);
    assert!(v5c.closed_within(Duration::from_secs(5)).await);
    let mut v4c = RawClient::tcp(app.mqtt).await;
    v4c.send(&connect_v4("c5", &alice.id, &alice.access_token, 30)).await;
    assert_eq!(connack_v4(&mut v4c).await, v4::ConnectReturnCode::ServiceUnavailable);
    let stats = app.gate().stats();
    assert_eq!(stats.connections_rate_limited.load(Ordering::Relaxed), 2);
    // The bucket refills: a second later the address may connect again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut again = RawClient::tcp(app.mqtt).await;
    again.send(&connect_v5("c6", &alice.id, &alice.access_token, 30)).await;
    assert_eq!(connack_v5(&mut again).await.code, v5::ConnectReturnCode::Success);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_reconnecting_in_a_tight_loop_is_banned_and_others_are_not() {
    let app = app_with(|s| {
        s.mqtt.flapping_max_connects = 3;
        s.mqtt.flapping_window_secs = 60;
        s.mqtt.flapping_ban_secs = 300;
    })
    .await;
    let alice = app.user("alice").await;
    for _ in 0..3 {
        let mut c = RawClient::tcp(app.mqtt).await;
        c.send(&connect_v5("flappy", &alice.id, &alice.access_token, 30)).await;
        assert_eq!(connack_v5(&mut c).await.code, v5::ConnectReturnCode::Success);
    }
    let mut banned = RawClient::tcp(app.mqtt).await;
    banned.send(&connect_v5("flappy", &alice.id, &alice.access_token, 30)).await;
    assert_eq!(connack_v5(&mut banned).await.code, v5::ConnectReturnCode::Banned);
    let mut banned_v4 = RawClient::tcp(app.mqtt).await;
    banned_v4.send(&connect_v4("flappy", &alice.id, &alice.access_token, 30)).await;
    assert_eq!(connack_v4(&mut banned_v4).await, v4::ConnectReturnCode::ServiceUnavailable);
    assert_eq!(app.gate().stats().connections_banned.load(Ordering::Relaxed), 2);
    // Operators see it on the metrics page.
    let page = app.client.get(format!("{}/metrics", app.http)).send().await.expect("metrics");
    assert_eq!(page.status(), 200);
    assert!(page.headers()["content-type"].to_str().expect("type").starts_with("text/plain"));
    let page = page.text().await.expect("text");
    for line in ["parley_gate_connections_banned_total 2", "parley_gate_connections_accepted_total 3"] {
        assert!(page.lines().any(|l| l == line), "{line} in:\n{page}");
    }
    assert!(page.contains("# TYPE parley_gate_connections_banned_total counter"));
    // The same user's other device is not the flapping client.
    let mut other = RawClient::tcp(app.mqtt).await;
    other.send(&connect_v5("steady", &alice.id, &alice.access_token, 30)).await;
    assert_eq!(connack_v5(&mut other).await.code, v5::ConnectReturnCode::Success);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_topics_and_keepalives_past_the_limits_are_refused_in_each_versions_terms() {
    let app = app_with(|s| {
        s.mqtt.max_client_id_len = 64;
        s.mqtt.max_topic_levels = 5;
        s.mqtt.max_topic_len = 120;
        s.mqtt.max_keep_alive_secs = 60;
        s.mqtt.max_inflight = 2;
    })
    .await;
    let alice = app.user("alice").await;
    let long_id = "k".repeat(65);

    // Client ids: v5 0x85, 3.1.1 0x02.
    let mut c = RawClient::tcp(app.mqtt).await;
    c.send(&connect_v5(&long_id, &alice.id, &alice.access_token, 30)).await;
    assert_eq!(connack_v5(&mut c).await.code, v5::ConnectReturnCode::ClientIdentifierNotValid);
    let mut c = RawClient::tcp(app.mqtt).await;
    c.send(&connect_v4(&long_id, &alice.id, &alice.access_token, 30)).await;
    assert_eq!(connack_v4(&mut c).await, v4::ConnectReturnCode::BadClientId);

    // Keepalive: a v5 device asking too much (or none) is told the server's; 3.1.1 is refused.
    for asked in [120, 0] {
        let mut c = RawClient::tcp(app.mqtt).await;
        c.send(&connect_v5(&format!("ka{asked}"), &alice.id, &alice.access_token, asked)).await;
        let ack = connack_v5(&mut c).await;
        assert_eq!(ack.code, v5::ConnectReturnCode::Success);
        assert_eq!(ack.properties.expect("properties").server_keep_alive, Some(60), "asked {asked}");
    }
    let mut c = RawClient::tcp(app.mqtt).await;
    c.send(&connect_v5("ka30", &alice.id, &alice.access_token, 30)).await;
    assert_eq!(connack_v5(&mut c).await.properties.expect("properties").server_keep_alive, None);
    let mut c = RawClient::tcp(app.mqtt).await;
    c.send(&connect_v4("ka-v4", &alice.id, &alice.access_token, 120)).await;
    assert_eq!(connack_v4(&mut c).await, v4::ConnectReturnCode::BadClientId);

    // Filters too deep or too long: SUBACK 0x8F (v5) / 0x80 (3.1.1) for that filter only.
    let mut c = RawClient::tcp(app.mqtt).await;
    c.send(&connect_v5("subs", &alice.id, &alice.access_token, 30)).await;
    connack_v5(&mut c).await;
    let deep = format!("to/{}/a/b/c/d", alice.id);
    let long = format!("to/{}/{}", alice.id, "l".repeat(100));
    let ok = format!("to/{}/a/#", alice.id);
    let mut sub = v5::Subscribe::new(v5::Filter::new(deep, rumqttc::v5::mqttbytes::QoS::AtLeastOnce), None);
    sub.filters.push(v5::Filter::new(long, rumqttc::v5::mqttbytes::QoS::AtLeastOnce));
    sub.filters.push(v5::Filter::new(ok, rumqttc::v5::mqttbytes::QoS::AtLeastOnce));
    let mut buf = BytesMut::new();
    v5::Packet::Subscribe(sub).write(&mut buf, None).expect("encode");
    c.send(&buf).await;
    match c.next_v5().await {
        Some(v5::Packet::SubAck(ack)) => assert_eq!(
            ack.return_codes,
            vec![
                v5::SubscribeReasonCode::TopicFilterInvalid,
                v5::SubscribeReasonCode::TopicFilterInvalid,
                v5::SubscribeReasonCode::Success(rumqttc::v5::mqttbytes::QoS::AtLeastOnce),
            ]
        ),
        other => panic!("expected SUBACK, got {other:?}"),
    }
    // A topic name too deep: v5 DISCONNECT 0x90 (topic name invalid).
    let mut buf = BytesMut::new();
    let publish =
        v5::Publish::new(format!("from/{}/msg/a/b/c", alice.id), rumqttc::v5::mqttbytes::QoS::AtMostOnce, "{}", None);
    v5::Packet::Publish(publish).write(&mut buf, None).expect("encode");
    c.send(&buf).await;
    match c.next_v5().await {
        Some(v5::Packet::Disconnect(d)) => assert_eq!(d.reason_code, v5::DisconnectReasonCode::TopicNameInvalid),
        other => panic!("expected DISCONNECT, got {other:?}"),
    }
    assert!(c.closed_within(Duration::from_secs(5)).await);

    // More unreleased QoS 2 publishes than the Receive Maximum: 3.1.1 has no reason code, it is closed.
    let mut c = RawClient::tcp(app.mqtt).await;
    c.send(&connect_v4("qos2", &alice.id, &alice.access_token, 30)).await;
    connack_v4(&mut c).await;
    for pkid in 1..=3u16 {
        let mut p = v4::Publish::new(format!("from/{}/typing", alice.id), QoS::ExactlyOnce, "{}");
        p.pkid = pkid;
        let mut buf = BytesMut::new();
        p.write(&mut buf).expect("encode");
        c.send(&buf).await;
    }
    let mut recs = 0;
    while let Some(p) = c.next_v4().await {
        assert!(matches!(p, v4::Packet::PubRec(_)), "{p:?}");
        recs += 1;
    }
    assert_eq!(recs, 2, "two PUBRECs, then the connection closed");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_flood_leaves_established_devices_alone_and_reconnects_go_through() {
    // Every client here comes from 127.0.0.1: the per-address rate is off for the flood.
    let app = app_with(|s| {
        s.mqtt.connections_per_sec_per_address = 0;
        s.mqtt.connect_timeout_secs = 2;
    })
    .await;
    let (alice, bob) = (app.user("alice").await, app.user("bob").await);
    let a = app.device(&alice, "alice-phone").await;
    let mut b = app.device(&bob, "bob-phone").await;

    let mut flood = Vec::new();
    for i in 0..600 {
        let mut c = RawClient::tcp(app.mqtt).await;
        match i % 3 {
            0 => {}
            1 => c.send(&[0x10, 0xFF, 0xFF, 0xFF, 0x7F]).await, // a CONNECT announcing 256 MB
            _ => {
                let connect = connect_v4(&format!("flood-{i}"), &alice.id, &alice.access_token, 30);
                c.send(&connect[..connect.len() - 3]).await;
            }
        }
        flood.push(c);
    }
    // Established devices keep talking while the flood hangs on.
    for i in 0..5 {
        let body = json!({"id": format!("during-{i}"), "to": bob.id, "text": format!("during {i}")});
        a.publish_json(&format!("from/{}/msg", alice.id), &body).await;
        assert_eq!(b.next_on(&format!("to/{}/msg", bob.id)).await["text"], format!("during {i}"));
    }
    // New devices still get in at once.
    let started = tokio::time::Instant::now();
    let carol = app.user("carol").await;
    let _c = app.device(&carol, "carol-phone").await;
    assert!(started.elapsed() < Duration::from_secs(2), "a new device waited {:?}", started.elapsed());
    drop(flood);
    // Then everyone reconnects.
    drop(a);
    drop(b);
    let mut devices = Vec::new();
    for i in 0..30 {
        let user = if i % 2 == 0 { &alice } else { &bob };
        devices.push(app.device(user, &format!("reconnect-{i}")).await);
    }
    devices[0]
        .publish_json(&format!("from/{}/msg", alice.id), &json!({"id": "after", "to": bob.id, "text": "after"}))
        .await;
    assert_eq!(devices[1].next_on(&format!("to/{}/msg", bob.id)).await["text"], "after");
    assert_eq!(app.gate().stats().connections_accepted.load(Ordering::Relaxed), 3 + 30);
    app.stop().await;
}
