//! Wiring of the `parley` binary, as library functions tests can call: start
//! every part on given settings, report which part stopped and why.

pub mod app;
pub mod scheduler;
pub mod telemetry;
