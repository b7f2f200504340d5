//! What happens while people are connected: typing, presence, and changes to sent
//! messages (edits, deletions, reactions), with the refusals around them.

mod common;

use std::time::Duration;

use common::{Backend, TestApp};
use rumqttc::QoS;
use serde_json::{json, Value};

both_backends!(
    typing_reaches_only_the_other_members_throttled_and_unstored,
    presence_follows_the_devices_and_reaches_partners_only,
    stopping_the_platform_records_its_devices_gone,
    senders_change_their_messages_and_members_react,
    search_finds_only_what_the_caller_can_read,
    media_messages_carry_uploads_that_members_can_fetch,
);

/// The next presence signal about `user` on `topic` (devices also hear their own user's).
async fn next_presence_of(device: &mut common::Device, topic: &str, user: &str) -> Value {
    device
        .next_matching(|p| match p {
            rumqttc::Packet::Publish(p) if p.topic == topic => {
                let v: Value = serde_json::from_slice(&p.payload).expect("json");
                (v["user_id"] == user).then_some(v)
            }
            _ => None,
        })
        .await
}

/// Whether no presence signal about `user` arrives for a moment.
async fn no_presence_of(device: &mut common::Device, topic: &str, user: &str) -> bool {
    let about_user = |p: &rumqttc::Packet| match p {
        rumqttc::Packet::Publish(p) if p.topic == topic => {
            serde_json::from_slice::<Value>(&p.payload).is_ok_and(|v| v["user_id"] == user)
        }
        _ => false,
    };
    device.nothing_matching(about_user, Duration::from_millis(300)).await
}

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or_else(|| panic!("no error code in {body}"))
}

async fn typing_reaches_only_the_other_members_throttled_and_unstored(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else { return };
    let (ann, ben, cat) = (app.user("ann").await, app.user("ben").await, app.user("cat").await);
    let mut a = app.device(&ann, "ann-phone").await;
    let mut b = app.device(&ben, "ben-phone").await;
    let mut c = app.device(&cat, "cat-phone").await;
    a.publish_json(&format!("from/{}/msg", ann.id), &json!({"id": "m1", "to": ben.id, "text": "hi"})).await;
    let conversation = a.next_on(&format!("to/{}/ack", ann.id)).await["conversation_id"].clone();
    let (_, before) = app.get("/v1/sync?after=0&limit=1", Some(&ben.access_token)).await;

    let typing = |state: &str| json!({"conversation_id": conversation, "state": state}).to_string();
    let topic = format!("from/{}/typing", ann.id);
    a.client.publish(&topic, QoS::AtMostOnce, false, typing("start")).await.expect("publish");
    let got = b.next_on(&format!("to/{}/typing", ben.id)).await;
    assert_eq!(got, json!({"conversation_id": conversation, "user_id": ann.id, "state": "start", "expires_in": 6}));
    a.client.publish(&topic, QoS::AtMostOnce, false, typing("start")).await.expect("publish");
    assert!(
        b.nothing_on(&format!("to/{}/typing", ben.id), Duration::from_millis(400)).await,
        "a repeat within 3 s is absorbed"
    );
    a.client.publish(&topic, QoS::AtMostOnce, false, typing("stop")).await.expect("publish");
    assert_eq!(b.next_on(&format!("to/{}/typing", ben.id)).await["state"], "stop");
    assert!(a.nothing_on(&format!("to/{}/typing", ann.id), Duration::from_millis(100)).await, "not to the typist");

    let body = json!({"conversation_id": conversation, "state": "start"}).to_string();
    c.client.publish(format!("from/{}/typing", cat.id), QoS::AtMostOnce, false, body).await.expect("publish");
    assert_eq!(code(&c.next_on(&format!("to/{}/error", cat.id)).await), "conversation_not_found");
    a.client.publish(&topic, QoS::AtMostOnce, false, typing("dancing")).await.expect("publish");
    assert_eq!(code(&a.next_on(&format!("to/{}/error", ann.id)).await), "invalid_state");
    let (_, after) = app.get("/v1/sync?after=0&limit=1", Some(&ben.access_token)).await;
    assert_eq!(before["last_seq"], after["last_seq"], "typing is never stored");
    app.stop().await;
}

async fn presence_follows_the_devices_and_reaches_partners_only(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else { return };
    let (ann, ben, eve) = (app.user("ann").await, app.user("ben").await, app.user("eve").await);
    let resp = app
        .client
        .post(format!("{}/v1/conversations", app.http))
        .bearer_auth(&ann.access_token)
        .json(&json!({"kind": "direct", "members": [ben.id]}))
        .send()
        .await
        .expect("http");
    let conversation: Value = resp.json().await.expect("json");
    let mut b = app.device(&ben, "ben-phone").await;
    let mut e = app.device(&eve, "eve-phone").await;
    let topic = format!("to/{}/presence", ben.id);

    let a = app.device(&ann, "ann-phone").await;
    let online = next_presence_of(&mut b, &topic, &ann.id).await;
    assert_eq!((online["user_id"].as_str(), online["status"].as_str()), (Some(ann.id.as_str()), Some("online")));
    let second = app.device(&ann, "ann-tablet").await;
    assert!(no_presence_of(&mut b, &topic, &ann.id).await, "a second device changes nothing");
    a.publish_json(&format!("from/{}/presence", ann.id), &json!({"status": "away"})).await;
    assert_eq!(next_presence_of(&mut b, &topic, &ann.id).await["status"], "away");
    drop(a);
    assert!(no_presence_of(&mut b, &topic, &ann.id).await, "still online on the tablet");
    drop(second);
    let offline = next_presence_of(&mut b, &topic, &ann.id).await;
    assert_eq!(offline["status"], "offline");
    assert!(offline["last_seen_at"].is_string(), "{offline}");
    assert!(no_presence_of(&mut e, &format!("to/{}/presence", eve.id), &ann.id).await, "eve shares nothing with ann");

    let (status, seen) = app.get(&format!("/v1/presence?users={},{}", ann.id, ben.id), Some(&ben.access_token)).await;
    assert_eq!(status, 200);
    let seen = seen.as_array().expect("list").clone();
    let ann_seen = seen.iter().find(|p| p["user_id"] == ann.id.as_str()).expect("ann");
    assert_eq!((ann_seen["status"].as_str(), ann_seen["last_seen_at"].is_string()), (Some("offline"), true));
    assert_eq!(seen.iter().find(|p| p["user_id"] == ben.id.as_str()).expect("ben")["status"], "online");
    let (_, hidden) = app.get(&format!("/v1/presence?users={}", ann.id), Some(&eve.access_token)).await;
    assert_eq!(hidden, json!([]), "presence is for conversation partners only");
    let (status, bad) = app.get("/v1/presence?users=nope", Some(&eve.access_token)).await;
    assert_eq!((status, code(&bad)), (400, "invalid_query"));
    let (_, details) = app
        .get(&format!("/v1/conversations/{}", conversation["id"].as_str().expect("id")), Some(&ben.access_token))
        .await;
    let statuses: Vec<&str> =
        details["members"].as_array().expect("members").iter().map(|m| m["status"].as_str().expect("status")).collect();
    assert!(statuses.contains(&"offline") && statuses.contains(&"online"), "{details}");
    assert_eq!(
        code(&{
            e.publish_json(&format!("from/{}/presence", eve.id), &json!({"status": "asleep"})).await;
            e.next_on(&format!("to/{}/error", eve.id)).await
        }),
        "invalid_status"
    );
    app.stop().await;
}

/// A user's presence as stored: online, and when last seen.
async fn stored_presence(store: &parley_store::Store, user: &common::TestUser) -> (bool, bool) {
    let seen = store.presence_of(&[user.id.parse().expect("uuid")]).await.expect("presence");
    (seen[0].online, seen[0].last_seen_at.is_some())
}

async fn stopping_the_platform_records_its_devices_gone(backend: Backend) {
    let Some(mut app) = TestApp::spawn(backend).await else { return };
    let ann = app.user("ann").await;
    let _phone = app.device(&ann, "ann-phone").await;
    let deadline = tokio::time::Instant::now() + common::DEADLINE;
    while stored_presence(&app.running().store, &ann).await != (true, false) {
        assert!(tokio::time::Instant::now() < deadline, "ann never showed online");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The gate's last reports reach the bridge and are stored before it stops.
    app.running.take().expect("running").stop().await.expect("clean stop");
    let store = parley::app::open_store(&app.settings).await.expect("the database opens again");
    assert_eq!(stored_presence(&store, &ann).await, (false, true), "ann offline, with a last-seen time");
    store.close().await;
}

async fn senders_change_their_messages_and_members_react(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else { return };
    let (ann, ben, eve) = (app.user("ann").await, app.user("ben").await, app.user("eve").await);
    let mut a = app.device(&ann, "ann-phone").await;
    let mut b = app.device(&ben, "ben-phone").await;
    let mut e = app.device(&eve, "eve-phone").await;
    a.publish_json(&format!("from/{}/msg", ann.id), &json!({"id": "m1", "to": ben.id, "text": "frist"})).await;
    let ack = a.next_on(&format!("to/{}/ack", ann.id)).await;
    let (message, conversation) = (ack["message_id"].as_str().expect("id").to_string(), ack["conversation_id"].clone());
    b.publish_json(
        &format!("from/{}/msg", ben.id),
        &json!({"id": "r1", "conversation_id": conversation, "text": "ha", "reply_to": message}),
    )
    .await;
    let reply = b.next_on(&format!("to/{}/ack", ben.id)).await;
    assert!(reply.get("error").is_none(), "{reply}");

    // Refusals first: none of them changes anything.
    let refusals = [
        (1, "edit", json!({"id": "x1", "message_id": message, "text": "mine now"}), "not_sender"),
        (1, "delete", json!({"id": "x2", "message_id": message, "for": "everyone"}), "not_sender"),
        (2, "react", json!({"id": "x3", "message_id": message, "emoji": "😈"}), "message_not_found"),
        (2, "delete", json!({"id": "x4", "message_id": message, "for": "me"}), "message_not_found"),
        (0, "delete", json!({"id": "x5", "message_id": message, "for": "nobody"}), "invalid_scope"),
        (0, "react", json!({"id": "x6", "message_id": message, "emoji": "a b"}), "invalid_emoji"),
        (0, "edit", json!({"id": "x7", "message_id": message, "text": "  "}), "empty_text"),
    ];
    for (who, kind, body, expected) in refusals {
        let (device, user) = match who {
            0 => (&mut a, &ann),
            1 => (&mut b, &ben),
            _ => (&mut e, &eve),
        };
        device.publish_json(&format!("from/{}/{kind}", user.id), &body).await;
        let err = device.next_on(&format!("to/{}/error", user.id)).await;
        assert_eq!(
            (err["id"].clone(), code(&err).to_string()),
            (body["id"].clone(), expected.to_string()),
            "{kind} {body}"
        );
    }
    b.publish_json(
        &format!("from/{}/msg", ben.id),
        &json!({"id": "r2", "conversation_id": conversation, "text": "x", "reply_to": uuid::Uuid::now_v7()}),
    )
    .await;
    assert_eq!(b.next_on(&format!("to/{}/ack", ben.id)).await["error"]["code"], "invalid_reply");

    // The sender fixes the typo; the other side sees it.
    a.publish_json(&format!("from/{}/edit", ann.id), &json!({"message_id": message, "text": "first"})).await;
    let edited = b
        .next_matching(|p| match p {
            rumqttc::Packet::Publish(p) if p.topic.ends_with("/msg") => {
                let v: Value = serde_json::from_slice(&p.payload).expect("json");
                (v["type"] == "message_edited").then_some(v)
            }
            _ => None,
        })
        .await;
    assert_eq!((edited["text"].as_str(), edited["edited_at"].is_string()), (Some("first"), true));
    let (_, edits) = app.get(&format!("/v1/messages/{message}/edits"), Some(&ben.access_token)).await;
    assert_eq!(
        edits.as_array().map(|e| e.iter().map(|x| x["text"].clone()).collect::<Vec<_>>()),
        Some(vec![json!("frist")])
    );
    let (status, _) = app.get(&format!("/v1/messages/{message}/edits"), Some(&eve.access_token)).await;
    assert_eq!(status, 404);

    // Reactions over HTTP, one of each emoji per user, counted per emoji.
    for who in [&ann, &ben, &ben] {
        assert_eq!(
            app.send(reqwest::Method::PUT, &format!("/v1/messages/{message}/reactions/👍"), who, None).await.0,
            204
        );
    }
    let (_, page) = app
        .get(&format!("/v1/conversations/{}/messages", conversation.as_str().expect("id")), Some(&ann.access_token))
        .await;
    assert_eq!(page["messages"][0]["reactions"], json!({"👍": 2}));
    assert_eq!(page["messages"][1]["reply_to"], json!(message));
    let (_, who) = app.get(&format!("/v1/messages/{message}/reactions"), Some(&ann.access_token)).await;
    assert_eq!(who.as_array().map(Vec::len), Some(2));

    // Ben hides it for himself; Ann deletes it for everyone: a tombstone keeps seq 1.
    assert_eq!(app.send(reqwest::Method::DELETE, &format!("/v1/messages/{message}?for=me"), &ben, None).await.0, 204);
    let (_, bens) = app
        .get(&format!("/v1/conversations/{}/messages", conversation.as_str().expect("id")), Some(&ben.access_token))
        .await;
    assert_eq!(
        (bens["messages"][0]["deleted"].as_bool(), bens["messages"][0]["text"].as_str()),
        (Some(true), Some(""))
    );
    let (_, anns) = app
        .get(&format!("/v1/conversations/{}/messages", conversation.as_str().expect("id")), Some(&ann.access_token))
        .await;
    assert_eq!(anns["messages"][0]["text"], "first", "only ben's view changed");
    assert_eq!(
        app.send(reqwest::Method::DELETE, &format!("/v1/messages/{message}?for=everyone"), &ann, None).await.0,
        204
    );
    let (_, anns) = app
        .get(&format!("/v1/conversations/{}/messages", conversation.as_str().expect("id")), Some(&ann.access_token))
        .await;
    let tomb = &anns["messages"][0];
    assert_eq!(
        (tomb["seq"].as_i64(), tomb["deleted"].as_bool(), tomb["text"].as_str(), tomb.get("reactions")),
        (Some(1), Some(true), Some(""), None)
    );
    assert_eq!(
        app.send(reqwest::Method::PATCH, &format!("/v1/messages/{message}"), &ann, Some(json!({"text": "zombie"})))
            .await
            .0,
        409
    );
    app.stop().await;
}

async fn search_finds_only_what_the_caller_can_read(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else { return };
    let (ann, ben, eve) = (app.user("ann").await, app.user("ben").await, app.user("eve").await);
    let mut a = app.device(&ann, "ann-phone").await;
    let mut e = app.device(&eve, "eve-phone").await;
    for (i, text) in ["The quarterly report is late", "report: figures attached", "lunch?"].iter().enumerate() {
        a.publish_json(&format!("from/{}/msg", ann.id), &json!({"id": format!("m{i}"), "to": ben.id, "text": text}))
            .await;
        a.next_on(&format!("to/{}/ack", ann.id)).await;
    }
    e.publish_json(&format!("from/{}/msg", eve.id), &json!({"id": "e1", "to": ann.id, "text": "my own report"})).await;
    let eve_conversation =
        e.next_on(&format!("to/{}/ack", eve.id)).await["conversation_id"].as_str().expect("id").to_string();

    let (status, found) = app.get("/v1/search?q=Report", Some(&ben.access_token)).await;
    assert_eq!(status, 200, "{found}");
    let texts: Vec<&str> = found["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| r["message"]["text"].as_str().expect("text"))
        .collect();
    assert_eq!(texts, ["report: figures attached", "The quarterly report is late"], "newest first, none of eve's");
    assert!(found["results"][1]["highlight"].as_str().expect("highlight").contains("<mark>report</mark>"));
    let (_, page) = app.get("/v1/search?q=report&limit=1", Some(&ben.access_token)).await;
    let cursor = page["next_cursor"].as_str().expect("cursor").to_string();
    let (_, next) = app.get(&format!("/v1/search?q=report&limit=1&cursor={cursor}"), Some(&ben.access_token)).await;
    assert_eq!(next["results"][0]["message"]["text"], "The quarterly report is late");
    let (_, anns) =
        app.get(&format!("/v1/search?q=report&conversation_id={eve_conversation}"), Some(&ann.access_token)).await;
    assert_eq!(anns["results"].as_array().map(Vec::len), Some(1));
    let (status, denied) =
        app.get(&format!("/v1/search?q=report&conversation_id={eve_conversation}"), Some(&ben.access_token)).await;
    assert_eq!((status, code(&denied)), (404, "conversation_not_found"));
    let (status, empty) = app.get("/v1/search?q=%20", Some(&ben.access_token)).await;
    assert_eq!((status, code(&empty)), (422, "invalid_query"));
    app.stop().await;
}

/// PostgreSQL: new messages' search entries wait in the index's pending list
/// (which the insert that fills it would merge inside a batch of messages);
/// housekeeping merges them within a second or two, and search finds the
/// messages before and after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn housekeeping_merges_pending_search_entries_on_postgres() {
    let Some(app) = TestApp::spawn(Backend::Postgres).await else { return };
    let db = sqlx::PgPool::connect(app.database_url()).await.expect("database");
    sqlx::query("CREATE EXTENSION IF NOT EXISTS pgstattuple").execute(&db).await.expect("pgstattuple");
    let (ann, ben, mut a, _b) = app.pair().await;
    for i in 0..40 {
        a.publish_json(
            &format!("from/{}/msg", ann.id),
            &json!({"id": format!("m{i}"), "to": ben.id, "text": format!("note {i}")}),
        )
        .await;
        a.next_on(&format!("to/{}/ack", ann.id)).await;
    }
    let found = |q: &'static str| {
        let app = &app;
        let token = ben.access_token.clone();
        async move {
            app.get(&format!("/v1/search?q={q}&limit=100"), Some(&token)).await.1["results"].as_array().map(Vec::len)
        }
    };
    assert_eq!((found("note").await, found("17").await), (Some(40), Some(1)));

    let deadline = tokio::time::Instant::now() + common::DEADLINE;
    loop {
        let (pages, tuples): (i32, i64) =
            sqlx::query_as("SELECT pending_pages, pending_tuples FROM pgstatginindex('messages_search')")
                .fetch_one(&db)
                .await
                .expect("index statistics");
        if (pages, tuples) == (0, 0) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{tuples} entries still pending on {pages} pages");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!((found("note").await, found("17").await), (Some(40), Some(1)));
    db.close().await;
    app.stop().await;
}

async fn media_messages_carry_uploads_that_members_can_fetch(backend: Backend) {
    let Some(app) = TestApp::spawn_with(backend, |s| s.messages.max_upload_bytes = 1024).await else { return };
    let (ann, ben, eve) = (app.user("ann").await, app.user("ben").await, app.user("eve").await);
    let mut a = app.device(&ann, "ann-phone").await;
    let mut b = app.device(&ben, "ben-phone").await;
    let upload = |who: &common::TestUser, content_type: Option<&str>, body: Vec<u8>| {
        let mut req = app
            .client
            .post(format!("{}/v1/uploads?filename=cat.png", app.http))
            .bearer_auth(&who.access_token)
            .body(body);
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        async move {
            let resp = req.send().await.expect("http");
            (resp.status().as_u16(), resp.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let png = b"\x89PNG\r\n\x1a\n tiny cat".to_vec();
    let (status, uploaded) = upload(&ann, Some("image/png"), png.clone()).await;
    assert_eq!(status, 201, "{uploaded}");
    assert_eq!(
        (uploaded["content_type"].as_str(), uploaded["size"].as_i64(), uploaded["filename"].as_str()),
        (Some("image/png"), Some(png.len() as i64), Some("cat.png"))
    );
    let id = uploaded["id"].as_str().expect("id").to_string();
    let (status, big) = upload(&ann, Some("image/png"), vec![0u8; 2048]).await;
    assert_eq!((status, code(&big)), (413, "too_large"));
    let (status, untyped) = upload(&ann, None, png.clone()).await;
    assert_eq!((status, code(&untyped)), (422, "invalid_content_type"));

    a.publish_json(
        &format!("from/{}/msg", ann.id),
        &json!({"id": "p1", "to": ben.id, "kind": "image", "attachment_id": id, "text": "look"}),
    )
    .await;
    let ack = a.next_on(&format!("to/{}/ack", ann.id)).await;
    assert!(ack.get("error").is_none(), "{ack}");
    let got = b.next_message_from(&ben.id, &ann.id).await;
    assert_eq!(
        (got["kind"].as_str(), got["text"].as_str(), got["attachment"]["id"].as_str()),
        (Some("image"), Some("look"), Some(id.as_str()))
    );
    let resp = app
        .client
        .get(format!("{}/v1/uploads/{id}", app.http))
        .bearer_auth(&ben.access_token)
        .send()
        .await
        .expect("http");
    assert_eq!((resp.status().as_u16(), resp.headers()["content-type"].to_str().ok()), (200, Some("image/png")));
    assert_eq!(resp.bytes().await.expect("bytes").to_vec(), png);
    let (status, _) = app.get(&format!("/v1/uploads/{id}"), Some(&eve.access_token)).await;
    assert_eq!(status, 404, "eve is in no conversation with it");

    for (body, expected) in [
        (json!({"id": "p2", "to": ann.id, "kind": "image", "attachment_id": id}), "invalid_attachment"),
        (json!({"id": "p3", "to": ann.id, "kind": "image", "text": "no file"}), "invalid_attachment"),
        (json!({"id": "p4", "to": ann.id, "kind": "sticker", "text": "?"}), "invalid_kind"),
        (json!({"id": "p5", "to": ann.id, "text": "x", "attachment_id": id}), "invalid_attachment"),
    ] {
        b.publish_json(&format!("from/{}/msg", ben.id), &body).await;
        assert_eq!(code(&b.next_on(&format!("to/{}/ack", ben.id)).await), expected, "{body}");
    }
    // Deleted for everyone, the message no longer carries (or shares) the file.
    let message = ack["message_id"].as_str().expect("id");
    assert_eq!(
        app.send(reqwest::Method::DELETE, &format!("/v1/messages/{message}?for=everyone"), &ann, None).await.0,
        204
    );
    let (status, _) = app.get(&format!("/v1/uploads/{id}"), Some(&ben.access_token)).await;
    assert_eq!(status, 404);
    let (_, page) = app
        .get(
            &format!("/v1/conversations/{}/messages", ack["conversation_id"].as_str().expect("id")),
            Some(&ben.access_token),
        )
        .await;
    assert!(page["messages"][0].get("attachment").is_none(), "{page}");
    app.stop().await;
}
