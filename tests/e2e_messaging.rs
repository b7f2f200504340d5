//! The whole message path, as phones would use it: register and log in over HTTP,
//! connect over MQTT with the token, exchange messages with retries, read history.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::Ordering;

use common::{Backend, Device, TestApp};
use serde_json::{json, Value};

both_backends!(
    two_users_exchange_two_hundred_messages_with_retries_stored_exactly_once,
    a_backlog_is_stored_in_order_while_the_next_batch_is_checked,
);

/// Sends `count` messages from `from` to `to_id`, re-sending every 4th message's
/// predecessor with the same client id (a phone that never saw its ack).
async fn send_with_retries(from: &Device, from_id: &str, to_id: &str, prefix: &str, count: usize) {
    let topic = format!("from/{from_id}/msg");
    for i in 0..count {
        let body = json!({"id": format!("{prefix}-{i}"), "to": to_id, "text": format!("{prefix} says {i}")});
        from.publish_json(&topic, &body).await;
        if i % 4 == 3 {
            let again =
                json!({"id": format!("{prefix}-{}", i - 1), "to": to_id, "text": format!("{prefix} says {}", i - 1)});
            from.publish_json(&topic, &again).await;
        }
    }
}

/// Collects acks (by client id) and received messages (by message id) until every
/// one of `expect_acks` ids is acknowledged and `expect_received` messages arrived
/// from the other side and every own message came back as an event too (what the
/// user's other devices see).
struct Collected {
    acks: HashMap<String, Vec<Value>>,
    /// Message events from the other user, by message id.
    received: BTreeMap<String, Value>,
    /// Event numbers of every message event (own and received), by message id.
    event_seqs: BTreeMap<String, i64>,
}

async fn collect(device: &mut Device, uid: &str, expect_acks: usize, expect_received: usize) -> Collected {
    let (ack_topic, msg_topic) = (format!("to/{uid}/ack"), format!("to/{uid}/msg"));
    let mut acks: HashMap<String, Vec<Value>> = HashMap::new();
    let mut received = BTreeMap::new();
    let mut event_seqs: BTreeMap<String, i64> = BTreeMap::new();
    while acks.len() < expect_acks
        || received.len() < expect_received
        || event_seqs.len() < expect_acks + expect_received
    {
        let (topic, body) = device
            .next_matching(|p| match p {
                rumqttc::Packet::Publish(p) if p.topic == ack_topic || p.topic == msg_topic => {
                    Some((p.topic.clone(), serde_json::from_slice::<Value>(&p.payload).expect("json")))
                }
                _ => None,
            })
            .await;
        if topic == ack_topic {
            assert!(body.get("error").is_none(), "unexpected error ack: {body}");
            acks.entry(body["id"].as_str().expect("id").to_string()).or_default().push(body);
        } else {
            assert_eq!(body["type"], "message", "{body}");
            let id = body["id"].as_str().expect("message id").to_string();
            let seq = body["event_seq"].as_i64().expect("event_seq");
            let first = *event_seqs.entry(id.clone()).or_insert(seq);
            assert_eq!(first, seq, "a repeat of a message keeps its event number");
            if body["sender_id"] != uid {
                received.insert(id, body);
            }
        }
    }
    Collected { acks, received, event_seqs }
}

/// Each client id has one stored identity however often it was acknowledged, and
/// a sender's messages take increasing sequence numbers in the order it sent them.
fn check_acks(acks: &HashMap<String, Vec<Value>>, prefix: &str, count: usize) -> Vec<i64> {
    let mut seqs = Vec::new();
    for i in 0..count {
        let id = format!("{prefix}-{i}");
        let copies = acks.get(&id).unwrap_or_else(|| panic!("no ack for {id}"));
        assert!(copies.iter().all(|c| c == &copies[0]), "acks for {id} differ: {copies:?}");
        seqs.push(copies[0]["seq"].as_i64().expect("seq"));
    }
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{prefix}'s seqs not increasing: {seqs:?}");
    seqs
}

async fn two_users_exchange_two_hundred_messages_with_retries_stored_exactly_once(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    exchange(&app, 100).await;
    app.stop().await;
}

/// A backlog (two users sending 600 messages each, with retries, without waiting)
/// reaches the bridge faster than it stores. On PostgreSQL the next batch is
/// checked while the one before is stored, and stored after it: numbers, logs,
/// retries and order come out exactly as with one batch at a time. SQLite has one
/// writer and takes its batches one after another.
async fn a_backlog_is_stored_in_order_while_the_next_batch_is_checked(backend: Backend) {
    let Some(app) = TestApp::spawn_with(backend, |s| {
        s.messages.user_rate_per_sec = 100_000;
        s.messages.user_burst = 100_000;
        s.messages.conversation_rate_per_sec = 100_000;
        s.messages.conversation_burst = 100_000;
        s.mqtt.publish_rate_per_sec = 0;
        // Each device takes its 1,350 downlinks only once it has sent everything.
        s.mqtt.max_queued_messages = 10_000;
        // One connection to the database: a batch waiting for its turn must not
        // hold the one that the batch before it needs.
        s.database.max_connections = 1;
    })
    .await
    else {
        return;
    };
    let bridge = exchange(&app, 600).await;
    match backend {
        Backend::Postgres => assert!(bridge.batches_alongside() > 0, "no batch was checked while another was stored"),
        Backend::Sqlite => assert_eq!(bridge.batches_alongside(), 0),
    }
    app.stop().await;
}

/// Alice and Bob each send `count` messages to the other at once, with retries;
/// checks every ack, delivery, event number, history page and row. Returns the
/// bridge's counters.
async fn exchange(app: &TestApp, count: usize) -> std::sync::Arc<parley_bridge::BridgeStats> {
    let total = 2 * count as i64;
    let (alice, bob, mut a, mut b) = app.pair().await;

    tokio::join!(
        send_with_retries(&a, &alice.id, &bob.id, "a", count),
        send_with_retries(&b, &bob.id, &alice.id, "b", count),
    );
    let (a_all, b_all) = tokio::join!(collect(&mut a, &alice.id, count, count), collect(&mut b, &bob.id, count, count));
    let (a_acks, a_got) = (&a_all.acks, &a_all.received);
    let (b_acks, b_got) = (&b_all.acks, &b_all.received);
    // Each user's log numbers its message events 1..=total: retries add none.
    for all in [&a_all, &b_all] {
        let mut seqs: Vec<i64> = all.event_seqs.values().copied().collect();
        seqs.sort_unstable();
        assert_eq!(seqs, (1..=total).collect::<Vec<_>>());
    }
    for (acks, all) in [(a_acks, &a_all), (b_acks, &b_all)] {
        for copies in acks.values() {
            let id = copies[0]["message_id"].as_str().expect("id");
            assert_eq!(Some(&copies[0]["event_seq"].as_i64().expect("ack event_seq")), all.event_seqs.get(id));
        }
    }

    // A burst like this one reaches the bridge faster than it stores one message at
    // a time: most of it shares transactions, with the retries among it.
    let bridge = app.running.as_ref().and_then(|r| r.bridge.clone()).expect("the bridge runs here");
    assert!(bridge.stored_together() > 0, "no message of the burst was stored in a batch");
    // In one process on the embedded bus, the chat never crosses the bus: the
    // gate and the bridge hand uplinks and downlinks (an ack and a message each)
    // to each other on the lane.
    let (downlinks, publishes) = bridge.downlinks();
    assert!(downlinks >= 2 * total as u64, "{downlinks} downlinks for {total} messages");
    assert_eq!(publishes, 0, "{publishes} of {downlinks} downlinks went through the bus");
    let gate = app.gate().stats();
    let (uplinks, publishes) = (gate.uplinks.load(Ordering::Relaxed), gate.uplink_publishes.load(Ordering::Relaxed));
    assert!(uplinks >= total as u64, "{uplinks} uplinks for {total} messages");
    assert_eq!(publishes, 0, "{publishes} of {uplinks} uplinks went through the bus");

    let a_seqs = check_acks(a_acks, "a", count);
    let b_seqs = check_acks(b_acks, "b", count);
    let mut all: Vec<i64> = a_seqs.iter().chain(&b_seqs).copied().collect();
    all.sort_unstable();
    assert_eq!(all, (1..=total).collect::<Vec<_>>(), "one conversation, seqs 1..=total without gaps or repeats");

    // Every message reached the other side live, with what the sender was told.
    let a_ids: HashSet<_> = a_acks.values().map(|v| v[0]["message_id"].as_str().expect("id").to_string()).collect();
    let b_ids: HashSet<_> = b_acks.values().map(|v| v[0]["message_id"].as_str().expect("id").to_string()).collect();
    assert_eq!(b_got.keys().cloned().collect::<HashSet<_>>(), a_ids);
    assert_eq!(a_got.keys().cloned().collect::<HashSet<_>>(), b_ids);
    for m in b_got.values() {
        assert_eq!(m["sender_id"], json!(alice.id));
        let n: usize = m["client_id"].as_str().expect("client id")[2..].parse().expect("n");
        assert_eq!(m["text"], json!(format!("a says {n}")));
    }

    // History has exactly the messages, in order, for both members, across pages.
    let conversation = a_acks["a-0"][0]["conversation_id"].as_str().expect("conversation").to_string();
    for user in [&alice, &bob] {
        let mut seen = Vec::new();
        let mut after = 0;
        loop {
            let (status, page) = app
                .get(
                    &format!("/v1/conversations/{conversation}/messages?after={after}&limit=64"),
                    Some(&user.access_token),
                )
                .await;
            assert_eq!(status, 200, "{page}");
            let messages = page["messages"].as_array().expect("messages").clone();
            after = messages.last().map_or(after, |m| m["seq"].as_i64().expect("seq"));
            seen.extend(messages);
            if !page["has_more"].as_bool().expect("has_more") {
                break;
            }
        }
        let seqs: Vec<i64> = seen.iter().map(|m| m["seq"].as_i64().expect("seq")).collect();
        assert_eq!(seqs, (1..=total).collect::<Vec<_>>());
        let ids: HashSet<String> = seen.iter().map(|m| m["id"].as_str().expect("id").to_string()).collect();
        assert_eq!(ids, a_ids.union(&b_ids).cloned().collect());
    }
    let (status, list) = app.get("/v1/conversations", Some(&alice.access_token)).await;
    assert_eq!(status, 200);
    assert_eq!(list["conversations"].as_array().expect("list").len(), 1);
    assert_eq!(list["conversations"][0]["last_seq"], json!(total));
    assert_eq!(app.message_rows().await, total, "the database holds exactly {total} rows");
    drop((a, b));
    bridge
}
