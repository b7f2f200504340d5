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

/// Collects `to/{uid}/msg` and `to/{uid}/receipt` events by number until every
/// one from 1 to `until` arrived (the device was connected from the start).
async fn events_until(device: &mut Device, uid: &str, events: &mut BTreeMap<i64, Value>, until: i64) {
    let (msg, receipt) = (format!("to/{uid}/msg"), format!("to/{uid}/receipt"));
    while events.range(1..=until).count() < until as usize {
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
            assert_eq!(previous, event, "a repeated event number must carry the same event");
        }
    }
}

/// What a device shows after applying its events in order.
#[derive(Debug, PartialEq, Eq)]
struct State {
    /// Message id → (text, deleted, reactions).
    messages: BTreeMap<String, (Value, Value, Value)>,
    /// (conversation, user) → (delivered, read).
    receipts: BTreeMap<(String, String), (Value, Value)>,
}

fn fold(events: &BTreeMap<i64, Value>) -> State {
    let mut state = State { messages: BTreeMap::new(), receipts: BTreeMap::new() };
    for e in events.values() {
        let id = |k: &str| e[k].as_str().expect("id").to_string();
        match e["type"].as_str().expect("type") {
            "message" | "message_edited" => {
                let reactions = state.messages.get(&id("id")).map_or(json!({}), |m| m.2.clone());
                let reactions = if e["deleted"] == true { json!({}) } else { reactions };
                state.messages.insert(id("id"), (e["text"].clone(), e["deleted"].clone(), reactions));
            }
            "message_deleted" | "message_hidden" => {
                state.messages.insert(id("message_id"), (json!(""), json!(true), json!({})));
            }
            "reaction" => {
                if let Some(m) = state.messages.get_mut(&id("message_id")) {
                    if m.1 != true {
                        m.2 = e["counts"].clone();
                    }
                }
            }
            "receipt" => {
                state.receipts.insert(
                    (id("conversation_id"), id("user_id")),
                    (e["delivered_seq"].clone(), e["read_seq"].clone()),
                );
            }
            other => panic!("unexpected event type {other}"),
        }
    }
    state
}

/// Asks over MQTT for everything after `after`, page by page, until nothing is left.
async fn sync_over_mqtt(device: &mut Device, user: &TestUser, mut after: i64) -> Vec<Value> {
    let mut out = Vec::new();
    let topic = format!("to/{}/sync", user.id);
    for page in 0.. {
        let id = format!("tablet-{page}");
        device.publish_json(&format!("from/{}/sync", user.id), &json!({"id": id, "after": after, "limit": 150})).await;
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
        after = events.last().map_or(after, |e| e["event_seq"].as_i64().expect("seq"));
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
    let mut targets: Vec<Value> = senders.iter().map(|s| json!({"to": bob.id, "from": s.id})).collect();
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
    let mut sent: Vec<(usize, String)> = Vec::new();
    for round in 0..100 {
        for (t, target) in targets.iter().enumerate() {
            let from = target["from"].as_str().expect("from");
            let k = senders.iter().position(|s| s.id == from).expect("sender");
            let mut body = json!({"id": format!("r{round}-t{t}"), "text": format!("round {round} in {t}")});
            match target.get("conversation_id") {
                Some(c) => body["conversation_id"] = c.clone(),
                None => body["to"] = json!(bob.id),
            }
            devices[k].publish_json(&format!("from/{from}/msg"), &body).await;
        }
        if round == 10 {
            // The tablet has seen the first rounds, then goes away.
            let (_, sync) = app.get("/v1/sync?after=0&limit=1", Some(&bob.access_token)).await;
            let mut tablet = tablet_before.take().expect("tablet");
            events_until(&mut tablet, &bob.id, &mut tablet_events, sync["last_seq"].as_i64().expect("last")).await;
            drop(tablet);
        }
        if round % 20 == 19 {
            // Bob reads on his phone as he goes: receipts travel through sync too.
            let (_, list) = app.get("/v1/conversations?limit=10", Some(&bob.access_token)).await;
            for c in list["conversations"].as_array().expect("list") {
                let body = json!({"conversation_id": c["id"], "read_seq": c["last_seq"]});
                phone.publish_json(&format!("from/{}/receipt", bob.id), &body).await;
            }
        }
    }
    for (k, s) in senders.iter().enumerate() {
        let acks = targets.iter().filter(|t| t["from"] == s.id.as_str()).count() * 100;
        for _ in 0..acks {
            let ack = devices[k].next_on(&format!("to/{}/ack", s.id)).await;
            assert!(ack.get("error").is_none(), "{ack}");
            sent.push((k, ack["message_id"].as_str().expect("message id").to_string()));
        }
    }

    // While the tablet is away: senders edit and delete some of their messages,
    // Bob reacts to some and deletes some for himself.
    let mut expected_own = vec![0usize; senders.len()];
    let mut expected_phone = 0usize;
    for (n, (k, id)) in sent.iter().enumerate() {
        let uid = &senders[*k].id;
        if n % 11 == 0 {
            devices[*k]
                .publish_json(&format!("from/{uid}/delete"), &json!({"message_id": id, "for": "everyone"}))
                .await;
            expected_own[*k] += 1;
        } else if n % 7 == 0 {
            devices[*k]
                .publish_json(&format!("from/{uid}/edit"), &json!({"message_id": id, "text": format!("edited {n}")}))
                .await;
            expected_own[*k] += 1;
        }
        // Not on messages being deleted: a reaction racing the deletion may be refused.
        if n % 5 == 0 && n % 11 != 0 {
            phone.publish_json(&format!("from/{}/react", bob.id), &json!({"message_id": id, "emoji": "👍"})).await;
            expected_phone += 1;
        }
        if n % 13 == 0 {
            phone.publish_json(&format!("from/{}/delete", bob.id), &json!({"message_id": id, "for": "me"})).await;
            expected_phone += 1;
        }
    }
    for (k, s) in senders.iter().enumerate() {
        let topic = format!("to/{}/msg", s.id);
        for _ in 0..expected_own[k] {
            devices[k]
                .next_matching(|p| match p {
                    rumqttc::Packet::Publish(p) if p.topic == topic => {
                        let v: Value = serde_json::from_slice(&p.payload).expect("json");
                        (v["type"] == "message_edited" || v["type"] == "message_deleted").then_some(())
                    }
                    _ => None,
                })
                .await;
        }
    }
    let mut reacted_or_hidden = 0;
    while reacted_or_hidden < expected_phone {
        let topic = format!("to/{}/msg", bob.id);
        let event = phone
            .next_matching(|p| match p {
                rumqttc::Packet::Publish(p) if p.topic == topic => {
                    let v: Value = serde_json::from_slice(&p.payload).expect("json");
                    let mine =
                        (v["type"] == "reaction" && v["user_id"] == bob.id.as_str()) || v["type"] == "message_hidden";
                    mine.then_some(v)
                }
                _ => None,
            })
            .await;
        let seq = event["event_seq"].as_i64().expect("seq");
        phone_events.insert(seq, event);
        reacted_or_hidden += 1;
    }
    let (_, sync) = app.get("/v1/sync?after=0&limit=1", Some(&bob.access_token)).await;
    let last = sync["last_seq"].as_i64().expect("last_seq");
    assert!(last >= 1000, "1000 messages, plus notices and receipts: {last}");
    events_until(&mut phone, &bob.id, &mut phone_events, last).await;

    // The tablet comes back and asks for what it missed since its last event.
    let mut tablet = app.device(&bob, "bob-tablet").await;
    let seen = *tablet_events.last_key_value().expect("tablet saw events").0;
    for event in sync_over_mqtt(&mut tablet, &bob, seen).await {
        let seq = event["event_seq"].as_i64().expect("seq");
        assert!(tablet_events.insert(seq, event).is_none(), "event {seq} delivered twice");
    }
    assert_eq!(
        tablet_events.keys().copied().collect::<Vec<_>>(),
        (1..=last).collect::<Vec<_>>(),
        "nothing missing, nothing extra, in order"
    );
    let state = fold(&phone_events);
    assert_eq!(phone_events.keys().copied().collect::<Vec<_>>(), (1..=last).collect::<Vec<_>>());
    assert_eq!(fold(&tablet_events), state, "the tablet ends with exactly the phone's state");
    // And that state is the server's: every conversation's history agrees with it.
    let (_, list) = app.get("/v1/conversations?limit=50", Some(&bob.access_token)).await;
    let mut from_history = BTreeMap::new();
    for c in list["conversations"].as_array().expect("list") {
        let (_, page) = app
            .get(
                &format!("/v1/conversations/{}/messages?after=0&limit=200", c["id"].as_str().expect("id")),
                Some(&bob.access_token),
            )
            .await;
        assert_eq!(page["has_more"], false);
        for m in page["messages"].as_array().expect("messages") {
            let reactions = m.get("reactions").cloned().unwrap_or(json!({}));
            from_history.insert(
                m["id"].as_str().expect("id").to_string(),
                (m["text"].clone(), m["deleted"].clone(), reactions),
            );
        }
    }
    assert_eq!(state.messages, from_history);
    let edited =
        state.messages.values().filter(|(t, _, _)| t.as_str().is_some_and(|t| t.starts_with("edited"))).count();
    let deleted = state.messages.values().filter(|(_, d, _)| d == &json!(true)).count();
    let reacted = state.messages.values().filter(|(_, _, r)| r.get("👍").is_some()).count();
    assert!(edited > 50 && deleted > 100 && reacted > 100, "edited {edited}, deleted {deleted}, reacted {reacted}");
    let messages = phone_events.values().filter(|e| e["type"] == "message" && e["kind"] == "text").count();
    let changes = phone_events
        .values()
        .filter(|e| {
            ["message_edited", "message_deleted", "reaction", "message_hidden"]
                .contains(&e["type"].as_str().unwrap_or(""))
        })
        .count();
    assert!(changes > 300, "{changes}");
    let receipts = phone_events.values().filter(|e| e["type"] == "receipt").count();
    assert_eq!(messages, 1000);
    // At least the first read of each group (whose creation notice is seq 1) moved.
    assert!(receipts >= 5, "{receipts}");

    // The same replay over HTTP.
    let mut replay = BTreeMap::new();
    let mut after = 0;
    loop {
        let (status, page) = app.get(&format!("/v1/sync?after={after}&limit=1000"), Some(&bob.access_token)).await;
        assert_eq!(status, 200);
        for e in page["events"].as_array().expect("events") {
            after = e["event_seq"].as_i64().expect("seq");
            replay.insert(after, e.clone());
        }
        if !page["has_more"].as_bool().expect("has_more") {
            break;
        }
    }
    assert_eq!(fold(&replay), state);
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
        a.publish_json(&format!("from/{}/msg", ann.id), &json!({"id": format!("m{i}"), "to": ben.id, "text": "x"}))
            .await;
        b.next_message_from(&ben.id, &ann.id).await;
    }
    let (_, ok) = app.get("/v1/sync?after=1", Some(&ben.access_token)).await;
    assert_eq!(
        (ok["reset"].as_bool(), ok["events"].as_array().map(Vec::len), ok["last_seq"].as_i64()),
        (Some(false), Some(2), Some(3))
    );
    let (_, ahead) = app.get("/v1/sync?after=7", Some(&ben.access_token)).await;
    assert_eq!(
        (ahead["reset"].as_bool(), ahead["last_seq"].as_i64()),
        (Some(true), Some(3)),
        "a number never given out"
    );
    let (status, bad) = app.get("/v1/sync?after=-1", Some(&ben.access_token)).await;
    assert_eq!((status, bad["error"]["code"].as_str()), (422, Some("invalid_cursor")));
    b.publish_json(&format!("from/{}/sync", ben.id), &json!({"id": "s", "after": "soon"})).await;
    assert_eq!(b.next_on(&format!("to/{}/error", ben.id)).await["error"]["code"], "invalid_payload");

    // Events past retention are gone: the device must reload from a snapshot.
    app.running().store.delete_events_before(i64::MAX).await.expect("prune");
    let (_, pruned) = app.get("/v1/sync?after=0", Some(&ben.access_token)).await;
    assert_eq!((pruned["reset"].as_bool(), pruned["last_seq"].as_i64()), (Some(true), Some(3)));
    let (_, current) = app.get("/v1/sync?after=3", Some(&ben.access_token)).await;
    assert_eq!(
        (current["reset"].as_bool(), current["events"].as_array().map(Vec::len)),
        (Some(false), Some(0)),
        "an up-to-date device is fine"
    );
    app.stop().await;
}
