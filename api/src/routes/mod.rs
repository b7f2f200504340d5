//! HTTP routes, one module per area.

pub mod auth;
pub mod consultations;
pub mod contacts;
pub mod conversations;
pub mod devices;
pub mod identifiers;
pub mod institutions;
pub mod members;
pub mod messages;
pub mod ops;
pub mod sync;
pub mod uploads;
pub mod users;
