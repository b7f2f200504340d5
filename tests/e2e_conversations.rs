//! Groups and receipts as apps use them: created and managed over HTTP, used
//! over MQTT, every change reaching each member's devices.

mod common;

use std::time::Duration;

use common::{Backend, Device, TestApp, TestUser};
use serde_json::{json, Value};

both_backends!(
    a_group_fans_out_to_every_member_and_refuses_outsiders,
    roles_decide_who_may_manage_a_group,
    receipts_move_ticks_and_unread_counts,
    direct_conversations_open_once_per_pair,
);

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or_else(|| panic!("no error code in {body}"))
}

impl TestApp {
    async fn group(&self, owner: &TestUser, title: &str, members: &[&TestUser]) -> String {
        let ids: Vec<&str> = members.iter().map(|m| m.id.as_str()).collect();
        let (status, body) = self
            .send(
                reqwest::Method::POST,
                "/v1/conversations",
                owner,
                Some(json!({"kind": "group", "title": title, "members": ids})),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        body["id"].as_str().expect("group id").to_string()
    }
}

/// The next message event (own or not) in `conversation` with this `kind`.
async fn next_in(device: &mut Device, uid: &str, conversation: &str, kind: &str) -> Value {
    let topic = format!("to/{uid}/msg");
    device
        .next_matching(|p| match p {
            rumqttc::Packet::Publish(p) if p.topic == topic => {
                let v: Value = serde_json::from_slice(&p.payload).expect("json");
                (v["conversation_id"] == conversation && v["kind"] == kind).then_some(v)
            }
            _ => None,
        })
        .await
}

async fn a_group_fans_out_to_every_member_and_refuses_outsiders(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let (ann, ben, cat, eve) =
        (app.user("ann").await, app.user("ben").await, app.user("cat").await, app.user("eve").await);
    let (mut a, mut b, mut c) =
        (app.device(&ann, "ann-phone").await, app.device(&ben, "ben-phone").await, app.device(&cat, "cat-phone").await);
    let group = app.group(&ann, "Team", &[&ben, &cat]).await;
    let mut e = app.device(&eve, "eve-phone").await;
    for (dev, user) in [(&mut a, &ann), (&mut b, &ben), (&mut c, &cat)] {
        let created = next_in(dev, &user.id, &group, "system").await;
        assert_eq!(
            serde_json::from_str::<Value>(created["text"].as_str().expect("text")).expect("json")["action"],
            "created"
        );
    }
    b.publish_json(&format!("from/{}/msg", ben.id), &json!({"id": "g1", "conversation_id": group, "text": "hi team"}))
        .await;
    let ack = b.next_on(&format!("to/{}/ack", ben.id)).await;
    assert_eq!(ack["seq"], 2, "{ack}");
    for (dev, user) in [(&mut a, &ann), (&mut b, &ben), (&mut c, &cat)] {
        let m = next_in(dev, &user.id, &group, "text").await;
        assert_eq!(
            (m["text"].as_str(), m["sender_id"].as_str(), m["seq"].as_i64()),
            (Some("hi team"), Some(ben.id.as_str()), Some(2))
        );
        assert!(m["event_seq"].as_i64().is_some_and(|s| s >= 2), "{m}");
    }
    e.publish_json(&format!("from/{}/msg", eve.id), &json!({"id": "x", "conversation_id": group, "text": "let me in"}))
        .await;
    assert_eq!(e.next_on(&format!("to/{}/ack", eve.id)).await["error"]["code"], "conversation_not_found");
    e.publish_json(
        &format!("from/{}/msg", eve.id),
        &json!({"id": "y", "to": ann.id, "conversation_id": group, "text": "both"}),
    )
    .await;
    assert_eq!(e.next_on(&format!("to/{}/ack", eve.id)).await["error"]["code"], "invalid_recipient");
    let (status, body) =
        app.send(reqwest::Method::GET, &format!("/v1/conversations/{group}/messages"), &eve, None).await;
    assert_eq!((status, code(&body)), (404, "conversation_not_found"));
    let (status, body) = app.send(reqwest::Method::GET, &format!("/v1/conversations/{group}"), &cat, None).await;
    assert_eq!(status, 200);
    assert_eq!(
        (body["kind"].as_str(), body["title"].as_str(), body["members"].as_array().map(Vec::len)),
        (Some("group"), Some("Team"), Some(3))
    );
    assert_eq!(app.message_rows().await, 2, "the creation notice and one message");
    app.stop().await;
}

async fn roles_decide_who_may_manage_a_group(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let (ann, ben, cat, dan) =
        (app.user("ann").await, app.user("ben").await, app.user("cat").await, app.user("dan").await);
    let group = app.group(&ann, "Club", &[&ben]).await;
    let members = format!("/v1/conversations/{group}/members");
    use reqwest::Method as M;

    let (status, body) = app.send(M::POST, &members, &ben, Some(json!({"user_id": cat.id}))).await;
    assert_eq!((status, code(&body)), (403, "insufficient_role"), "a member cannot add");
    let (status, body) =
        app.send(M::PATCH, &format!("/v1/conversations/{group}"), &ben, Some(json!({"title": "Mine"}))).await;
    assert_eq!((status, code(&body)), (403, "insufficient_role"), "a member cannot rename");
    let (status, _) = app.send(M::PATCH, &format!("{members}/{}", ben.id), &ann, Some(json!({"role": "admin"}))).await;
    assert_eq!(status, 200);
    let (status, body) = app.send(M::POST, &members, &ben, Some(json!({"user_id": cat.id, "role": "admin"}))).await;
    assert_eq!((status, code(&body)), (403, "insufficient_role"), "only the owner adds admins");
    let (status, body) = app.send(M::POST, &members, &ben, Some(json!({"user_id": cat.id}))).await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = app.send(M::POST, &members, &ben, Some(json!({"user_id": cat.id}))).await;
    assert_eq!((status, code(&body)), (409, "already_member"));
    let (status, body) = app.send(M::POST, &members, &ann, Some(json!({"user_id": uuid::Uuid::now_v7()}))).await;
    assert_eq!((status, code(&body)), (404, "unknown_member"));
    let (status, body) = app.send(M::DELETE, &format!("{members}/{}", ann.id), &ben, None).await;
    assert_eq!((status, code(&body)), (403, "insufficient_role"), "an admin cannot remove the owner");

    // Cat is removed: its device hears of it, then hears nothing more from the group.
    let mut c = app.device(&cat, "cat-phone").await;
    let (status, _) = app.send(M::DELETE, &format!("{members}/{}", cat.id), &ben, None).await;
    assert_eq!(status, 204);
    // The notice of Cat's addition may still be on its way to the new connection; skip it.
    let removed = loop {
        let notice = next_in(&mut c, &cat.id, &group, "system").await;
        let action =
            serde_json::from_str::<Value>(notice["text"].as_str().expect("text")).expect("json")["action"].clone();
        if action != "member_added" {
            break action;
        }
    };
    assert_eq!(removed, "member_removed");
    let a = app.device(&ann, "ann-phone").await;
    a.publish_json(
        &format!("from/{}/msg", ann.id),
        &json!({"id": "after", "conversation_id": group, "text": "cat is gone"}),
    )
    .await;
    assert!(c.nothing_on(&format!("to/{}/msg", cat.id), Duration::from_millis(400)).await);

    // The owner leaves: the admin inherits the group.
    let (status, _) = app.send(M::DELETE, &format!("{members}/{}", ann.id), &ann, None).await;
    assert_eq!(status, 204);
    let (_, details) = app.send(M::GET, &format!("/v1/conversations/{group}"), &ben, None).await;
    let roles: Vec<(String, String)> = details["members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|m| (m["user_id"].as_str().expect("id").to_string(), m["role"].as_str().expect("role").to_string()))
        .collect();
    assert_eq!(roles, vec![(ben.id.clone(), "owner".to_string())]);
    let (status, _) = app.send(M::GET, &format!("/v1/conversations/{group}"), &dan, None).await;
    assert_eq!(status, 404);
    let (_, history) = app.send(M::GET, &format!("/v1/conversations/{group}/messages?limit=200"), &ben, None).await;
    let actions: Vec<String> = history["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .filter(|m| m["kind"] == "system")
        .map(|m| {
            serde_json::from_str::<Value>(m["text"].as_str().expect("text")).expect("json")["action"]
                .as_str()
                .expect("action")
                .to_string()
        })
        .collect();
    assert_eq!(actions, ["created", "role_changed", "member_added", "member_removed", "member_left", "role_changed"]);
    app.stop().await;
}

async fn receipts_move_ticks_and_unread_counts(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let (ann, ben) = (app.user("ann").await, app.user("ben").await);
    let mut a = app.device(&ann, "ann-phone").await;
    let mut b = app.device(&ben, "ben-phone").await;
    let mut conversation = String::new();
    for i in 1..=3 {
        a.publish_json(
            &format!("from/{}/msg", ann.id),
            &json!({"id": format!("m{i}"), "to": ben.id, "text": format!("n{i}")}),
        )
        .await;
        conversation =
            a.next_on(&format!("to/{}/ack", ann.id)).await["conversation_id"].as_str().expect("id").to_string();
    }
    let (_, unread) = app.get("/v1/unread", Some(&ben.access_token)).await;
    assert_eq!(unread, json!({"total": 3, "conversations": {conversation.clone(): 3}}));

    b.publish_json(&format!("from/{}/receipt", ben.id), &json!({"conversation_id": conversation, "delivered_seq": 3}))
        .await;
    let tick = a.next_on(&format!("to/{}/receipt", ann.id)).await;
    assert_eq!(
        (tick["type"].as_str(), tick["user_id"].as_str(), tick["delivered_seq"].as_i64(), tick["read_seq"].as_i64()),
        (Some("receipt"), Some(ben.id.as_str()), Some(3), Some(0))
    );
    assert_eq!(
        b.next_on(&format!("to/{}/unread", ben.id)).await,
        json!({"conversation_id": conversation, "unread": 3, "total": 3})
    );

    let (status, after) = app
        .send(reqwest::Method::POST, &format!("/v1/conversations/{conversation}/read"), &ben, Some(json!({"seq": 2})))
        .await;
    assert_eq!((status, after), (200, json!({"conversation_id": conversation, "unread": 1, "total": 1})));
    let tick = a.next_on(&format!("to/{}/receipt", ann.id)).await;
    assert_eq!(tick["read_seq"], 2);
    let (_, list) = app.get("/v1/conversations", Some(&ben.access_token)).await;
    assert_eq!(list["conversations"][0]["unread"], 1);
    let (_, list) = app.get("/v1/conversations", Some(&ann.access_token)).await;
    let ben_member = list["conversations"][0]["members"]
        .as_array()
        .expect("members")
        .iter()
        .find(|m| m["user_id"] == ben.id.as_str())
        .cloned()
        .expect("ben");
    assert_eq!((ben_member["last_delivered_seq"].as_i64(), ben_member["last_read_seq"].as_i64()), (Some(3), Some(2)));

    // Backwards, empty, foreign and malformed receipts change nothing.
    b.publish_json(&format!("from/{}/receipt", ben.id), &json!({"conversation_id": conversation, "read_seq": 1})).await;
    assert!(a.nothing_on(&format!("to/{}/receipt", ann.id), Duration::from_millis(300)).await);
    let eve = app.user("eve").await;
    let mut e = app.device(&eve, "eve-phone").await;
    for (body, expected) in [
        (json!({"id": "r1", "conversation_id": conversation, "read_seq": 3}), "conversation_not_found"),
        (json!({"id": "r2", "conversation_id": conversation}), "invalid_receipt"),
        (json!({"id": "r3", "read_seq": 3}), "invalid_payload"),
    ] {
        e.publish_json(&format!("from/{}/receipt", eve.id), &body).await;
        let err = e.next_on(&format!("to/{}/error", eve.id)).await;
        assert_eq!((err["id"].clone(), err["error"]["code"].as_str()), (body["id"].clone(), Some(expected)));
    }
    let (_, unread) = app.get("/v1/unread", Some(&ben.access_token)).await;
    assert_eq!(unread["total"], 1);

    // Per message: delivered to Ben up to 3, read up to 2.
    let (_, page) = app.get(&format!("/v1/conversations/{conversation}/messages"), Some(&ann.access_token)).await;
    let ids: Vec<String> = page["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["id"].as_str().expect("id").to_string())
        .collect();
    let (_, second) = app.get(&format!("/v1/messages/{}/receipts", ids[1]), Some(&ann.access_token)).await;
    assert_eq!(second, json!({"delivered": [ben.id], "read": [ben.id]}));
    let (_, third) = app.get(&format!("/v1/messages/{}/receipts", ids[2]), Some(&ann.access_token)).await;
    assert_eq!(third, json!({"delivered": [ben.id], "read": []}));
    let (status, _) = app.get(&format!("/v1/messages/{}/receipts", ids[2]), Some(&eve.access_token)).await;
    assert_eq!(status, 404);
    app.stop().await;
}

async fn direct_conversations_open_once_per_pair(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let (ann, ben) = (app.user("ann").await, app.user("ben").await);
    let open = |who: &TestUser, other: &TestUser| {
        let body = json!({"kind": "direct", "members": [other.id]});
        let who = who.clone();
        let app = &app;
        async move { app.send(reqwest::Method::POST, "/v1/conversations", &who, Some(body)).await }
    };
    let (s1, first) = open(&ann, &ben).await;
    let (s2, second) = open(&ben, &ann).await;
    assert_eq!((s1, s2), (201, 201));
    assert_eq!(first["id"], second["id"], "one conversation per pair");
    assert_eq!(first["kind"], "direct");
    let (status, body) = app
        .send(reqwest::Method::POST, "/v1/conversations", &ann, Some(json!({"kind": "direct", "members": [ann.id]})))
        .await;
    assert_eq!((status, code(&body)), (422, "invalid_members"));
    let (status, body) = app
        .send(reqwest::Method::POST, "/v1/conversations", &ann, Some(json!({"kind": "channel", "members": []})))
        .await;
    assert_eq!((status, code(&body)), (422, "invalid_kind"));
    let (status, body) = app
        .send(reqwest::Method::POST, "/v1/conversations", &ann, Some(json!({"kind": "group", "members": [ben.id], "context": {"type": "consultation", "id": "c-42"}, "audience": "user_provider"})))
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        (body["context"].clone(), body["audience"].clone()),
        (json!({"type": "consultation", "id": "c-42"}), json!("user_provider"))
    );
    let (status, body) = app
        .send(
            reqwest::Method::PATCH,
            &format!("/v1/conversations/{}/members/{}", first["id"].as_str().expect("id"), ben.id),
            &ann,
            Some(json!({"role": "admin"})),
        )
        .await;
    assert_eq!((status, code(&body)), (422, "not_a_group"));
    app.stop().await;
}
