//! The open namespace (`mqtt.open_namespace`, `mqtt.allow_anonymous`): the gate as a
//! plain MQTT 5 broker for test tools, next to and apart from Parley's own topics.
//! Anonymous raw clients exercise QoS 0–2 in both directions, overlapping
//! subscriptions, properties passed through, No Local, retained messages with
//! Retain Handling and Retain As Published, offline queues, and wills.
//!
//! The gate's behaviour here does not depend on the database: SQLite only.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::v5::{connect_info, next_publish, no_publish_within, send, subscribe_with, v5_client};
use common::{Backend, TestApp};
use parley_wire::codec::{ConnectInfo, Inbound, Publish, SubscribeFilter, Will};
use rumqttc::v5::mqttbytes::v5;
use rumqttc::v5::mqttbytes::QoS;
use serde_json::json;

const QUIET: Duration = Duration::from_millis(600);

async fn app(open: &str) -> TestApp {
    let open = open.to_string();
    TestApp::spawn_with(Backend::Sqlite, move |s| {
        s.mqtt.open_namespace = open;
        s.mqtt.allow_anonymous = true;
    })
    .await
    .expect("sqlite app")
}

fn props() -> Option<Box<v5::PublishProperties>> {
    Some(Box::new(v5::PublishProperties {
        user_properties: vec![("a".into(), "2".into()), ("c".into(), "3".into())],
        content_type: Some("text/plain".into()),
        ..Default::default()
    }))
}

fn message(topic: &str, payload: &str, qos: u8, retain: bool, pkid: u16) -> Inbound {
    Inbound::Publish(Publish {
        topic: topic.into(),
        payload: Bytes::from(payload.to_string()),
        qos,
        retain,
        dup: false,
        pkid,
        topic_alias: None,
        subscription_ids: Vec::new(),
        properties: props(),
    })
}

/// An anonymous v5 client that keeps its session for 60 s after it leaves.
fn persistent(client_id: &str) -> ConnectInfo {
    ConnectInfo { clean_start: false, session_expiry: Some(60), ..connect_info(None, client_id) }
}

fn filter(f: &str, qos: u8) -> SubscribeFilter {
    SubscribeFilter::new(f, qos)
}

fn granted(qos: QoS) -> v5::SubscribeReasonCode {
    v5::SubscribeReasonCode::Success(qos)
}

/// Publishes from `c` and waits for its acknowledgement (PUBACK, or PUBREC then PUBCOMP).
async fn publish_acked(c: &mut common::raw::RawClient, m: Inbound) {
    let Inbound::Publish(p) = &m else { panic!("not a publish") };
    let (qos, pkid) = (p.qos, p.pkid);
    send(c, m).await;
    if qos == 0 {
        return;
    }
    loop {
        match c.next_v5().await.expect("open") {
            v5::Packet::PubAck(a) if qos == 1 && a.pkid == pkid => {
                assert_eq!(a.reason, v5::PubAckReason::Success);
                return;
            }
            v5::Packet::PubRec(r) if qos == 2 && r.pkid == pkid => send(c, Inbound::PubRel(pkid)).await,
            v5::Packet::PubComp(r) if r.pkid == pkid => return,
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_clients_get_a_plain_broker_in_the_open_namespace_and_nothing_else() {
    let app = app("*").await;
    let (mut a, ack) = v5_client(app.mqtt, &connect_info(None, "aclient")).await;
    assert_eq!(ack.properties.expect("properties").retain_available, Some(1));
    let (mut b, _) = v5_client(app.mqtt, &connect_info(None, "bclient")).await;

    // Overlapping subscriptions: one delivery, at the highest QoS granted, never above the message's.
    assert_eq!(subscribe_with(&mut b, filter("TopicA/#", 2), Some(4)).await, granted(QoS::ExactlyOnce));
    assert_eq!(subscribe_with(&mut b, filter("TopicA/+", 1), Some(5)).await, granted(QoS::AtLeastOnce));
    for (qos, pkid) in [(0u8, 0u16), (1, 1), (2, 2)] {
        publish_acked(&mut a, message("TopicA/B", &format!("qos {qos}"), qos, false, pkid)).await;
        let got = next_publish(&mut b).await;
        assert_eq!((got.topic.as_ref(), got.payload.as_ref()), (&b"TopicA/B"[..], format!("qos {qos}").as_bytes()));
        assert_eq!(got.qos as u8, qos, "delivered at the message's QoS");
        let p = got.properties.expect("properties passed through");
        assert_eq!(p.user_properties, [("a".to_string(), "2".to_string()), ("c".to_string(), "3".to_string())]);
        assert_eq!(p.content_type.as_deref(), Some("text/plain"));
        let mut ids = p.subscription_identifiers;
        ids.sort();
        assert_eq!(ids, [4, 5]);
    }
    assert!(no_publish_within(&mut b, QUIET).await, "one delivery per message");

    // No Local: a client subscribed with it does not get back what it published.
    let no_local = SubscribeFilter { no_local: true, ..filter("TopicA/#", 1) };
    assert_eq!(subscribe_with(&mut a, no_local, None).await, granted(QoS::AtLeastOnce));
    publish_acked(&mut a, message("TopicA/C", "mine", 1, false, 7)).await;
    assert_eq!(next_publish(&mut b).await.payload.as_ref(), b"mine");
    assert!(no_publish_within(&mut a, QUIET).await, "No Local");

    // Parley's topics stay closed: no subscribing, no publishing, and "#" never sees them.
    let (alice, bob) = (app.user("alice").await, app.user("bob").await);
    for f in [format!("to/{}/#", alice.id), "$SYS/#".to_string(), format!("from/{}/msg", alice.id)] {
        assert_eq!(subscribe_with(&mut a, filter(&f, 1), None).await, v5::SubscribeReasonCode::NotAuthorized, "{f}");
    }
    let forged = json!({"id": "f", "to": bob.id, "text": "from nobody"}).to_string();
    send(&mut a, message(&format!("from/{}/msg", alice.id), &forged, 1, false, 9)).await;
    match a.next_v5().await {
        Some(v5::Packet::PubAck(r)) => assert_eq!(r.reason, v5::PubAckReason::NotAuthorized),
        other => panic!("expected PUBACK, got {other:?}"),
    }
    let (mut everything, _) = v5_client(app.mqtt, &connect_info(None, "everything")).await;
    assert_eq!(subscribe_with(&mut everything, filter("#", 1), None).await, granted(QoS::AtLeastOnce));
    let al = app.device(&alice, "alice-phone").await;
    let mut bo = app.device(&bob, "bob-phone").await;
    al.publish_json(&format!("from/{}/msg", alice.id), &json!({"id": "c1", "to": bob.id, "text": "private"})).await;
    assert_eq!(bo.next_on(&format!("to/{}/msg", bob.id)).await["text"], "private");
    assert!(no_publish_within(&mut everything, QUIET).await, "chat traffic never reaches the namespace");
    assert_eq!(app.message_rows().await, 1, "only alice's message was stored");

    // A user's device may use the namespace too, but never retain on its own topics.
    let (mut u, _) = v5_client(app.mqtt, &connect_info(Some(&alice), "alice-v5")).await;
    publish_acked(&mut u, message("TopicA/B", "from a user", 1, false, 3)).await;
    assert_eq!(next_publish(&mut b).await.payload.as_ref(), b"from a user");
    let body = json!({"id": "r", "to": bob.id, "text": "retained?"}).to_string();
    send(&mut u, message(&format!("from/{}/msg", alice.id), &body, 1, true, 4)).await;
    match u.next_v5().await {
        Some(v5::Packet::PubAck(r)) => assert_eq!(r.reason, v5::PubAckReason::NotAuthorized),
        other => panic!("expected PUBACK, got {other:?}"),
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_messages_follow_retain_handling_and_retain_as_published() {
    let app = app("lab/").await;
    let (mut a, _) = v5_client(app.mqtt, &connect_info(None, "publisher")).await;
    let (mut watcher, _) = v5_client(app.mqtt, &connect_info(None, "watcher")).await;
    assert_eq!(subscribe_with(&mut watcher, filter("lab/#", 1), None).await, granted(QoS::AtLeastOnce));
    // Outside the prefix is not the namespace.
    assert_eq!(subscribe_with(&mut a, filter("TopicA", 1), None).await, v5::SubscribeReasonCode::NotAuthorized);

    publish_acked(&mut a, message("lab/t/1", "kept", 1, true, 1)).await;
    // Live delivery, Retain As Published off: the flag is cleared.
    let live = next_publish(&mut watcher).await;
    assert!(!live.retain);
    // Retain As Published on: the flag stays.
    let (mut rap, _) = v5_client(app.mqtt, &connect_info(None, "rap")).await;
    let keep_flag = SubscribeFilter { retain_as_published: true, retain_handling: 2, ..filter("lab/#", 1) };
    subscribe_with(&mut rap, keep_flag, None).await;

    // Retain Handling 0: retained messages at every subscribe, flagged, with their properties.
    let (mut c, _) = v5_client(app.mqtt, &connect_info(None, "late")).await;
    subscribe_with(&mut c, filter("lab/+/1", 2), Some(9)).await;
    let got = next_publish(&mut c).await;
    assert!(got.retain, "retained messages come with RETAIN set");
    assert_eq!((got.payload.as_ref(), got.qos), (&b"kept"[..], QoS::AtLeastOnce));
    let p = got.properties.expect("properties");
    assert_eq!(p.user_properties.len(), 2);
    assert_eq!(p.subscription_identifiers, [9]);
    subscribe_with(&mut c, filter("lab/+/1", 2), None).await;
    assert!(next_publish(&mut c).await.retain, "again for RH 0");
    // Retain Handling 1: only for a new subscription.
    let rh1 = SubscribeFilter { retain_handling: 1, ..filter("lab/t/#", 1) };
    subscribe_with(&mut c, rh1.clone(), None).await;
    assert!(next_publish(&mut c).await.retain);
    subscribe_with(&mut c, rh1, None).await;
    assert!(no_publish_within(&mut c, QUIET).await, "RH 1 on an existing subscription");
    // Retain Handling 2: never.
    let (mut d, _) = v5_client(app.mqtt, &connect_info(None, "never")).await;
    subscribe_with(&mut d, SubscribeFilter { retain_handling: 2, ..filter("lab/#", 1) }, None).await;
    assert!(no_publish_within(&mut d, QUIET).await, "RH 2");

    publish_acked(&mut a, message("lab/t/1", "kept again", 1, true, 2)).await;
    let got = next_publish(&mut rap).await;
    assert!(got.retain && got.payload.as_ref() == b"kept again", "Retain As Published keeps the flag");
    assert!(!next_publish(&mut d).await.retain);

    assert_eq!(next_publish(&mut watcher).await.payload.as_ref(), b"kept again");

    // An empty retained message deletes the retained one.
    publish_acked(&mut a, message("lab/t/1", "", 1, true, 3)).await;
    assert!(next_publish(&mut watcher).await.payload.is_empty());
    let (mut e, _) = v5_client(app.mqtt, &connect_info(None, "after-delete")).await;
    subscribe_with(&mut e, filter("lab/#", 1), None).await;
    assert!(no_publish_within(&mut e, QUIET).await, "nothing retained any more");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_sessions_queue_qos_1_and_2_and_wills_keep_their_properties() {
    let app = app("*").await;
    let offline = persistent("offline queue");
    let (mut o, _) = v5_client(app.mqtt, &offline).await;
    subscribe_with(&mut o, filter("TopicA/#", 2), None).await;
    drop(o);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (mut b, _) = v5_client(app.mqtt, &connect_info(None, "bclient")).await;
    for (qos, pkid) in [(0u8, 0u16), (1, 1), (2, 2)] {
        publish_acked(&mut b, message("TopicA/B", &format!("qos {qos}"), qos, false, pkid)).await;
    }
    let (mut o, ack) = v5_client(app.mqtt, &ConnectInfo { clean_start: false, ..offline }).await;
    assert!(ack.session_present);
    let mut got = vec![next_publish(&mut o).await, next_publish(&mut o).await];
    got.sort_by_key(|p| p.qos as u8);
    let got: Vec<_> = got.iter().map(|p| (p.qos as u8, p.payload.clone())).collect();
    assert_eq!(got, [(1, Bytes::from("qos 1")), (2, Bytes::from("qos 2"))], "QoS 0 is not queued for the absent");
    assert!(no_publish_within(&mut o, QUIET).await);

    // A will in the namespace, published when the connection is lost, properties intact.
    let will = Will {
        topic: "TopicA/W".into(),
        payload: Bytes::from_static(b"will message"),
        qos: 1,
        delay: 0,
        retain: false,
        properties: props(),
    };
    let (w, _) = v5_client(app.mqtt, &ConnectInfo { will: Some(will), ..connect_info(None, "with will") }).await;
    drop(w);
    let got = next_publish(&mut o).await;
    assert_eq!(got.payload.as_ref(), b"will message");
    assert_eq!(got.properties.expect("properties").user_properties.len(), 2);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_clients_are_refused_unless_allowed() {
    let app = TestApp::spawn_with(Backend::Sqlite, |s| s.mqtt.open_namespace = "*".into()).await.expect("app");
    let mut c = common::raw::RawClient::tcp(app.mqtt).await;
    let mut buf = bytes::BytesMut::new();
    parley_wire::codec::write_connect(&connect_info(None, "anon"), &mut buf);
    c.send(&buf).await;
    match c.next_v5().await {
        Some(v5::Packet::ConnAck(a)) => assert_eq!(a.code, v5::ConnectReturnCode::BadUserNamePassword),
        other => panic!("expected CONNACK, got {other:?}"),
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_messages_expire_and_disconnect_may_extend_the_session() {
    let app = app("*").await;
    // A session that would end with its connection is kept by the DISCONNECT's expiry.
    let (mut o, _) = v5_client(app.mqtt, &connect_info(None, "expiring")).await;
    subscribe_with(&mut o, filter("TopicA/#", 2), None).await;
    send(&mut o, Inbound::Disconnect { with_will: false, session_expiry: Some(60) }).await;
    assert!(o.closed_within(Duration::from_secs(5)).await);

    let (mut b, _) = v5_client(app.mqtt, &connect_info(None, "publisher")).await;
    for (i, expiry) in [(1u16, 1u32), (2, 30)] {
        let Inbound::Publish(mut p) = message("TopicA/E", &format!("expires in {expiry}"), 1, false, i) else {
            unreachable!()
        };
        p.properties =
            Some(Box::new(v5::PublishProperties { message_expiry_interval: Some(expiry), ..Default::default() }));
        publish_acked(&mut b, Inbound::Publish(p)).await;
    }
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let resume = persistent("expiring");
    let (mut o, ack) = v5_client(app.mqtt, &resume).await;
    assert!(ack.session_present, "the DISCONNECT's Session Expiry Interval kept the session");
    let got = next_publish(&mut o).await;
    assert_eq!(got.payload.as_ref(), b"expires in 30", "the expired message was dropped");
    let left = got.properties.expect("properties").message_expiry_interval.expect("interval");
    assert!((27..30).contains(&left), "the interval is reduced by the time it waited: {left}");
    assert!(no_publish_within(&mut o, QUIET).await);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_subscriptions_give_each_message_to_one_member_of_each_group() {
    let app = app("*").await;
    let (mut p, ack) = v5_client(app.mqtt, &connect_info(None, "publisher")).await;
    assert_eq!(ack.properties.expect("properties").shared_subscription_available, Some(1));
    let (mut w1, _) = v5_client(app.mqtt, &connect_info(None, "worker-1")).await;
    let (mut w2, _) = v5_client(app.mqtt, &connect_info(None, "worker-2")).await;
    let (mut audit, _) = v5_client(app.mqtt, &connect_info(None, "auditor")).await;
    let (mut plain, _) = v5_client(app.mqtt, &connect_info(None, "plain")).await;
    // A retained message before the groups exist (seen going by): shared subscriptions never get it.
    assert_eq!(subscribe_with(&mut plain, filter("jobs/#", 1), None).await, granted(QoS::AtLeastOnce));
    publish_acked(&mut p, message("jobs/retained", "old", 1, true, 1)).await;
    assert_eq!(next_publish(&mut plain).await.payload.as_ref(), b"old");
    for w in [&mut w1, &mut w2] {
        assert_eq!(subscribe_with(w, filter("$share/workers/jobs/#", 1), Some(7)).await, granted(QoS::AtLeastOnce));
    }
    assert_eq!(subscribe_with(&mut audit, filter("$share/audit/jobs/+", 0), None).await, granted(QoS::AtMostOnce));
    let (mut late, _) = v5_client(app.mqtt, &connect_info(None, "late plain")).await;
    assert_eq!(subscribe_with(&mut late, filter("jobs/#", 1), None).await, granted(QoS::AtLeastOnce));
    assert_eq!(next_publish(&mut late).await.payload.as_ref(), b"old", "a plain subscription gets it");

    for i in 0..10u16 {
        publish_acked(&mut p, message(&format!("jobs/{i}"), &format!("job {i}"), 1, false, 10 + i)).await;
    }
    let mut got = Vec::new();
    let mut per_worker = [0, 0];
    while got.len() < 10 {
        let (n, publish) = tokio::select! {
            publish = next_publish(&mut w1) => (0, publish),
            publish = next_publish(&mut w2) => (1, publish),
            _ = tokio::time::sleep(Duration::from_secs(5)) => panic!("only {} of 10 reached the workers", got.len()),
        };
        assert_eq!(publish.qos, QoS::AtLeastOnce);
        assert!(!publish.retain);
        assert_eq!(publish.properties.expect("properties").subscription_identifiers, [7]);
        per_worker[n] += 1;
        got.push(String::from_utf8_lossy(&publish.payload).into_owned());
    }
    got.sort();
    let mut expected: Vec<String> = (0..10).map(|i| format!("job {i}")).collect();
    expected.sort();
    assert_eq!(got, expected, "each message reached exactly one worker");
    assert_eq!(per_worker, [5, 5], "the workers take turns");
    assert!(no_publish_within(&mut w1, QUIET).await && no_publish_within(&mut w2, QUIET).await);
    for i in 0..10 {
        let m = next_publish(&mut audit).await;
        assert_eq!((m.payload, m.qos), (Bytes::from(format!("job {i}")), QoS::AtMostOnce), "a group of one gets all");
        assert_eq!(next_publish(&mut plain).await.payload, Bytes::from(format!("job {i}")), "plain gets all");
    }

    // A member that leaves: the group is the one left.
    drop(w1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    for i in 0..4u16 {
        publish_acked(&mut p, message("jobs/x", &format!("later {i}"), 1, false, 30 + i)).await;
    }
    for i in 0..4 {
        assert_eq!(next_publish(&mut w2).await.payload, Bytes::from(format!("later {i}")));
    }
    // Unsubscribing uses the whole shared filter.
    send(&mut w2, Inbound::Unsubscribe { pkid: 5, filters: vec!["$share/workers/jobs/#".into()] }).await;
    loop {
        if let Some(v5::Packet::UnsubAck(_)) = w2.next_v5().await {
            break;
        }
    }
    publish_acked(&mut p, message("jobs/x", "nobody", 1, false, 40)).await;
    assert!(no_publish_within(&mut w2, QUIET).await);

    // Malformed shared filters, Parley's own topics, and No Local (a protocol error).
    let alice = app.user("alice").await;
    let (mut u, _) = v5_client(app.mqtt, &connect_info(Some(&alice), "alice-v5")).await;
    for (f, code) in [
        ("$share//jobs/#", v5::SubscribeReasonCode::TopicFilterInvalid),
        ("$share/g", v5::SubscribeReasonCode::TopicFilterInvalid),
        ("$share/g+/jobs", v5::SubscribeReasonCode::TopicFilterInvalid),
        (&format!("$share/g/to/{}/#", alice.id), v5::SubscribeReasonCode::NotAuthorized),
        ("$share/g/$SYS/#", v5::SubscribeReasonCode::NotAuthorized),
    ] {
        assert_eq!(subscribe_with(&mut u, filter(f, 1), None).await, code, "{f}");
    }
    let no_local = SubscribeFilter { no_local: true, ..filter("$share/g/jobs/#", 1) };
    send(&mut u, Inbound::Subscribe { pkid: 3, filters: vec![no_local], id: None }).await;
    assert_eq!(common::v5::disconnect_reason(&mut u).await, v5::DisconnectReasonCode::ProtocolError);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_group_with_no_connected_member_queues_for_a_persistent_one() {
    let app = app("*").await;
    let waiting = persistent("waiting member");
    let (mut w, _) = v5_client(app.mqtt, &waiting).await;
    subscribe_with(&mut w, filter("$share/late/jobs/#", 1), None).await;
    let (mut gone, _) = v5_client(app.mqtt, &connect_info(None, "clean member")).await;
    subscribe_with(&mut gone, filter("$share/late/jobs/#", 1), None).await;
    drop(w);
    drop(gone);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (mut p, _) = v5_client(app.mqtt, &connect_info(None, "publisher")).await;
    publish_acked(&mut p, message("jobs/a", "qos 0 is not kept", 0, false, 0)).await;
    publish_acked(&mut p, message("jobs/a", "kept", 1, false, 1)).await;
    let (mut w, ack) = v5_client(app.mqtt, &ConnectInfo { clean_start: false, ..waiting }).await;
    assert!(ack.session_present);
    assert_eq!(next_publish(&mut w).await.payload.as_ref(), b"kept");
    assert!(no_publish_within(&mut w, QUIET).await);
    app.stop().await;
}
