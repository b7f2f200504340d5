//! Scale-out, as a tested configuration: one real Mosquitto as the bus, two gates
//! and two bridges (each its own part set, as `parley serve --only …` runs them)
//! and an api, sharing one database. Users on different gates chat; every message
//! is delivered once to each device and stored once; gates subscribe only for
//! their own users; the bus can go away and come back. Skipped (with a note) when
//! mosquitto is not installed; `.ci/run` installs it.

mod common;

use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::cluster::{part_settings, TestCluster};
use common::mosquitto::Mosquitto;
use common::{options_at, wait_until, Backend, Device, TestUser, DEADLINE};
use parley::app::Parts;
use parley_store::testing::TestDatabase;
use parley_wire::UserId;
use rumqttc::{Packet, QoS};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_util::sync::CancellationToken;

both_backends!(
    users_on_different_gates_chat_and_each_message_is_delivered_and_stored_once,
    a_users_devices_on_two_gates_each_receive_every_message_once,
    a_redelivered_uplink_is_stored_once_whichever_bridge_takes_it,
);

fn uid(user: &TestUser) -> UserId {
    user.id.parse().expect("user id")
}

/// The text messages `device` receives on `to/{uid}/msg`: waits for `expected` of
/// them, then for a second more to catch any extra copy. Keyed by (sender, client id).
async fn texts(device: &mut Device, uid: &str, expected: usize) -> BTreeMap<(String, String), usize> {
    let topic = format!("to/{uid}/msg");
    let is_text = |p: &Packet| -> Option<(String, String)> {
        match p {
            Packet::Publish(p) if p.topic == topic => {
                let v: Value = serde_json::from_slice(&p.payload).expect("json");
                (v["type"] == "message" && v["kind"] == "text").then(|| {
                    (
                        v["sender_id"].as_str().unwrap_or_default().into(),
                        v["client_id"].as_str().unwrap_or_default().into(),
                    )
                })
            }
            _ => None,
        }
    };
    let mut seen = BTreeMap::new();
    for _ in 0..expected {
        *seen.entry(device.next_matching(is_text).await).or_insert(0) += 1;
    }
    // Anything more is a duplicate or a stray.
    while !device.nothing_matching(|p| is_text(p).is_some(), Duration::from_secs(1)).await {
        *seen.entry(device.next_matching(is_text).await).or_insert(0) += 1;
    }
    seen
}

/// Each of `expected` exactly once, and nothing else.
fn assert_once(who: &str, seen: &BTreeMap<(String, String), usize>, expected: &[(String, String)]) {
    let mut want: Vec<_> = expected.to_vec();
    want.sort();
    let got: Vec<_> = seen.keys().cloned().collect();
    assert_eq!(got, want, "{who} received other messages than expected");
    assert!(seen.values().all(|n| *n == 1), "{who} received a message more than once: {seen:?}");
}

async fn send(device: &Device, sender: &TestUser, client_id: &str, to: Value) {
    let mut body = json!({"id": client_id, "text": format!("{client_id} says hi")});
    body.as_object_mut().expect("object").extend(to.as_object().expect("object").clone());
    device.publish_json(&format!("from/{}/msg", sender.id), &body).await;
}

async fn users_on_different_gates_chat_and_each_message_is_delivered_and_stored_once(backend: Backend) {
    let Some(cluster) = TestCluster::spawn(backend, 2, 2).await else {
        return;
    };
    let app = &cluster.app;
    let (ann, ben, cat, dan) =
        (app.user("ann").await, app.user("ben").await, app.user("cat").await, app.user("dan").await);
    let mut a = cluster.device_on(0, &ann, "ann-phone").await;
    let mut b = cluster.device_on(1, &ben, "ben-phone").await;
    let mut c = cluster.device_on(1, &cat, "cat-phone").await;
    let mut d = cluster.device_on(0, &dan, "dan-phone").await;
    // Each gate subscribed for its own users, and only for them.
    let (g0, g1) = (cluster.gate(0), cluster.gate(1));
    assert!(g0.receives_downlinks_of(uid(&ann)) && g0.receives_downlinks_of(uid(&dan)));
    assert!(g1.receives_downlinks_of(uid(&ben)) && g1.receives_downlinks_of(uid(&cat)));
    assert!(!g0.receives_downlinks_of(uid(&ben)) && !g1.receives_downlinks_of(uid(&ann)));
    assert_eq!((g0.bus_subscriptions(), g1.bus_subscriptions()), (2, 2));

    let (status, group) = app
        .send(
            reqwest::Method::POST,
            "/v1/conversations",
            &ann,
            Some(json!({"kind": "group", "title": "Across gates", "members": [ben.id, cat.id, dan.id]})),
        )
        .await;
    assert_eq!(status, 201, "{group}");
    let group = group["id"].as_str().expect("group id").to_string();
    let rows_before = app.message_rows().await;

    let mut direct = Vec::new();
    for i in 0..5 {
        let (ann_id, ben_id) = (format!("ann-to-ben-{i}"), format!("ben-to-ann-{i}"));
        send(&a, &ann, &ann_id, json!({"to": ben.id})).await;
        send(&b, &ben, &ben_id, json!({"to": ann.id})).await;
        direct.push((ann.id.clone(), ann_id));
        direct.push((ben.id.clone(), ben_id));
    }
    let mut in_group = Vec::new();
    for i in 0..3 {
        for (device, user) in [(&a, &ann), (&b, &ben), (&c, &cat), (&d, &dan)] {
            let id = format!("{}-in-group-{i}", user.login);
            send(device, user, &id, json!({"conversation_id": group})).await;
            in_group.push((user.id.clone(), id));
        }
    }

    let both: Vec<_> = direct.iter().chain(&in_group).cloned().collect();
    assert_once("ann", &texts(&mut a, &ann.id, both.len()).await, &both);
    assert_once("ben", &texts(&mut b, &ben.id, both.len()).await, &both);
    assert_once("cat", &texts(&mut c, &cat.id, in_group.len()).await, &in_group);
    assert_once("dan", &texts(&mut d, &dan.id, in_group.len()).await, &in_group);
    // One acknowledgement per message to its sender.
    for (device, user, sent) in [(&mut a, &ann, 8), (&mut c, &cat, 3)] {
        let topic = format!("to/{}/ack", user.id);
        for _ in 0..sent {
            let ack = device.next_on(&topic).await;
            assert!(ack["message_id"].is_string(), "{ack}");
        }
        assert!(device.nothing_on(&topic, Duration::from_millis(500)).await, "{} got an extra ack", user.login);
    }

    assert_eq!(app.message_rows().await - rows_before, both.len() as i64, "every message stored once");
    for (sender, client_id) in &both {
        let stored = app.running().store.message_by_client_id(sender.parse().expect("id"), client_id).await;
        assert!(stored.expect("lookup").is_some(), "{client_id} stored");
    }
    let work = cluster.bridge_work();
    assert!(work.iter().all(|n| *n > 0), "both bridges took uplinks: {work:?}");
    assert!(work.iter().sum::<u64>() >= both.len() as u64, "{work:?}");
    for gate in [g0, g1] {
        assert_eq!(gate.stats().downlinks_unclaimed.load(Ordering::Relaxed), 0, "a gate got another gate's downlinks");
    }
    // The api alone proves the bus and the database; it has no gate to check.
    let (status, ready) = app.get("/readyz", None).await;
    assert_eq!(status, 200, "{ready}");
    assert_eq!(ready["checks"], json!({"bus": "ok", "database": "ok"}), "{ready}");
    cluster.stop().await;
}

async fn a_users_devices_on_two_gates_each_receive_every_message_once(backend: Backend) {
    let Some(cluster) = TestCluster::spawn(backend, 2, 2).await else {
        return;
    };
    let app = &cluster.app;
    let (ann, ben) = (app.user("ann").await, app.user("ben").await);
    let mut a = cluster.device_on(0, &ann, "ann-phone").await;
    let mut phone = cluster.device_on(0, &ben, "ben-phone").await;
    let mut laptop = cluster.device_on(1, &ben, "ben-laptop").await;
    assert!(cluster.gate(0).receives_downlinks_of(uid(&ben)) && cluster.gate(1).receives_downlinks_of(uid(&ben)));

    let mut sent = Vec::new();
    for i in 0..3 {
        let id = format!("ann-{i}");
        send(&a, &ann, &id, json!({"to": ben.id})).await;
        sent.push((ann.id.clone(), id));
    }
    for i in 0..2 {
        let id = format!("ben-phone-{i}");
        send(&phone, &ben, &id, json!({"to": ann.id})).await;
        sent.push((ben.id.clone(), id));
    }
    assert_once("ben's phone (gate 0)", &texts(&mut phone, &ben.id, sent.len()).await, &sent);
    assert_once("ben's laptop (gate 1)", &texts(&mut laptop, &ben.id, sent.len()).await, &sent);
    assert_once("ann", &texts(&mut a, &ann.id, sent.len()).await, &sent);
    cluster.stop().await;
}

async fn a_redelivered_uplink_is_stored_once_whichever_bridge_takes_it(backend: Backend) {
    let Some(cluster) = TestCluster::spawn(backend, 1, 2).await else {
        return;
    };
    let app = &cluster.app;
    let (ann, ben) = (app.user("ann").await, app.user("ben").await);
    let mut a = cluster.device_on(0, &ann, "ann-phone").await;
    let mut b = cluster.device_on(0, &ben, "ben-phone").await;
    let rows_before = app.message_rows().await;
    let work_before: u64 = cluster.bridge_work().iter().sum();
    // What the bus does after a bridge died before acknowledging: the same uplink
    // again; with two bridges sharing the subscription, the copies go to both at once.
    let bus = cluster.bus_client("redelivery").await;
    let topic = format!("from/{}/msg", ann.id);
    for i in 0..6 {
        let body = json!({"id": format!("again-{i}"), "to": ben.id, "text": "once"}).to_string();
        for _ in 0..2 {
            bus.client.publish(&topic, QoS::AtLeastOnce, false, body.clone()).await.expect("publish");
        }
    }
    // Every copy is acknowledged, each time with the one stored message.
    let mut ids: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for _ in 0..12 {
        let ack = a.next_on(&format!("to/{}/ack", ann.id)).await;
        let (client_id, message_id) =
            (ack["id"].as_str().expect("id"), ack["message_id"].as_str().expect("message id"));
        ids.entry(client_id.to_string()).or_default().push(message_id.to_string());
    }
    assert_eq!(ids.len(), 6);
    assert!(ids.values().all(|m| m.len() == 2 && m[0] == m[1]), "{ids:?}");
    assert_eq!(app.message_rows().await - rows_before, 6, "each message stored once");
    // Ben sees each message at least once (devices drop repeats by id).
    let seen = texts(&mut b, &ben.id, 6).await;
    assert_eq!(seen.len(), 6, "{seen:?}");
    let work: Vec<u64> = cluster.bridge_work();
    assert!(work.iter().all(|n| *n > 0), "both bridges took copies: {work:?}");
    assert!(work.iter().sum::<u64>() - work_before >= 12, "{work:?}");
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gate_on_an_external_bus_unsubscribes_when_the_users_last_session_goes() {
    let Some(cluster) = TestCluster::spawn(Backend::Sqlite, 1, 1).await else {
        return;
    };
    let ben = cluster.app.user("ben").await;
    let gate = cluster.gate(0);
    let phone = cluster.device_on(0, &ben, "ben-phone").await;
    let laptop = cluster.device_on(0, &ben, "ben-laptop").await;
    assert!(gate.receives_downlinks_of(uid(&ben)));
    assert_eq!(gate.bus_subscriptions(), 1, "one filter per user, however many devices");
    assert_eq!(gate.bus_subscription_stats().subscribed.load(Ordering::Relaxed), 1);

    phone.client.disconnect().await.expect("disconnect");
    wait_until("the phone's session is gone", || gate.session_counts() == (1, 1)).await;
    assert!(gate.receives_downlinks_of(uid(&ben)), "the laptop still needs ben's downlinks");
    laptop.client.disconnect().await.expect("disconnect");
    wait_until("the broker confirmed the unsubscription", || {
        gate.bus_subscription_stats().unsubscribed.load(Ordering::Relaxed) == 1
    })
    .await;
    assert_eq!(gate.session_counts(), (0, 0));
    assert!(!gate.receives_downlinks_of(uid(&ben)));
    assert_eq!(gate.bus_subscriptions(), 0);
    // The broker no longer sends ben's downlinks to this gate. (Ben's own "offline"
    // presence may have crossed the unsubscription: counted before publishing.)
    tokio::time::sleep(Duration::from_millis(500)).await;
    let unclaimed = gate.stats().downlinks_unclaimed.load(Ordering::Relaxed);
    let bus = cluster.bus_client("tap").await;
    for _ in 0..3 {
        bus.client.publish(format!("to/{}/msg", ben.id), QoS::AtLeastOnce, false, "{}").await.expect("publish");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(gate.stats().downlinks_unclaimed.load(Ordering::Relaxed), unclaimed);

    // Back again: subscribed again before the CONNACK.
    let _again = cluster.device_on(0, &ben, "ben-phone").await;
    assert!(gate.receives_downlinks_of(uid(&ben)));
    assert_eq!(gate.bus_subscription_stats().subscribed.load(Ordering::Relaxed), 2);
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_session_waiting_for_its_device_keeps_receiving() {
    let Some(cluster) = TestCluster::spawn(Backend::Sqlite, 2, 1).await else {
        return;
    };
    let (ann, ben) = (cluster.app.user("ann").await, cluster.app.user("ben").await);
    let mut a = cluster.device_on(0, &ann, "ann-phone").await;
    let persistent = || {
        let mut o = options_at(cluster.gate_addr(1), "ben-phone", &ben.id, &ben.access_token);
        o.set_clean_session(false);
        o
    };
    let mut b = Device::connect(persistent()).await.expect("connects");
    b.subscribe(&format!("to/{}/#", ben.id)).await;
    b.client.disconnect().await.expect("disconnect");
    wait_until("ben's device is away", || cluster.gate(1).session_counts() == (1, 0)).await;
    assert!(cluster.gate(1).receives_downlinks_of(uid(&ben)), "a waiting session keeps its user's downlinks");

    send(&a, &ann, "while-away", json!({"to": ben.id})).await;
    a.next_on(&format!("to/{}/ack", ann.id)).await;
    let mut back = Device::connect(persistent()).await.expect("reconnects");
    assert!(back.session_present);
    let got = back.next_message_from(&ben.id, &ann.id).await;
    assert_eq!(got["client_id"], "while-away");
    drop(b);
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downlinks_published_right_after_connack_reach_the_device() {
    let Some(cluster) = TestCluster::spawn(Backend::Sqlite, 1, 1).await else {
        return;
    };
    let ben = cluster.app.user("ben").await;
    let gate = cluster.gate(0);
    let bus = cluster.bus_client("publisher").await;
    // Each round is ben's first session on the gate again, so a new subscription.
    for round in 0..15 {
        let mut device = Device::connect(options_at(cluster.gate_addr(0), "ben-phone", &ben.id, &ben.access_token))
            .await
            .expect("connects");
        assert!(gate.receives_downlinks_of(uid(&ben)), "round {round}: the subscription stands at CONNACK");
        device.subscribe(&format!("to/{}/#", ben.id)).await;
        let topic = format!("to/{}/msg", ben.id);
        bus.client
            .publish(&topic, QoS::AtLeastOnce, false, json!({"round": round}).to_string())
            .await
            .expect("publish");
        assert_eq!(device.next_on(&topic).await, json!({"round": round}));
        device.client.disconnect().await.expect("disconnect");
        wait_until("ben's session is gone", || gate.session_counts() == (0, 0)).await;
    }
    assert_eq!(gate.bus_subscription_stats().subscribed.load(Ordering::Relaxed), 15);
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gates_and_bridges_come_back_when_the_bus_restarts() {
    let Some(mut cluster) = TestCluster::spawn(Backend::Sqlite, 2, 2).await else {
        return;
    };
    let (ann, ben) = (cluster.app.user("ann").await, cluster.app.user("ben").await);
    let mut a = cluster.device_on(0, &ann, "ann-phone").await;
    let mut b = cluster.device_on(1, &ben, "ben-phone").await;
    let ack_topic = format!("to/{}/ack", ann.id);
    send(&a, &ann, "before", json!({"to": ben.id})).await;
    assert_eq!(a.next_on(&ack_topic).await["id"], "before");
    assert_eq!(b.next_message_from(&ben.id, &ann.id).await["client_id"], "before");

    cluster.bus.restart();
    // The devices stay connected to their gates; the gates subscribe their users again.
    wait_until("both gates subscribed again", || {
        cluster.gate(0).receives_downlinks_of(uid(&ann)) && cluster.gate(1).receives_downlinks_of(uid(&ben))
    })
    .await;
    for bridge in &cluster.bridges {
        assert!(bridge.bridge.as_ref().expect("bridge").wait_subscribed(DEADLINE).await, "a bridge subscribed again");
    }
    // A device retries (same id) until acknowledged: uplinks queued while the gate
    // was reconnecting are gone, the retry is harmless.
    let deadline = Instant::now() + DEADLINE;
    loop {
        send(&a, &ann, "after", json!({"to": ben.id})).await;
        if !a.nothing_on(&ack_topic, Duration::from_secs(1)).await {
            break;
        }
        assert!(Instant::now() < deadline, "no acknowledgement after the bus came back");
    }
    assert_eq!(a.next_on(&ack_topic).await["id"], "after");
    assert_eq!(b.next_message_from(&ben.id, &ann.id).await["client_id"], "after");
    let deadline = Instant::now() + DEADLINE;
    loop {
        let (status, ready) = cluster.app.get("/readyz", None).await;
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "the api did not become ready again: {ready}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_is_told_to_retry_while_the_bus_is_away() {
    let Some(mut cluster) = TestCluster::spawn(Backend::Sqlite, 1, 1).await else {
        return;
    };
    let (ann, ben) = (cluster.app.user("ann").await, cluster.app.user("ben").await);
    let persistent = |gate| {
        let mut o = options_at(gate, "ben-phone", &ben.id, &ben.access_token);
        o.set_clean_session(false);
        o
    };
    cluster.bus.stop();
    let started = Instant::now();
    let refused = Device::connect(persistent(cluster.gate_addr(0))).await.err().expect("refused while the bus is away");
    assert!(
        matches!(refused, rumqttc::ConnectionError::ConnectionRefused(rumqttc::ConnectReturnCode::ServiceUnavailable)),
        "{refused:?}"
    );
    let waited = started.elapsed();
    assert!(waited >= Duration::from_secs(2), "the gate waited for the bus a while: {waited:?}");
    assert_eq!(cluster.gate(0).session_counts(), (0, 0), "a refused CONNECT leaves no session behind");

    cluster.bus.start_again();
    for bridge in &cluster.bridges {
        assert!(bridge.bridge.as_ref().expect("bridge").wait_subscribed(DEADLINE).await);
    }
    let mut b = Device::connect(persistent(cluster.gate_addr(0))).await.expect("connects once the bus is back");
    assert!(!b.session_present, "the refused attempt created no session");
    b.subscribe(&format!("to/{}/#", ben.id)).await;
    let a = cluster.device_on(0, &ann, "ann-phone").await;
    send(&a, &ann, "welcome-back", json!({"to": ben.id})).await;
    assert_eq!(b.next_message_from(&ben.id, &ann.id).await["client_id"], "welcome-back");
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_bus_stops_the_start_naming_the_setting() {
    let db = TestDatabase::create(Backend::Sqlite).await.expect("sqlite");
    let data = tempfile::tempdir().expect("dir");
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr");
    let mut settings = part_settings(&db, data.path(), &format!("mqtt://parley:hunter2@{closed}"));
    settings.bus.start_timeout_secs = 2;
    let started = Instant::now();
    let err = match parley::app::start_parts(settings, Parts::GATE, CancellationToken::new()).await {
        Ok(_) => panic!("a gate must not start without its bus"),
        Err(e) => format!("{e:#}"),
    };
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(2) && waited < Duration::from_secs(10),
        "retried for the timeout: {waited:?}"
    );
    for part in ["bus.url", "PARLEY_BUS__URL", "bus.start_timeout_secs", &closed.to_string(), "unreachable"] {
        assert!(err.contains(part), "{part} missing from: {err}");
    }
    assert!(!err.contains("hunter2"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_bus_credentials_stop_the_start_at_once() {
    let Some(bus) = Mosquitto::start_with_password("parley", "right-password") else {
        return;
    };
    let db = TestDatabase::create(Backend::Sqlite).await.expect("sqlite");
    let data = tempfile::tempdir().expect("dir");
    let mut settings = part_settings(&db, data.path(), &bus.url(Some(("parley", "wrong-password"))));
    settings.bus.start_timeout_secs = 30;
    let started = Instant::now();
    let err = match parley::app::start_parts(settings.clone(), Parts::BRIDGE, CancellationToken::new()).await {
        Ok(_) => panic!("wrong credentials must stop the start"),
        Err(e) => format!("{e:#}"),
    };
    assert!(started.elapsed() < Duration::from_secs(5), "no waiting for a refusal: {:?}", started.elapsed());
    assert!(err.contains("refused") && err.contains("bus.url") && err.contains("PARLEY_BUS__URL"), "{err}");
    assert!(!err.contains("wrong-password"), "{err}");

    settings.bus.url = Some(parley_config::BusUrl::new(bus.url(Some(("parley", "right-password")))));
    let bridge = parley::app::start_parts(settings, Parts::BRIDGE, CancellationToken::new()).await.expect("starts");
    bridge.stop().await.expect("clean stop");
}

#[tokio::test]
async fn only_is_refused_with_the_embedded_bus() {
    let data = tempfile::tempdir().expect("dir");
    let settings = parley_config::Settings { data_dir: data.path().to_path_buf(), ..Default::default() };
    let gate_and_api = Parts { gate: true, bridge: false, api: true };
    let err = match parley::app::start_parts(settings, gate_and_api, CancellationToken::new()).await {
        Ok(_) => panic!("an embedded bus cannot serve parts in other processes"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("--only gate,api") && err.contains("bus.url") && err.contains("PARLEY_BUS__URL"), "{err}");
    assert!(!data.path().join("parley.db").exists(), "refused before touching the database");
}

/// `parley serve` as an operator runs it, with `PARLEY_…` variables and arguments.
fn parley(dir: &std::path::Path, args: &[&str], bus: Option<&str>) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_parley"));
    cmd.args(args).current_dir(dir).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.kill_on_drop(true);
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("PARLEY_") || k == "RUST_LOG") {
        cmd.env_remove(key);
    }
    cmd.env("PARLEY_MQTT__LISTEN", "127.0.0.1:0")
        .env("PARLEY_MQTT__WS_LISTEN", "127.0.0.1:0")
        .env("PARLEY_HTTP__LISTEN", "127.0.0.1:0")
        .env("PARLEY_LOG__FORMAT", "json")
        .env("PARLEY_AUTH__SIGNING_KEY", "binary-test-signing-key-long-enough-for-hs256");
    if let Some(bus) = bus {
        cmd.env("PARLEY_BUS__URL", bus);
    }
    cmd
}

/// The fields of the "parley is up" log line.
async fn fields_when_up(child: &mut tokio::process::Child) -> Value {
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let fields = tokio::time::timeout(DEADLINE, async {
        while let Some(line) = lines.next_line().await.expect("read stdout") {
            let Ok(entry) = serde_json::from_str::<Value>(&line) else { continue };
            if entry["fields"]["message"] == "parley is up" {
                return entry["fields"].clone();
            }
        }
        panic!("parley exited before it was up");
    })
    .await
    .expect("up in time");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    fields
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_runs_the_parts_named_by_only() {
    let Some(bus) = Mosquitto::start() else {
        return;
    };
    let dir = tempfile::tempdir().expect("dir");
    let url = bus.url(None);
    let mut front = parley(dir.path(), &["serve", "--only", "gate,api"], Some(&url)).spawn().expect("spawn");
    let up = fields_when_up(&mut front).await;
    assert_eq!(up["parts"], "gate,api", "{up}");
    let http = up["http_addr"].as_str().expect("http_addr");
    let ready: Value = reqwest::get(format!("http://{http}/readyz")).await.expect("readyz").json().await.expect("json");
    assert_eq!(ready["checks"], json!({"bus": "ok", "database": "ok", "gate": "ok"}), "{ready}");

    let mut back = parley(dir.path(), &["serve", "--only", "bridge"], Some(&url)).spawn().expect("spawn");
    let up = fields_when_up(&mut back).await;
    assert_eq!(
        (up["parts"].as_str(), up["http_addr"].as_str(), up["mqtt_addr"].as_str()),
        (Some("bridge"), Some("-"), Some("-"))
    );
    for child in [&mut front, &mut back] {
        let pid = child.id().expect("pid").to_string();
        assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().expect("kill").success());
        let exit = tokio::time::timeout(DEADLINE, child.wait()).await.expect("stops in time").expect("wait");
        assert!(exit.success(), "parley exited with {exit}");
    }

    // Repeated --only, but no external bus: refused with what to set.
    let out = parley(dir.path(), &["serve", "--only", "gate", "--only", "bridge"], None).output().await.expect("run");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--only gate,bridge") && stderr.contains("PARLEY_BUS__URL"), "{stderr}");
    let out = parley(dir.path(), &["serve", "--only", "scheduler"], Some(&url)).output().await.expect("run");
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("gate"), "clap names the parts");
}
