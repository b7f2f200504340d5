//! `parley-bench`: a load generator that simulates many devices against Parley
//! and, with the same workload shape, against the brokers people would use
//! instead (the bare rumqttd Parley embeds, and Mosquitto). It measures
//! throughput, latency percentiles from the intended send time, resident memory
//! per connection, and counts loss, duplicates and ordering errors from the ids
//! every message carries. See docs/benchmarks.md.

pub mod device;
pub mod peer;
pub mod provision;
pub mod proxy;
pub mod report;
pub mod targets;
pub mod tracker;
pub mod transport;
pub mod workloads;

/// Locks a mutex; a panic elsewhere while holding it leaves counts still worth reading.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
