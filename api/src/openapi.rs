//! The OpenAPI document, generated from the handlers and types themselves.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::routes::{
    auth, consultations, contacts, conversations, devices, identifiers, institutions, members, messages, ops, sync,
    uploads, users,
};

#[derive(OpenApi)]
#[openapi(
    info(title = "Parley HTTP API", description = "Accounts, profiles, institutions, kiosk devices, contacts, consultations, conversations and history. Devices talk MQTT; see docs/protocol.md. Browsers may sign in with cookies (`cookie: true` at login) and then send `X-CSRF-Token` on unsafe requests."),
    paths(
        auth::register, auth::verify, auth::resend, auth::login, auth::refresh, auth::forgot, auth::reset,
        auth::change_password, auth::logout, auth::logout_all, auth::sessions, auth::end_session,
        devices::token,
        users::me, users::update_me, users::get, users::search, users::admin_update,
        identifiers::change, identifiers::confirm, identifiers::remove, identifiers::set_username,
        institutions::create, institutions::mine, institutions::update, institutions::members,
        institutions::add_member, institutions::set_member_role, institutions::remove_member, institutions::act,
        devices::provision, devices::list, devices::get, devices::update, devices::renew_secret, devices::retire,
        contacts::list, contacts::requests, contacts::request, contacts::accept, contacts::decline, contacts::remove,
        consultations::request, consultations::list, consultations::get, consultations::accept, consultations::close,
        conversations::list, conversations::create, conversations::get, conversations::rename, conversations::settings,
        members::add, members::remove, members::set_role,
        messages::history, messages::mark_read,
        messages::edit, messages::delete, messages::react, messages::unreact, messages::reactions, messages::edits, messages::receipts,
        sync::sync, sync::unread, sync::presence, sync::search,
        uploads::create, uploads::fetch,
        ops::healthz, ops::readyz, ops::metrics,
    ),
    components(schemas(crate::ErrorResponse, crate::error::ErrorDetail)),
    modifiers(&BearerAuth),
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).bearer_format("JWT").build()),
        );
    }
}
