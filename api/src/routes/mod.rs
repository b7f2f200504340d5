//! HTTP routes, one module per area.

pub mod auth;
pub mod conversations;
pub mod ops;
