//! Gap-free sync across devices: a device that was away asks for what it missed
//! and ends with exactly what the device that stayed connected saw.

mod common;

use std::collections::BTreeMap;

use common::{Backend, Device, TestApp, TestUser};
use serde_json::{json, Value};

both_backends!(
    a_device_that_was_away_syncs_to_the_same_state_as_one_that_stayed,
    gaps_that_cannot_be_replayed_ask_for_a_reset
);

/// Collects `to/{uid}/msg` and `to/{uid}/receipt` events by number until `until` arrived.
async fn events_until(
    device: &mut Device,
    uid: &str,
    events: &mut BTreeMap<i64, Value>,
    until: i64,
) {
    let (msg, receipt) = (format!("to/{uid}/msg"), format!("to/{uid}/receipt"));
    while events.last_key_value().map_or(0, |(k, _)| *k) < until
        || (events.len() as i64) < until - events.first_key_value().map_or(1, |(k, _)| *k) + 1
    {
        let event = device
            .next_matching(|p| match p {
                rumqttc::Packet::Publish(p) if p.topic == msg || p.topic == receipt => {
                    Some(serde_json::from_slice::<Value>(&p.payload).expect("json"))
                }
                _ => None,
            })
            .await;
        let seq = event["event_seq"].as_i64().expect("event_seq");
        if let Some(previous) = events.insert(seq, event.clone()) {
            assert_eq!(
                previous, event,
                "a repeated event number must carry the same event"
            );
        }
    }
}

/// Asks over MQTT for everything after `after`, page by page, until nothing is left.
async fn sync_over_mqtt(device: &mut Device, user: &TestUser, mut after: i64) -> Vec<Value> {
    let mut out = Vec::new();
    let topic = format!("to/{}/sync", user.id);
    for page in 0.. {
        let id = format!("tablet-{page}");
        device
            .publish_json(
                &format!("from/{}/sync", user.id),
                &json!({"id": id, "after": after, "limit": 150}),
            )
            .await;
        let answer = device
            .next_matching(|p| match p {
                rumqttc::Packet::Publish(p) if p.topic == topic => {
                    let v: Value = serde_json::from_slice(&p.payload).expect("json");
                    (v["id"] == id.as_str()).then_some(v)
                }
                _ => None,
            })
            .await;
        assert_eq!(answer["reset"], false, "{answer}");
        let events = answer["events"].as_array().expect("events").clone();
        after = events
            .last()
            .map_or(after, |e| e["event_seq"].as_i64().expect("seq"));
        out.extend(events);
        if !answer["has_more"].as_bool().expect("has_more") {
            break;
        }
    }
    out
}

async fn a_device_that_was_away_syncs_to_the_same_state_as_one_that_stayed(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let bob = app.user("bob").await;
    let mut senders = Vec::new();
    for i in 0..5 {
        senders.push(app.user(&format!("sender{i}")).await);
    }
    let mut phone = app.device(&bob, "bob-phone").await;
    let mut tablet_before = Some(app.device(&bob, "bob-tablet").await);

    // Ten conversations: one 1:1 with each sender, and five groups.
    let mut targets: Vec<Value> = senders
        .iter()
        .map(|s| json!({"to": bob.id, "from": s.id}))
        .collect();
    for i in 0..5 {
        let members = [bob.id.clone(), senders[(i + 1) % 5].id.clone()];
        let body = json!({"kind": "group", "title": format!("g{i}"), "members": members});
        let resp = app
            .client
            .post(format!("{}/v1/conversations", app.http))
            .bearer_auth(&senders[i].access_token)
            .json(&body)
            .send()
            .await
            .expect("http");
        let group: Value = resp.json().await.expect("json");
        targets.push(json!({"conversation_id": group["id"], "from": senders[i].id}));
    }
    let mut devices = Vec::new();
    for s in &senders {
        devices.push(app.device(s, "sender-phone").await);
    }

    let mut phone_events = BTreeMap::new();
    let mut tablet_events = BTreeMap::new();
    for round in 0..100 {
        for (t, target) in targets.iter().enumerate() {
            let from = target["from"].as_str().expect("from");
            let k = senders.iter().position(|s| s.id == from).expect("sender");
            let mut body =
                json!({"id": format!("r{round}-t{t}"), "text": format!("round {round} in {t}")});
            match target.get("conversation_id") {
                Some(c) => body["conversation_id"] = c.clone(),
                None => body["to"] = json!(bob.id),
            }
            devices[k]
                .publish_json(&format!("from/{from}/msg"), &body)
                .await;
        }
        if round == 10 {
            // The tablet has seen the first rounds, then goes away.
            let (_, sync) = app
                .get("/v1/sync?after=0&limit=1", Some(&bob.access_token))
                .await;
            let mut tablet = tablet_before.take().expect("tablet");
            events_until(
                &mut tablet,
                &bob.id,
                &mut tablet_events,
                sync["last_seq"].as_i64().expect("last"),
            )
            .await;
            drop(tablet);
        }
        if round % 20 == 19 {
            // Bob reads on his phone as he goes: receipts travel through sync too.
            let (_, list) = app
                .get("/v1/conversations?limit=10", Some(&bob.access_token))
                .await;
            for c in list["conversations"].as_array().expect("list") {
                let body = json!({"conversation_id": c["id"], "read_seq": c["last_seq"]});
                phone
                    .publish_json(&format!("from/{}/receipt", bob.id), &body)
                    .await;
            }
        }
    }
    for (k, s) in senders.iter().enumerate() {
        let acks = targets
            .iter()
            .filter(|t| t["from"] == s.id.as_str())
            .count()
            * 100;
        for _ in 0..acks {
            let ack = devices[k].next_on(&format!("to/{}/ack", s.id)).await;
            assert!(ack.get("error").is_none(), "{ack}");
        }
    }
    let (_, sync) = app
        .get("/v1/sync?after=0&limit=1", Some(&bob.access_token))
        .await;
    let last = sync["last_seq"].as_i64().expect("last_seq");
    assert!(
        last >= 1000,
        "1000 messages, plus notices and receipts: {last}"
    );
    events_until(&mut phone, &bob.id, &mut phone_events, last).await;

    // The tablet comes back and asks for what it missed since its last event.
    let mut tablet = app.device(&bob, "bob-tablet").await;
    let seen = *tablet_events.last_key_value().expect("tablet saw events").0;
    for event in sync_over_mqtt(&mut tablet, &bob, seen).await {
        let seq = event["event_seq"].as_i64().expect("seq");
        assert!(
            tablet_events.insert(seq, event).is_none(),
            "event {seq} delivered twice"
        );
    }
    assert_eq!(
        tablet_events.keys().copied().collect::<Vec<_>>(),
        (1..=last).collect::<Vec<_>>(),
        "nothing missing, nothing extra, in order"
    );
    assert_eq!(
        tablet_events, phone_events,
        "the tablet ends with exactly what the phone saw"
    );
    let messages = phone_events
        .values()
        .filter(|e| e["type"] == "message" && e["kind"] == "text")
        .count();
    let receipts = phone_events
        .values()
        .filter(|e| e["type"] == "receipt")
        .count();
    assert_eq!(messages, 1000);
    // At least the first read of each group (whose creation notice is seq 1) moved.
    assert!(receipts >= 5, "{receipts}");

    // The same replay over HTTP.
    let mut replay = BTreeMap::new();
    let mut after = 0;
    loop {
        let (status, page) = app
            .get(
                &format!("/v1/sync?after={after}&limit=1000"),
                Some(&bob.access_token),
            )
            .await;
        assert_eq!(status, 200);
        for e in page["events"].as_array().expect("events") {
            after = e["event_seq"].as_i64().expect("seq");
            replay.insert(after, e.clone());
        }
        if !page["has_more"].as_bool().expect("has_more") {
            break;
        }
    }
    assert_eq!(replay, phone_events);
    app.stop().await;
}

async fn gaps_that_cannot_be_replayed_ask_for_a_reset(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let (ann, ben) = (app.user("ann").await, app.user("ben").await);
    let a = app.device(&ann, "ann-phone").await;
    let mut b = app.device(&ben, "ben-phone").await;
    for i in 0..3 {
        a.publish_json(
            &format!("from/{}/msg", ann.id),
            &json!({"id": format!("m{i}"), "to": ben.id, "text": "x"}),
        )
        .await;
        b.next_message_from(&ben.id, &ann.id).await;
    }
    let (_, ok) = app.get("/v1/sync?after=1", Some(&ben.access_token)).await;
    assert_eq!(
        (
            ok["reset"].as_bool(),
            ok["events"].as_array().map(Vec::len),
            ok["last_seq"].as_i64()
        ),
        (Some(false), Some(2), Some(3))
    );
    let (_, ahead) = app.get("/v1/sync?after=7", Some(&ben.access_token)).await;
    assert_eq!(
        (ahead["reset"].as_bool(), ahead["last_seq"].as_i64()),
        (Some(true), Some(3)),
        "a number never given out"
    );
    let (status, bad) = app.get("/v1/sync?after=-1", Some(&ben.access_token)).await;
    assert_eq!(
        (status, bad["error"]["code"].as_str()),
        (422, Some("invalid_cursor"))
    );
    b.publish_json(
        &format!("from/{}/sync", ben.id),
        &json!({"id": "s", "after": "soon"}),
    )
    .await;
    assert_eq!(
        b.next_on(&format!("to/{}/error", ben.id)).await["error"]["code"],
        "invalid_payload"
    );

    // Events past retention are gone: the device must reload from a snapshot.
    app.running()
        .store
        .delete_events_before(i64::MAX)
        .await
        .expect("prune");
    let (_, pruned) = app.get("/v1/sync?after=0", Some(&ben.access_token)).await;
    assert_eq!(
        (pruned["reset"].as_bool(), pruned["last_seq"].as_i64()),
        (Some(true), Some(3))
    );
    let (_, current) = app.get("/v1/sync?after=3", Some(&ben.access_token)).await;
    assert_eq!(
        (
            current["reset"].as_bool(),
            current["events"].as_array().map(Vec::len)
        ),
        (Some(false), Some(0)),
        "an up-to-date device is fine"
    );
    app.stop().await;
}
