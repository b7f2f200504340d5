//! A member's own settings: pin, mute, archive, favourite, block, kept in sync on
//! the member's devices, shaping its listing, and blocks stopping messages both ways.

mod common;

use std::time::Duration;

use common::{Backend, TestApp, TestUser};
use serde_json::{json, Value};

both_backends!(settings_sync_across_devices_and_shape_the_listing, a_block_stops_messages_both_ways_until_lifted);

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or_else(|| panic!("no error code in {body}"))
}

async fn patch(app: &TestApp, who: &TestUser, conversation: &str, body: Value) -> (u16, Value) {
    let resp = app
        .client
        .patch(format!("{}/v1/conversations/{conversation}/settings", app.http))
        .bearer_auth(&who.access_token)
        .json(&body)
        .send()
        .await
        .expect("http");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn list(app: &TestApp, who: &TestUser, query: &str) -> Vec<String> {
    let (status, body) = app.get(&format!("/v1/conversations?{query}"), Some(&who.access_token)).await;
    assert_eq!(status, 200, "{body}");
    body["conversations"].as_array().expect("list").iter().map(|c| c["id"].as_str().expect("id").to_string()).collect()
}

async fn settings_sync_across_devices_and_shape_the_listing(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else { return };
    let (ann, ben, cat) = (app.user("ann").await, app.user("ben").await, app.user("cat").await);
    let a = app.device(&ann, "ann-phone").await;
    let c = app.device(&cat, "cat-phone").await;
    let mut phone = app.device(&ben, "ben-phone").await;
    let mut tablet = app.device(&ben, "ben-tablet").await;
    a.publish_json(&format!("from/{}/msg", ann.id), &json!({"id": "1", "to": ben.id, "text": "hi"})).await;
    let with_ann = phone.next_message_from(&ben.id, &ann.id).await["conversation_id"].as_str().expect("id").to_string();
    c.publish_json(&format!("from/{}/msg", cat.id), &json!({"id": "1", "to": ben.id, "text": "yo"})).await;
    let with_cat = phone.next_message_from(&ben.id, &cat.id).await["conversation_id"].as_str().expect("id").to_string();

    let (status, settings) = patch(
        &app,
        &ben,
        &with_ann,
        json!({"pinned": true, "muted_until": "2030-01-01T00:00:00Z", "ringtone": "chime"}),
    )
    .await;
    assert_eq!(status, 200, "{settings}");
    assert_eq!((settings["pinned"].as_bool(), settings["ringtone"].as_str()), (Some(true), Some("chime")));
    for device in [&mut phone, &mut tablet] {
        let event = device.next_on(&format!("to/{}/settings", ben.id)).await;
        assert_eq!(
            (event["type"].as_str(), event["conversation_id"].as_str()),
            (Some("settings"), Some(with_ann.as_str()))
        );
        assert_eq!(event["settings"]["muted_until"], "2030-01-01T00:00:00Z");
    }
    // Over MQTT from the tablet: archive the conversation with Cat.
    tablet
        .publish_json(
            &format!("from/{}/settings", ben.id),
            &json!({"conversation_id": with_cat, "archived": true, "favourite": true}),
        )
        .await;
    assert_eq!(phone.next_on(&format!("to/{}/settings", ben.id)).await["settings"]["archived"], true);

    assert_eq!(list(&app, &ben, "").await, vec![with_ann.clone()], "archived is out of the main list");
    assert_eq!(list(&app, &ben, "filter=archived").await, vec![with_cat.clone()]);
    assert_eq!(list(&app, &ben, "filter=pinned").await, vec![with_ann.clone()]);
    assert_eq!(list(&app, &ben, "filter=favourites").await, vec![with_cat.clone()]);
    assert_eq!(list(&app, &ben, "filter=unread").await, vec![with_ann.clone()]);
    assert_eq!(list(&app, &ben, "filter=archived&q=CA").await, vec![with_cat.clone()], "search by participant name");
    assert!(list(&app, &ben, "q=nobody").await.is_empty());
    let (_, anns) = app.get("/v1/conversations", Some(&ann.access_token)).await;
    assert_eq!(anns["conversations"][0]["settings"]["pinned"], false, "settings are per member");
    let (status, bad) = app.get("/v1/conversations?filter=starred", Some(&ben.access_token)).await;
    assert_eq!((status, code(&bad)), (400, "invalid_filter"));
    let (status, none) = patch(&app, &cat, &with_ann, json!({"pinned": true})).await;
    assert_eq!((status, code(&none)), (404, "conversation_not_found"));
    let (status, cleared) = patch(&app, &ben, &with_ann, json!({"muted_until": null, "ringtone": null})).await;
    assert_eq!(
        (status, cleared["muted_until"].clone(), cleared["ringtone"].clone(), cleared["pinned"].clone()),
        (200, Value::Null, Value::Null, json!(true))
    );
    let (_, sync) = app.get("/v1/sync?after=0", Some(&ben.access_token)).await;
    let kinds: Vec<&str> =
        sync["events"].as_array().expect("events").iter().map(|e| e["type"].as_str().expect("type")).collect();
    assert_eq!(
        kinds.iter().filter(|k| **k == "settings").count(),
        3,
        "settings changes travel through sync: {kinds:?}"
    );
    app.stop().await;
}

async fn a_block_stops_messages_both_ways_until_lifted(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else { return };
    let (ann, ben, cat) = (app.user("ann").await, app.user("ben").await, app.user("cat").await);
    let mut a = app.device(&ann, "ann-phone").await;
    let mut b = app.device(&ben, "ben-phone").await;
    a.publish_json(&format!("from/{}/msg", ann.id), &json!({"id": "1", "to": ben.id, "text": "hi"})).await;
    let conversation =
        a.next_on(&format!("to/{}/ack", ann.id)).await["conversation_id"].as_str().expect("id").to_string();
    assert_eq!(b.next_message_from(&ben.id, &ann.id).await["text"], "hi");
    let (status, _) = patch(&app, &ben, &conversation, json!({"blocked": true})).await;
    assert_eq!(status, 200);

    a.publish_json(&format!("from/{}/msg", ann.id), &json!({"id": "2", "to": ben.id, "text": "hello?"})).await;
    let refused = a.next_on(&format!("to/{}/ack", ann.id)).await;
    assert_eq!((refused["id"].as_str(), code(&refused)), (Some("2"), "blocked"));
    b.publish_json(
        &format!("from/{}/msg", ben.id),
        &json!({"id": "3", "conversation_id": conversation, "text": "sneaky"}),
    )
    .await;
    assert_eq!(code(&b.next_on(&format!("to/{}/ack", ben.id)).await), "you_blocked");
    assert!(b.nothing_matching(|p| matches!(p, rumqttc::Packet::Publish(p) if p.topic.ends_with("/msg") && !p.payload.is_empty() && serde_json::from_slice::<Value>(&p.payload).is_ok_and(|v| v["client_id"] == "2")), Duration::from_millis(300)).await);
    assert_eq!(app.message_rows().await, 1, "nothing stored either way");

    let group = app
        .client
        .post(format!("{}/v1/conversations", app.http))
        .bearer_auth(&ann.access_token)
        .json(&json!({"kind": "group", "members": [ben.id, cat.id]}))
        .send()
        .await
        .expect("http")
        .json::<Value>()
        .await
        .expect("json");
    let (status, body) = patch(&app, &ben, group["id"].as_str().expect("id"), json!({"blocked": true})).await;
    assert_eq!((status, code(&body)), (422, "not_direct"));

    let (status, _) = patch(&app, &ben, &conversation, json!({"blocked": false})).await;
    assert_eq!(status, 200);
    a.publish_json(&format!("from/{}/msg", ann.id), &json!({"id": "4", "to": ben.id, "text": "friends again"})).await;
    let topic = format!("to/{}/msg", ben.id);
    let again = b
        .next_matching(|p| match p {
            rumqttc::Packet::Publish(p) if p.topic == topic => {
                serde_json::from_slice::<Value>(&p.payload).ok().filter(|v| v["kind"] == "text")
            }
            _ => None,
        })
        .await;
    assert_eq!(again["text"], "friends again");
    app.stop().await;
}
