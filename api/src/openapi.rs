//! The OpenAPI document, generated from the handlers and types themselves.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::routes::{auth, conversations, members, messages, ops, sync, uploads};

#[derive(OpenApi)]
#[openapi(
    info(title = "Parley HTTP API", description = "Accounts, conversations and history. Devices talk MQTT; see docs/protocol.md."),
    paths(
        auth::register, auth::login, auth::refresh, auth::me,
        conversations::list, conversations::create, conversations::get, conversations::rename, conversations::settings,
        members::add, members::remove, members::set_role,
        messages::history, messages::mark_read,
        messages::edit, messages::delete, messages::react, messages::unreact, messages::reactions, messages::edits, messages::receipts,
        sync::sync, sync::unread, sync::presence, sync::search,
        uploads::create, uploads::fetch,
        ops::healthz, ops::readyz,
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
