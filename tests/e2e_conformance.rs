//! MQTT 5 behaviour the standard asks of a server, checked packet by packet with
//! raw clients: topic aliases both ways, QoS 2 from a v5 device, subscription
//! identifiers, will delay, the short forms of DISCONNECT, Receive Maximum.
//!
//! The gate's behaviour here does not depend on the database: SQLite only.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use common::v5::{connect_info, disconnect_reason, next_publish, publish, send, subscribe, v5_client};
use common::{Backend, TestApp};
use parley_wire::codec::{ConnectInfo, Inbound, Will};
use rumqttc::v5::mqttbytes::v5;
use serde_json::{json, Value};

async fn app() -> TestApp {
    TestApp::spawn_with(Backend::Sqlite, |s| s.mqtt.max_inflight = 2).await.expect("sqlite app")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_aliases_work_in_both_directions() {
    let app = app().await;
    let (alice, bob) = (app.user("alice").await, app.user("bob").await);
    let mut b = app.device(&bob, "bob-phone").await;
    let info = ConnectInfo { topic_alias_max: 5, ..connect_info(Some(&alice), "alice-v5") };
    let (mut a, ack) = v5_client(app.mqtt, &info).await;
    assert_eq!(ack.properties.expect("properties").topic_alias_max, Some(32), "the gate accepts 32 aliases");
    subscribe(&mut a, &format!("to/{}/#", alice.id), None).await;

    // Device → gate: the alias is set with the topic, then used alone.
    let uplink = format!("from/{}/msg", alice.id);
    send(&mut a, publish(&uplink, 1, 10, Some(3), &json!({"id": "m1", "to": bob.id, "text": "one"}))).await;
    send(&mut a, publish("", 1, 11, Some(3), &json!({"id": "m2", "to": bob.id, "text": "two"}))).await;
    assert_eq!(b.next_on(&format!("to/{}/msg", bob.id)).await["text"], "one");
    assert_eq!(b.next_on(&format!("to/{}/msg", bob.id)).await["text"], "two");

    // Gate → device: the first message on a topic carries it and an alias, the next only the alias.
    for i in 0..3 {
        b.publish_json(
            &format!("from/{}/msg", bob.id),
            &json!({"id": format!("r{i}"), "to": alice.id, "text": format!("r{i}")}),
        )
        .await;
    }
    let mut aliases: HashMap<u16, String> = HashMap::new();
    let mut seen = Vec::new();
    while seen.iter().filter(|(t, _): &&(String, Value)| t.ends_with("/msg")).count() < 5 {
        let p = next_publish(&mut a).await;
        let alias = p.properties.as_ref().and_then(|pr| pr.topic_alias).expect("every delivery uses an alias");
        assert!(alias >= 1 && alias <= 5, "within the device's maximum: {alias}");
        let topic = if p.topic.is_empty() {
            aliases.get(&alias).cloned().expect("an alias is set before it is used alone")
        } else {
            let topic = String::from_utf8(p.topic.to_vec()).expect("utf-8");
            assert!(aliases.insert(alias, topic.clone()).is_none(), "an alias is set once");
            topic
        };
        seen.push((topic, serde_json::from_slice::<Value>(&p.payload).expect("json")));
    }
    let texts: Vec<_> = seen
        .iter()
        .filter(|(t, v)| t.ends_with("/msg") && v["sender_id"] == bob.id.as_str())
        .map(|(_, v)| v["text"].clone())
        .collect();
    assert_eq!(texts, [json!("r0"), json!("r1"), json!("r2")]);
    assert!(aliases.values().any(|t| *t == format!("to/{}/msg", alice.id)));

    // An alias never set is a protocol error; one above the maximum is invalid.
    send(&mut a, publish("", 0, 0, Some(9), &json!({}))).await;
    assert_eq!(disconnect_reason(&mut a).await, v5::DisconnectReasonCode::ProtocolError);
    let (mut a, _) = v5_client(app.mqtt, &info).await;
    send(&mut a, publish(&uplink, 0, 0, Some(33), &json!({}))).await;
    assert_eq!(disconnect_reason(&mut a).await, v5::DisconnectReasonCode::TopicAliasInvalid);
    assert_eq!(app.message_rows().await, 5);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v5_qos2_publish_is_delivered_exactly_once_even_when_resent() {
    let app = app().await;
    let (alice, bob) = (app.user("alice").await, app.user("bob").await);
    let mut b = app.device(&bob, "bob-phone").await;
    let (mut a, ack) = v5_client(app.mqtt, &connect_info(Some(&alice), "alice-v5")).await;
    assert_eq!(ack.properties.expect("properties").max_qos, None, "no Maximum QoS: 2 is available");
    let body = json!({"id": "q2", "to": bob.id, "text": "exactly once"});
    let uplink = format!("from/{}/msg", alice.id);
    send(&mut a, publish(&uplink, 2, 5, None, &body)).await;
    assert!(
        matches!(a.next_v5().await, Some(v5::Packet::PubRec(r)) if r.pkid == 5 && r.reason == v5::PubRecReason::Success)
    );
    // The PUBREC was "lost": the device sends the PUBLISH again with DUP.
    let mut again = publish(&uplink, 2, 5, None, &body);
    if let Inbound::Publish(p) = &mut again {
        p.dup = true;
    }
    send(&mut a, again).await;
    assert!(matches!(a.next_v5().await, Some(v5::Packet::PubRec(r)) if r.pkid == 5));
    send(&mut a, Inbound::PubRel(5)).await;
    assert!(matches!(a.next_v5().await, Some(v5::Packet::PubComp(c)) if c.pkid == 5));
    assert_eq!(b.next_on(&format!("to/{}/msg", bob.id)).await["text"], "exactly once");
    assert!(b.nothing_on(&format!("to/{}/msg", bob.id), Duration::from_millis(500)).await, "delivered once");
    assert_eq!(app.message_rows().await, 1);

    // More unreleased QoS 2 publishes than the announced Receive Maximum (2): DISCONNECT 0x93.
    for pkid in 20..23u16 {
        send(&mut a, publish(&format!("from/{}/typing", alice.id), 2, pkid, None, &json!({}))).await;
    }
    assert_eq!(disconnect_reason(&mut a).await, v5::DisconnectReasonCode::ReceiveMaximumExceeded);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_carry_the_identifiers_of_the_subscriptions_they_match() {
    let app = app().await;
    let (alice, bob) = (app.user("alice").await, app.user("bob").await);
    let b = app.device(&bob, "bob-phone").await;
    let (mut a, ack) = v5_client(app.mqtt, &connect_info(Some(&alice), "alice-v5")).await;
    assert_eq!(ack.properties.expect("properties").subscription_identifiers_available, Some(1));
    subscribe(&mut a, &format!("to/{}/msg", alice.id), Some(7)).await;
    subscribe(&mut a, &format!("to/{}/#", alice.id), Some(9)).await;
    b.publish_json(&format!("from/{}/msg", bob.id), &json!({"id": "s1", "to": alice.id, "text": "hi"})).await;
    let p = loop {
        let p = next_publish(&mut a).await;
        if p.topic == format!("to/{}/msg", alice.id).as_bytes() {
            break p;
        }
    };
    let mut ids = p.properties.expect("properties").subscription_identifiers;
    ids.sort();
    assert_eq!(ids, [7, 9]);
    // Alice's own send: its acknowledgement matches only the wildcard subscription.
    let uplink = format!("from/{}/msg", alice.id);
    send(&mut a, publish(&uplink, 1, 3, None, &json!({"id": "s2", "to": bob.id, "text": "back"}))).await;
    let ack = loop {
        let p = next_publish(&mut a).await;
        if p.topic == format!("to/{}/ack", alice.id).as_bytes() {
            break p;
        }
    };
    assert_eq!(ack.properties.expect("properties").subscription_identifiers, [9]);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_will_waits_for_its_delay_and_a_resumed_session_cancels_it() {
    let app = app().await;
    let (alice, bob) = (app.user("alice").await, app.user("bob").await);
    let mut b = app.device(&bob, "bob-phone").await;
    let bob_msgs = format!("to/{}/msg", bob.id);
    let will = |id: &str, delay: u32| Will {
        topic: format!("from/{}/msg", alice.id),
        payload: Bytes::from(json!({"id": id, "to": bob.id, "text": format!("will {id}")}).to_string()),
        qos: 1,
        delay,
        retain: false,
        properties: None,
    };

    // Lost connection, will delay 2 s, session kept 60 s: the will comes after the delay.
    let info = ConnectInfo {
        clean_start: false,
        session_expiry: Some(60),
        will: Some(will("w1", 2)),
        ..connect_info(Some(&alice), "alice-will")
    };
    let (a, _) = v5_client(app.mqtt, &info).await;
    let lost = tokio::time::Instant::now();
    drop(a);
    assert!(b.nothing_on(&bob_msgs, Duration::from_millis(1200)).await, "the will waited for its delay");
    assert_eq!(b.next_on(&bob_msgs).await["text"], "will w1");
    assert!(lost.elapsed() >= Duration::from_millis(1900));

    // Lost again, but back within the delay: the will is cancelled.
    let info = ConnectInfo { will: Some(will("w2", 3)), ..info };
    let (a, _) = v5_client(app.mqtt, &info).await;
    drop(a);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (back, ack) = v5_client(app.mqtt, &ConnectInfo { will: None, ..info.clone() }).await;
    assert!(ack.session_present);
    assert!(b.nothing_on(&bob_msgs, Duration::from_millis(3500)).await, "a resumed session cancels the will");

    // A clean session ends with its connection: the will goes at once, whatever the delay.
    let info = ConnectInfo { will: Some(will("w3", 30)), ..connect_info(Some(&alice), "alice-clean") };
    let (a, _) = v5_client(app.mqtt, &info).await;
    drop(a);
    assert_eq!(b.next_on(&bob_msgs).await["text"], "will w3");

    // DISCONNECT in its shortest forms: normal (no will), and "with will" (the will goes).
    for (bytes, expect_will) in [(&[0xE0u8, 0x00][..], false), (&[0xE0, 0x01, 0x04][..], true)] {
        let info = ConnectInfo { will: Some(will("w4", 0)), ..connect_info(Some(&alice), "alice-short") };
        let (mut a, _) = v5_client(app.mqtt, &info).await;
        a.send(bytes).await;
        assert!(a.closed_within(Duration::from_secs(5)).await);
        if expect_will {
            assert_eq!(b.next_on(&bob_msgs).await["text"], "will w4");
        } else {
            assert!(b.nothing_on(&bob_msgs, Duration::from_millis(500)).await, "a normal DISCONNECT drops the will");
        }
    }
    drop(back);
    app.stop().await;
}
