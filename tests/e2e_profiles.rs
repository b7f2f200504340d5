//! Profiles, roles, user search and contacts through the real HTTP API, with
//! contact changes reaching devices over MQTT and through sync.

mod common;

use std::time::Duration;

use common::{Backend, TestApp, TestUser};
use reqwest::Method;
use serde_json::{json, Value};

both_backends!(
    profile_updates_follow_field_rules_and_refuse_mass_assignment,
    profile_photos_are_own_images_that_everyone_may_see,
    admins_grant_roles_and_verification_and_nobody_else_does,
    users_are_found_by_name_role_specialty_and_availability_page_by_page,
    contacts_are_requested_answered_and_removed_with_live_events,
);

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or_else(|| panic!("no error code in {body}"))
}

async fn provider(app: &TestApp, username: &str) -> TestUser {
    let password = format!("pw-{username}-long-enough");
    let (status, body) =
        app.post("/v1/auth/register", json!({"username": username, "password": password, "role": "provider"})).await;
    assert_eq!((status, body["user"]["role"].as_str()), (201, Some("provider")), "{body}");
    app.login(username, &password).await
}

async fn profile_updates_follow_field_rules_and_refuse_mass_assignment(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let ann = app.user("ann").await;
    let (_, before) = app.send(Method::GET, "/v1/me", &ann, None).await;
    let attempts = [
        (json!({"role": "admin"}), 403, "field_not_allowed"),
        (json!({"verified": true}), 403, "field_not_allowed"),
        (json!({"display_name": "Ann", "rating": 5.0}), 403, "field_not_allowed"),
        (json!({"email_verified": true}), 403, "field_not_allowed"),
        (json!({"email": "ann@evil.example"}), 403, "field_not_allowed"),
        (json!({"id": "00000000-0000-0000-0000-000000000000"}), 403, "field_not_allowed"),
        (json!({"is_admin": true}), 422, "invalid_json"),
        (json!({"specialty": "Surgeon"}), 403, "field_not_allowed"),
        (json!({"availability": "available"}), 403, "field_not_allowed"),
        (json!({"display_name": "x".repeat(65)}), 422, "invalid_field"),
        (json!({"bio": "y".repeat(501)}), 422, "invalid_field"),
        (json!({"display_name": 42}), 422, "invalid_json"),
    ];
    for (body, status, expected) in &attempts {
        let (got, resp) = app.send(Method::PATCH, "/v1/me", &ann, Some(body.clone())).await;
        assert_eq!((got, code(&resp)), (*status, *expected), "{body}");
    }
    let (_, after) = app.send(Method::GET, "/v1/me", &ann, None).await;
    assert_eq!(before, after, "refused updates change nothing");

    let (status, me) =
        app.send(Method::PATCH, "/v1/me", &ann, Some(json!({"display_name": "  Ann Lee ", "bio": "Hello"}))).await;
    assert_eq!((status, me["display_name"].as_str(), me["bio"].as_str()), (200, Some("Ann Lee"), Some("Hello")));
    let (_, me) = app.send(Method::PATCH, "/v1/me", &ann, Some(json!({"bio": null}))).await;
    assert_eq!(
        (me["bio"].clone(), me["display_name"].as_str()),
        (Value::Null, Some("Ann Lee")),
        "null clears, absent keeps"
    );

    let doc = provider(&app, "doc").await;
    let (status, me) = app
        .send(
            Method::PATCH,
            "/v1/me",
            &doc,
            Some(json!({"specialty": "Midwife", "experience_years": 9, "availability": "busy"})),
        )
        .await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(
        (me["specialty"].as_str(), me["experience_years"].as_i64(), me["availability"].as_str()),
        (Some("Midwife"), Some(9), Some("busy"))
    );
    assert_eq!((me["verified"].as_bool(), me["role"].as_str()), (Some(false), Some("provider")));
    let (status, body) = app.send(Method::PATCH, "/v1/me", &doc, Some(json!({"experience_years": 120}))).await;
    assert_eq!((status, code(&body)), (422, "invalid_field"));
    // Others see the public profile: no email or phone.
    let (status, public) = app.send(Method::GET, &format!("/v1/users/{}", doc.id), &ann, None).await;
    assert_eq!((status, public["specialty"].as_str()), (200, Some("Midwife")));
    assert!(public.get("email").is_none() && public.get("phone").is_none(), "{public}");
    let (status, body) = app.send(Method::GET, &format!("/v1/users/{}", uuid::Uuid::now_v7()), &ann, None).await;
    assert_eq!((status, code(&body)), (404, "user_not_found"));
    app.stop().await;
}

async fn upload(app: &TestApp, user: &TestUser, content_type: &str) -> String {
    let resp = app
        .client
        .post(format!("{}/v1/uploads", app.http))
        .bearer_auth(&user.access_token)
        .header("content-type", content_type)
        .body(vec![0x89, b'P', b'N', b'G', 1, 2, 3])
        .send()
        .await
        .expect("upload");
    assert_eq!(resp.status().as_u16(), 201);
    let body: Value = resp.json().await.expect("json");
    body["id"].as_str().expect("id").to_string()
}

async fn profile_photos_are_own_images_that_everyone_may_see(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let ann = app.user("ann").await;
    let ben = app.user("ben").await;
    let photo = upload(&app, &ann, "image/png").await;
    let pdf = upload(&app, &ann, "application/pdf").await;
    let bens = upload(&app, &ben, "image/png").await;
    // Before it is a photo, ben may not fetch ann's upload.
    let (status, _) = app.send(Method::GET, &format!("/v1/uploads/{photo}"), &ben, None).await;
    assert_eq!(status, 404);
    for (id, why) in [(&pdf, "not an image"), (&bens, "someone else's"), (&uuid::Uuid::now_v7().to_string(), "unknown")]
    {
        let (status, body) = app.send(Method::PATCH, "/v1/me", &ann, Some(json!({"photo_id": id}))).await;
        assert_eq!((status, code(&body)), (422, "invalid_photo"), "{why}");
    }
    let (status, me) = app.send(Method::PATCH, "/v1/me", &ann, Some(json!({"photo_id": photo}))).await;
    assert_eq!((status, me["photo_id"].as_str()), (200, Some(photo.as_str())));
    let resp = app
        .client
        .get(format!("{}/v1/uploads/{photo}", app.http))
        .bearer_auth(&ben.access_token)
        .send()
        .await
        .expect("fetch");
    assert_eq!(resp.status().as_u16(), 200, "a profile photo is visible to signed-in users");
    assert_eq!(resp.bytes().await.expect("bytes").len(), 7);
    let (status, _) = app.get(&format!("/v1/uploads/{photo}"), None).await;
    assert_eq!(status, 401, "but not to strangers");
    app.stop().await;
}

async fn admins_grant_roles_and_verification_and_nobody_else_does(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let root = app.user("root").await;
    let doc = provider(&app, "doc").await;
    let path = format!("/v1/admin/users/{}", doc.id);
    let (status, body) = app.send(Method::PATCH, &path, &root, Some(json!({"verified": true}))).await;
    assert_eq!((status, code(&body)), (403, "admin_only"));
    let (status, body) = app.send(Method::PATCH, &path, &doc, Some(json!({"verified": true}))).await;
    assert_eq!((status, code(&body)), (403, "admin_only"), "not even for oneself");
    // The operator makes the first admin from the command line (the same function).
    let made = parley::app::set_role(&app.settings, "ROOT", parley_wire::Role::Admin, false).await.expect("set role");
    assert_eq!(made.role, parley_wire::Role::Admin);
    assert!(parley::app::set_role(&app.settings, "nobody", parley_wire::Role::Admin, false).await.is_err());
    let (status, body) = app.send(Method::PATCH, &path, &root, Some(json!({"verified": true}))).await;
    assert_eq!(
        (status, body["verified"].as_bool(), body["role"].as_str()),
        (200, Some(true), Some("provider")),
        "{body}"
    );
    let (_, me) = app.send(Method::GET, "/v1/me", &doc, None).await;
    assert_eq!(me["verified"], json!(true));
    let (status, body) =
        app.send(Method::PATCH, &path, &root, Some(json!({"role": "institution", "verified": false}))).await;
    assert_eq!((status, body["role"].as_str(), body["verified"].as_bool()), (200, Some("institution"), Some(false)));
    app.stop().await;
}

async fn users_are_found_by_name_role_specialty_and_availability_page_by_page(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let me = app.user("seeker").await;
    for (name, specialty, availability) in
        [("ada", "Paediatrician", "available"), ("bea", "Paediatric nurse", "busy"), ("cal", "Astrologer", "available")]
    {
        let p = provider(&app, name).await;
        let (status, _) = app
            .send(
                Method::PATCH,
                "/v1/me",
                &p,
                Some(
                    json!({"specialty": specialty, "availability": availability, "display_name": name.to_uppercase()}),
                ),
            )
            .await;
        assert_eq!(status, 200);
    }
    let names = |body: &Value| -> Vec<String> {
        body["users"]
            .as_array()
            .expect("users")
            .iter()
            .map(|u| u["username"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    let search = |query: &str| {
        let path = format!("/v1/users?{query}");
        let (app, me) = (&app, &me);
        async move { app.send(Method::GET, &path, me, None).await }
    };
    let (status, body) = search("role=provider&specialty=paediatric").await;
    assert_eq!((status, names(&body)), (200, vec!["ada".to_string(), "bea".to_string()]));
    let (_, body) = search("role=provider&availability=available").await;
    assert_eq!(names(&body), vec!["ada", "cal"]);
    let (_, body) = search("name=CAL").await;
    assert_eq!(names(&body), vec!["cal"]);
    assert!(body["users"][0].get("email").is_none());
    // Pages of two, in a stable order, with a cursor.
    let (_, first) = search("limit=2").await;
    let cursor = first["next_cursor"].as_str().expect("cursor");
    let (_, second) = search(&format!("limit=2&cursor={cursor}")).await;
    let mut all = names(&first);
    all.extend(names(&second));
    all.sort();
    assert_eq!(all, vec!["ada", "bea", "cal", "seeker"]);
    assert_eq!(second["next_cursor"], Value::Null);
    let (status, body) = search("role=wizard").await;
    assert_eq!((status, code(&body)), (400, "invalid_query"));
    let (status, body) = search("limit=2&cursor=not-a-uuid").await;
    assert_eq!((status, code(&body)), (400, "invalid_query"));
    app.stop().await;
}

async fn contacts_are_requested_answered_and_removed_with_live_events(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let (ann, ben, mut a, mut b) = app.pair().await;
    let cat = app.user("cat").await;
    let ann_topic = format!("to/{}/contact", ann.id);
    let ben_topic = format!("to/{}/contact", ben.id);

    let (status, body) = app.send(Method::POST, "/v1/contacts", &ann, Some(json!({"user_id": ben.id}))).await;
    assert_eq!((status, body["state"].as_str()), (200, Some("requested")));
    let to_ben = b.next_on(&ben_topic).await;
    assert_eq!(
        (to_ben["type"].as_str(), to_ben["state"].as_str(), to_ben["user_id"].as_str()),
        (Some("contact"), Some("incoming"), Some(ann.id.as_str()))
    );
    let to_ann = a.next_on(&ann_topic).await;
    assert_eq!(to_ann["state"], "requested");
    let (_, requests) = app.send(Method::GET, "/v1/contacts/requests", &ben, None).await;
    assert_eq!(requests["contacts"][0]["state"], "incoming");
    assert_eq!(requests["contacts"][0]["user"]["id"], json!(ann.id));
    assert!(requests["contacts"][0].get("status").is_none(), "no presence before acceptance");

    // Hostile and odd cases.
    let cases = [
        (Method::POST, "/v1/contacts".to_string(), Some(json!({"user_id": ann.id})), &ann, 422, "invalid_contact"),
        (
            Method::POST,
            "/v1/contacts".to_string(),
            Some(json!({"user_id": uuid::Uuid::now_v7()})),
            &ann,
            404,
            "user_not_found",
        ),
        (Method::POST, format!("/v1/contacts/{}/accept", ben.id), None, &ann, 404, "request_not_found"),
        (Method::POST, format!("/v1/contacts/{}/accept", ann.id), None, &cat, 404, "request_not_found"),
        (Method::DELETE, format!("/v1/contacts/{}", cat.id), None, &ann, 404, "contact_not_found"),
    ];
    for (method, path, body, who, status, expected) in cases {
        let (got, resp) = app.send(method, &path, who, body).await;
        assert_eq!((got, code(&resp)), (status, expected), "{path}");
    }

    let (status, body) = app.send(Method::POST, &format!("/v1/contacts/{}/accept", ann.id), &ben, None).await;
    assert_eq!((status, body["state"].as_str()), (200, Some("contacts")));
    assert_eq!(a.next_on(&ann_topic).await["state"], "contacts");
    assert_eq!(b.next_on(&ben_topic).await["state"], "contacts");
    let (_, list) = app.send(Method::GET, "/v1/contacts", &ann, None).await;
    let entry = &list["contacts"][0];
    assert_eq!(
        (entry["user"]["id"].as_str(), entry["state"].as_str(), entry["status"].as_str()),
        (Some(ben.id.as_str()), Some("contacts"), Some("online"))
    );
    // Ben goes offline: ann's list shows it with a last-seen time.
    drop(b);
    let deadline = tokio::time::Instant::now() + common::DEADLINE;
    loop {
        let (_, list) = app.send(Method::GET, "/v1/contacts", &ann, None).await;
        if list["contacts"][0]["status"] == "offline" {
            assert!(list["contacts"][0]["last_seen_at"].is_string());
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "ben never went offline: {list}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Cat asks ann; ann declines. Then ann removes ben.
    app.send(Method::POST, "/v1/contacts", &cat, Some(json!({"user_id": ann.id}))).await;
    let (status, body) = app.send(Method::POST, &format!("/v1/contacts/{}/decline", cat.id), &ann, None).await;
    assert_eq!((status, body["state"].as_str()), (200, Some("none")));
    let (status, _) = app.send(Method::DELETE, &format!("/v1/contacts/{}", ben.id), &ann, None).await;
    assert_eq!(status, 200);
    let (_, list) = app.send(Method::GET, "/v1/contacts", &ann, None).await;
    assert_eq!(list["contacts"], json!([]));

    // A device that missed all of it replays the same changes through sync, in order.
    let (status, sync) = app.send(Method::GET, "/v1/sync?after=0", &ann, None).await;
    assert_eq!(status, 200, "{sync}");
    let changes: Vec<(String, String)> = sync["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["type"] == "contact")
        .map(|e| {
            (e["user_id"].as_str().unwrap_or_default().to_string(), e["state"].as_str().unwrap_or_default().to_string())
        })
        .collect();
    let (b_id, c_id) = (ben.id.clone(), cat.id.clone());
    assert_eq!(
        changes,
        vec![
            (b_id.clone(), "requested".to_string()),
            (b_id.clone(), "contacts".to_string()),
            (c_id.clone(), "incoming".to_string()),
            (c_id, "none".to_string()),
            (b_id, "none".to_string()),
        ]
    );
    app.stop().await;
}
