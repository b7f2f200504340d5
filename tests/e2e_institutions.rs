//! Institutions through the real HTTP API and real MQTT connections: members act
//! for their institution (its tokens name them), owners and admins manage members,
//! and leaving or signing out ends the sign-ins opened for it.

mod common;

use common::{Backend, TestApp, TestUser};
use reqwest::Method;
use serde_json::{json, Value};

both_backends!(
    members_act_for_their_institution_over_http_and_mqtt,
    owners_and_admins_manage_members_and_the_last_owner_stays,
    ending_the_members_own_sign_in_ends_the_institutions,
);

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or_else(|| panic!("no error code in {body}"))
}

async fn institution(app: &TestApp, owner: &TestUser, username: &str) -> String {
    let body = json!({"username": username, "display_name": "St. Mary Clinic", "bio": "Open 8-18"});
    let (status, created) = app.send(Method::POST, "/v1/institutions", owner, Some(body)).await;
    assert_eq!(
        (status, created["role"].as_str(), created["username"].as_str()),
        (201, Some("institution"), Some(username))
    );
    assert_eq!(
        (created["display_name"].as_str(), created["bio"].as_str()),
        (Some("St. Mary Clinic"), Some("Open 8-18"))
    );
    created["id"].as_str().expect("id").to_string()
}

async fn add(app: &TestApp, by: &TestUser, clinic: &str, who: &TestUser, role: &str) -> (u16, Value) {
    let path = format!("/v1/institutions/{clinic}/members");
    app.send(Method::POST, &path, by, Some(json!({"user_id": who.id, "role": role}))).await
}

/// Opens a sign-in of the institution for `member`; it is used like any user's.
async fn act(app: &TestApp, member: &TestUser, clinic: &str) -> TestUser {
    let (status, body) = app.send(Method::POST, &format!("/v1/institutions/{clinic}/sessions"), member, None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!((body["user"]["id"].as_str(), body["actor"].as_str()), (Some(clinic), Some(member.id.as_str())));
    TestUser {
        id: clinic.to_string(),
        login: String::new(),
        password: String::new(),
        access_token: body["access_token"].as_str().expect("access").to_string(),
        refresh_token: body["refresh_token"].as_str().expect("refresh").to_string(),
        session_id: body["session_id"].as_str().expect("sid").to_string(),
    }
}

async fn members_act_for_their_institution_over_http_and_mqtt(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else { return };
    let (ann, ben, cat, eve) =
        (app.user("ann").await, app.user("ben").await, app.user("cat").await, app.user("eve").await);
    let clinic = institution(&app, &ann, "stmary").await;
    // Nobody logs into an institution with a password.
    let (status, body) = app.post("/v1/auth/login", json!({"login": "stmary", "password": "anything at all"})).await;
    assert_eq!((status, code(&body)), (401, "invalid_credentials"));
    let (status, _) = add(&app, &ann, &clinic, &ben, "member").await;
    assert_eq!(status, 201);
    let (status, body) = app.send(Method::GET, &format!("/v1/institutions/{clinic}/members"), &eve, None).await;
    assert_eq!((status, code(&body)), (403, "not_institution_member"));
    let (status, body) = app.send(Method::POST, &format!("/v1/institutions/{clinic}/sessions"), &eve, None).await;
    assert_eq!((status, code(&body)), (403, "not_institution_member"), "outsiders cannot act for it");
    let (_, mine) = app.send(Method::GET, "/v1/me/institutions", &ben, None).await;
    assert_eq!(
        (mine["institutions"][0]["institution"]["id"].as_str(), mine["institutions"][0]["role"].as_str()),
        (Some(clinic.as_str()), Some("member"))
    );

    // Ben answers for the clinic from a second MQTT connection; Cat writes to the clinic.
    let desk = act(&app, &ben, &clinic).await;
    let mut desk_device = app.device(&desk, "ben-clinic-desk").await;
    let mut cat_phone = app.device(&cat, "cat-phone").await;
    cat_phone
        .publish_json(&format!("from/{}/msg", cat.id), &json!({"id": "c1", "to": clinic, "text": "Is the lab open?"}))
        .await;
    let got = desk_device.next_message_from(&clinic, &cat.id).await;
    assert_eq!(got["text"], "Is the lab open?");
    desk_device
        .publish_json(&format!("from/{clinic}/msg"), &json!({"id": "d1", "to": cat.id, "text": "Yes, until 18:00"}))
        .await;
    let reply = cat_phone.next_message_from(&cat.id, &clinic).await;
    assert_eq!(
        (reply["text"].as_str(), reply["conversation_id"].clone()),
        (Some("Yes, until 18:00"), got["conversation_id"].clone())
    );
    let (_, history) = app
        .send(
            Method::GET,
            &format!("/v1/conversations/{}/messages", got["conversation_id"].as_str().unwrap()),
            &desk,
            None,
        )
        .await;
    assert_eq!(history["messages"].as_array().map(Vec::len), Some(2), "{history}");

    // What only the person does in person is refused to the institution's tokens.
    for (method, path, body) in [
        (Method::POST, "/v1/auth/password", json!({"current_password": "x", "new_password": "whatever-long"})),
        (Method::PATCH, "/v1/me", json!({"bio": "hijacked"})),
        (Method::GET, "/v1/auth/sessions", Value::Null),
        (Method::POST, "/v1/auth/logout-all", Value::Null),
        (Method::POST, "/v1/institutions", json!({"username": "nested", "display_name": "Nested"})),
        (Method::POST, &format!("/v1/institutions/{clinic}/sessions"), Value::Null),
    ] {
        let body = (!body.is_null()).then_some(body);
        let (status, answer) = app.send(method.clone(), path, &desk, body).await;
        assert_eq!((status, code(&answer)), (403, "acting_not_allowed"), "{method} {path}");
    }
    let (_, profile) = app.send(Method::GET, &format!("/v1/users/{clinic}"), &cat, None).await;
    assert_eq!(profile["bio"], "Open 8-18", "the refused update changed nothing");

    // Refreshing keeps the actor.
    let (status, refreshed) = app.post("/v1/auth/refresh", json!({"refresh_token": desk.refresh_token})).await;
    assert_eq!(
        (status, refreshed["actor"].as_str(), refreshed["user"]["id"].as_str()),
        (200, Some(ben.id.as_str()), Some(clinic.as_str()))
    );
    let fresh = TestUser { access_token: refreshed["access_token"].as_str().unwrap().into(), ..desk.clone() };

    // Removing Ben ends what he opened for the clinic, at once, and nothing of his own.
    let (status, removed) =
        app.send(Method::DELETE, &format!("/v1/institutions/{clinic}/members/{}", ben.id), &ann, None).await;
    assert_eq!((status, removed["revoked_sessions"].as_u64()), (200, Some(1)));
    desk_device.closed_by_server().await;
    let (status, body) = app.send(Method::GET, "/v1/conversations", &fresh, None).await;
    assert_eq!((status, code(&body)), (401, "session_revoked"));
    let (status, _) = app.send(Method::GET, "/v1/me", &ben, None).await;
    assert_eq!(status, 200, "his own sign-in is untouched");
    let (status, body) = app.send(Method::POST, &format!("/v1/institutions/{clinic}/sessions"), &ben, None).await;
    assert_eq!((status, code(&body)), (403, "not_institution_member"));
    app.stop().await;
}

async fn owners_and_admins_manage_members_and_the_last_owner_stays(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else { return };
    let (ann, ben, dan) = (app.user("ann").await, app.user("ben").await, app.user("dan").await);
    let clinic = institution(&app, &ann, "stmary").await;
    let other = institution(&app, &dan, "elsewhere").await;
    let (status, body) = app
        .send(Method::POST, "/v1/institutions", &ben, Some(json!({"username": "StMary", "display_name": "Copy"})))
        .await;
    assert_eq!((status, code(&body)), (409, "identifier_taken"));
    assert_eq!(add(&app, &ann, &clinic, &ben, "admin").await.0, 201);
    let members = format!("/v1/institutions/{clinic}/members");

    // Admins add members and admins, never owners; nobody adds a member twice or a non-person.
    let (status, body) = add(&app, &ben, &clinic, &dan, "owner").await;
    assert_eq!((status, code(&body)), (403, "institution_role_required"));
    let (status, body) = add(&app, &ben, &clinic, &dan, "chief").await;
    assert_eq!((status, code(&body)), (422, "invalid_role"));
    assert_eq!(add(&app, &ben, &clinic, &dan, "member").await.0, 201);
    let (status, body) = add(&app, &ann, &clinic, &dan, "member").await;
    assert_eq!((status, code(&body)), (409, "already_member"));
    let (status, body) = app.send(Method::POST, &members, &ann, Some(json!({"user_id": other}))).await;
    assert_eq!((status, code(&body)), (422, "invalid_member"));
    // A plain member manages nothing; an admin does not touch owners.
    let (status, body) = app.send(Method::DELETE, &format!("{members}/{}", ben.id), &dan, None).await;
    assert_eq!((status, code(&body)), (403, "institution_role_required"));
    let (status, body) = app.send(Method::DELETE, &format!("{members}/{}", ann.id), &ben, None).await;
    assert_eq!((status, code(&body)), (403, "institution_role_required"));
    let (status, body) =
        app.send(Method::PATCH, &format!("{members}/{}", ann.id), &ben, Some(json!({"role": "member"}))).await;
    assert_eq!((status, code(&body)), (403, "institution_role_required"));

    // The last owner can neither leave nor step down until another owner exists.
    let (status, body) = app.send(Method::DELETE, &format!("{members}/{}", ann.id), &ann, None).await;
    assert_eq!((status, code(&body)), (409, "last_owner"));
    let (status, body) =
        app.send(Method::PATCH, &format!("{members}/{}", ann.id), &ann, Some(json!({"role": "admin"}))).await;
    assert_eq!((status, code(&body)), (409, "last_owner"));
    let (status, _) =
        app.send(Method::PATCH, &format!("{members}/{}", ben.id), &ann, Some(json!({"role": "owner"}))).await;
    assert_eq!(status, 204);
    let (status, _) = app.send(Method::DELETE, &format!("{members}/{}", ann.id), &ann, None).await;
    assert_eq!(status, 200, "with another owner, she may leave");
    let (_, list) = app.send(Method::GET, &members, &ben, None).await;
    let roles: Vec<(&str, &str)> = list["members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|m| (m["user"]["username"].as_str().unwrap(), m["role"].as_str().unwrap()))
        .collect();
    assert_eq!(roles, [("ben", "owner"), ("dan", "member")]);

    // The profile is edited by owners and admins, under the profile's field rules.
    let path = format!("/v1/institutions/{clinic}");
    let (status, body) = app.send(Method::PATCH, &path, &dan, Some(json!({"display_name": "Dan's clinic"}))).await;
    assert_eq!((status, code(&body)), (403, "institution_role_required"));
    let (status, body) = app.send(Method::PATCH, &path, &ben, Some(json!({"verified": true}))).await;
    assert_eq!((status, code(&body)), (403, "field_not_allowed"));
    let (status, body) =
        app.send(Method::PATCH, &path, &ben, Some(json!({"display_name": "St. Mary", "availability": "busy"}))).await;
    assert_eq!(
        (status, body["display_name"].as_str(), body["availability"].as_str(), body["verified"].as_bool()),
        (200, Some("St. Mary"), Some("busy"), Some(false))
    );
    let (status, body) =
        app.send(Method::PATCH, &format!("/v1/institutions/{}", ben.id), &ben, Some(json!({"bio": "x"}))).await;
    assert_eq!((status, code(&body)), (404, "institution_not_found"));
    app.stop().await;
}

async fn ending_the_members_own_sign_in_ends_the_institutions(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else { return };
    let ann = app.user("ann").await;
    let clinic = institution(&app, &ann, "stmary").await;
    let desk = act(&app, &ann, &clinic).await;
    let spare = app.login("ann", &ann.password).await;
    let other_desk = act(&app, &spare, &clinic).await;
    let device = app.device(&desk, "desk").await;
    let (status, _) = app.send(Method::GET, "/v1/conversations", &desk, None).await;
    assert_eq!(status, 200);
    // Logging out of her first sign-in ends the clinic sign-in opened from it, not the other.
    let (status, body) = app.send(Method::POST, "/v1/auth/logout", &ann, None).await;
    assert_eq!((status, body["revoked_sessions"].as_u64()), (200, Some(2)), "{body}");
    device.closed_by_server().await;
    let (status, body) = app.send(Method::GET, "/v1/conversations", &desk, None).await;
    assert_eq!((status, code(&body)), (401, "session_revoked"));
    let (status, _) = app.post("/v1/auth/refresh", json!({"refresh_token": desk.refresh_token})).await;
    assert_eq!(status, 401);
    let (status, _) = app.send(Method::GET, "/v1/conversations", &other_desk, None).await;
    assert_eq!(status, 200);
    // Changing the password ends every other sign-in, with the clinic sign-ins opened from them.
    let (status, body) = app
        .send(
            Method::POST,
            "/v1/auth/password",
            &spare,
            Some(json!({"current_password": ann.password, "new_password": "a brand new password"})),
        )
        .await;
    assert_eq!((status, body["revoked_sessions"].as_u64()), (200, Some(0)), "no other sign-in of hers is live: {body}");
    let (status, body) = app.send(Method::POST, "/v1/auth/logout-all", &spare, None).await;
    assert_eq!((status, body["revoked_sessions"].as_u64()), (200, Some(2)), "hers and the clinic's: {body}");
    let (status, body) = app.send(Method::GET, "/v1/conversations", &other_desk, None).await;
    assert_eq!((status, code(&body)), (401, "session_revoked"));
    app.stop().await;
}
