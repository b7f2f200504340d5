//! What the bridge answers to bad uplinks: an error on the sender's ack topic, in
//! the message's own id when it can be read, and nothing stored or delivered.

mod common;

use std::time::Duration;

use common::{Backend, TestApp};
use serde_json::{json, Value};

both_backends!(
    bad_messages_get_an_error_ack_and_change_nothing,
    a_client_id_used_by_another_user_is_a_different_message,
    senders_over_their_rate_are_told_when_to_retry,
);

async fn bad_messages_get_an_error_ack_and_change_nothing(backend: Backend) {
    let Some(app) = TestApp::spawn_with(backend, |s| s.messages.max_text_chars = 10).await else {
        return;
    };
    let (alice, bob, mut a, mut b) = app.pair().await;
    let send = format!("from/{}/msg", alice.id);
    let ack = format!("to/{}/ack", alice.id);

    let cases: Vec<(&[u8], Value, &str)> = vec![
        (b"{not json", Value::Null, "invalid_payload"),
        (br#"{"id": "m1", "to": "someone"}"#, json!("m1"), "invalid_payload"),
        (br#"[1, 2, 3]"#, Value::Null, "invalid_payload"),
        (b"\xff\xfe binary", Value::Null, "invalid_payload"),
    ];
    for (payload, id, code) in &cases {
        a.publish_raw(&send, payload).await;
        let err = a.next_on(&ack).await;
        assert_eq!((&err["id"], err["error"]["code"].as_str()), (id, Some(*code)), "{err}");
        assert!(err["error"]["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    let json_cases = [
        (json!({"id": "m2", "to": uuid::Uuid::now_v7(), "text": "hi"}), "unknown_recipient"),
        (json!({"id": "m3", "to": alice.id, "text": "hi"}), "invalid_recipient"),
        (json!({"id": "m4", "to": bob.id, "text": "   "}), "empty_text"),
        (json!({"id": "m5", "to": bob.id, "text": "far too long for ten"}), "text_too_long"),
        (json!({"id": "x".repeat(65), "to": bob.id, "text": "hi"}), "invalid_id"),
        (json!({"id": "", "to": bob.id, "text": "hi"}), "invalid_id"),
    ];
    for (body, code) in &json_cases {
        a.publish_json(&send, body).await;
        let err = a.next_on(&ack).await;
        assert_eq!(err["error"]["code"], json!(code), "{body} → {err}");
        assert_eq!(err["id"], body["id"]);
    }
    a.publish_json(&format!("from/{}/nonsense", alice.id), &json!({})).await;
    assert_eq!(a.next_on(&ack).await["error"]["code"], "unknown_topic");

    assert!(b.nothing_on(&format!("to/{}/msg", bob.id), Duration::from_millis(300)).await, "bob got nothing");
    assert_eq!(app.message_rows().await, 0, "nothing stored");
    let (_, list) = app.get("/v1/conversations", Some(&alice.access_token)).await;
    assert_eq!(list["conversations"], json!([]), "no conversation was created");

    // The same device can go on: the next good message is the conversation's first.
    a.publish_json(&send, &json!({"id": "ok", "to": bob.id, "text": "fine now"})).await;
    let good = a.next_on(&ack).await;
    assert_eq!(good["seq"], 1, "{good}");
    assert_eq!(b.next_on(&format!("to/{}/msg", bob.id)).await["text"], "fine now");
    app.stop().await;
}

async fn a_client_id_used_by_another_user_is_a_different_message(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let (alice, bob, mut a, mut b) = app.pair().await;
    a.publish_json(&format!("from/{}/msg", alice.id), &json!({"id": "shared-1", "to": bob.id, "text": "from alice"}))
        .await;
    let a_ack = a.next_on(&format!("to/{}/ack", alice.id)).await;
    b.publish_json(&format!("from/{}/msg", bob.id), &json!({"id": "shared-1", "to": alice.id, "text": "from bob"}))
        .await;
    let b_ack = b.next_on(&format!("to/{}/ack", bob.id)).await;
    assert_ne!(a_ack["message_id"], b_ack["message_id"], "bob must not get alice's message back");
    assert_eq!((a_ack["seq"].as_i64(), b_ack["seq"].as_i64()), (Some(1), Some(2)));
    let got = a.next_message_from(&alice.id, &bob.id).await;
    assert_eq!((got["text"].as_str(), got["sender_id"].as_str()), (Some("from bob"), Some(bob.id.as_str())));
    assert_eq!(app.message_rows().await, 2);
    app.stop().await;
}

async fn senders_over_their_rate_are_told_when_to_retry(backend: Backend) {
    let Some(app) = TestApp::spawn_with(backend, |s| {
        s.messages.user_rate_per_sec = 2;
        s.messages.user_burst = 3;
    })
    .await
    else {
        return;
    };
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let mut a = app.device(&alice, "alice-phone").await;
    for i in 0..5 {
        a.publish_json(&format!("from/{}/msg", alice.id), &json!({"id": format!("m{i}"), "to": bob.id, "text": "hey"}))
            .await;
    }
    let mut refused = Vec::new();
    for _ in 0..5 {
        let ack = a.next_on(&format!("to/{}/ack", alice.id)).await;
        if ack.get("error").is_some() {
            assert_eq!(ack["error"]["code"], "rate_limited", "{ack}");
            let wait = ack["error"]["retry_after_ms"].as_u64().expect("retry_after_ms");
            assert!(wait > 0 && wait <= 1000, "{wait}");
            refused.push((ack["id"].as_str().expect("id").to_string(), wait));
        }
    }
    assert_eq!(refused.iter().map(|r| r.0.as_str()).collect::<Vec<_>>(), ["m3", "m4"], "a burst of 3 passes");
    assert_eq!(app.message_rows().await, 3);
    // After the advised wait, the same message goes through.
    tokio::time::sleep(std::time::Duration::from_millis(refused[0].1 + 50)).await;
    a.publish_json(&format!("from/{}/msg", alice.id), &json!({"id": "m3", "to": bob.id, "text": "hey"})).await;
    let ack = a.next_on(&format!("to/{}/ack", alice.id)).await;
    assert_eq!((ack["id"].as_str(), ack["seq"].as_i64()), (Some("m3"), Some(4)), "{ack}");
    app.stop().await;
}
