//! What happened to every message of a run. Each device logs what it sent (the
//! intended send time, whether and how it was acknowledged) and what it
//! received (a bit per message per sender), so loss, duplicates and ordering
//! errors are counted from the ids every message carries, not estimated.
//! Latencies go to HDR histograms, measured from the *intended* send time so a
//! stall in the system (or in the generator) shows up instead of being hidden.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Instant;

use hdrhistogram::Histogram;

use crate::lock;

/// Counters read live by the progress line and at the end.
#[derive(Debug, Default)]
pub struct Counters {
    pub sent: AtomicU64,
    pub acked: AtomicU64,
    /// First deliveries to a member other than the sender, live or through sync.
    pub delivered: AtomicU64,
    /// First deliveries of a sender's own message to its own device.
    pub echoed: AtomicU64,
    pub acked_in_window: AtomicU64,
    pub delivered_in_window: AtomicU64,
    /// A message delivered again to a device that already had it (the protocol
    /// tells apps to drop repeats by id, so they never reach the user twice).
    pub redelivered: AtomicU64,
    /// One send stored twice: a second message id for the same device message id.
    pub duplicates: AtomicU64,
    /// A message from a sender arriving after a later one from the same sender.
    pub out_of_order: AtomicU64,
    /// Sends refused by the system (an error acknowledgement).
    pub refused: AtomicU64,
    /// Missed live, then received through sync.
    pub recovered_by_sync: AtomicU64,
    pub reconnects: AtomicU64,
    /// Other downlinks (typing, presence, receipts…), by count.
    pub signals: AtomicU64,
}

#[derive(Debug, Clone, Copy, Default)]
struct Sent {
    intended_us: u64,
    acked: bool,
    /// The id the system gave the message (Parley's message id).
    server: u128,
}

#[derive(Debug, Default)]
struct Stream {
    seen: Vec<u64>,
    max: Option<u32>,
}

impl Stream {
    /// Marks `k` seen; false when it already was.
    fn mark(&mut self, k: u32) -> bool {
        let (word, bit) = ((k / 64) as usize, 1u64 << (k % 64));
        if self.seen.len() <= word {
            self.seen.resize(word + 1, 0);
        }
        let fresh = self.seen[word] & bit == 0;
        self.seen[word] |= bit;
        fresh
    }

    fn has(&self, k: u32) -> bool {
        self.seen.get((k / 64) as usize).is_some_and(|w| w & (1u64 << (k % 64)) != 0)
    }
}

/// Latencies, in microseconds.
pub struct Latencies {
    pub ack: Histogram<u64>,
    pub delivery: Histogram<u64>,
    /// The broker's PUBACK (for Parley: the gate took the message).
    pub puback: Histogram<u64>,
    /// Connection set-up: TCP connect to CONNACK (and SUBACK).
    pub connect: Histogram<u64>,
}

pub fn histogram() -> Histogram<u64> {
    // 1 µs to 10 min, 3 significant digits.
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("constant bounds are valid")
}

pub struct Tracker {
    pub epoch: Instant,
    /// Sends intended before this (µs since epoch) are warm-up: tracked, not timed.
    measure_from_us: AtomicU64,
    /// The end of the send window, for the throughput figures.
    window_end_us: AtomicU64,
    pub counters: Counters,
    pub latencies: Mutex<Latencies>,
    /// Recent delivery latencies, for the progress line.
    pub recent: Mutex<Histogram<u64>>,
    sent: Vec<Mutex<Vec<Sent>>>,
    received: Vec<Mutex<HashMap<u32, Stream>>>,
    /// The devices each device's messages go to (itself included).
    audience: Vec<Vec<u32>>,
}

/// The end-of-run tally.
#[derive(Debug, Default, Clone, Copy)]
pub struct Tally {
    /// Acknowledged, and still missing at some member after the drain.
    pub lost: u64,
    pub unacknowledged: u64,
}

impl Tracker {
    pub fn new(audience: Vec<Vec<u32>>) -> Tracker {
        let n = audience.len();
        Tracker {
            epoch: Instant::now(),
            measure_from_us: AtomicU64::new(0),
            window_end_us: AtomicU64::new(u64::MAX),
            counters: Counters::default(),
            latencies: Mutex::new(Latencies {
                ack: histogram(),
                delivery: histogram(),
                puback: histogram(),
                connect: histogram(),
            }),
            recent: Mutex::new(histogram()),
            sent: (0..n).map(|_| Mutex::new(Vec::new())).collect(),
            received: (0..n).map(|_| Mutex::new(HashMap::new())).collect(),
            audience,
        }
    }

    pub fn now_us(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    pub fn set_window(&self, from_us: u64, end_us: u64) {
        self.measure_from_us.store(from_us, Relaxed);
        self.window_end_us.store(end_us, Relaxed);
    }

    fn timed(&self, intended_us: u64) -> bool {
        intended_us >= self.measure_from_us.load(Relaxed)
    }

    /// Within the measured part of the send window (warm-up excluded).
    fn in_window(&self, now_us: u64) -> bool {
        now_us >= self.measure_from_us.load(Relaxed) && now_us <= self.window_end_us.load(Relaxed)
    }

    /// Device `dev` sends its message `k`, meant for `intended_us`.
    pub fn sent(&self, dev: u32, k: u32, intended_us: u64) {
        let mut log = lock(&self.sent[dev as usize]);
        if log.len() <= k as usize {
            log.resize(k as usize + 1, Sent::default());
        }
        log[k as usize].intended_us = intended_us;
        self.counters.sent.fetch_add(1, Relaxed);
    }

    /// The messages of `dev` sent and not yet acknowledged: (k, intended time).
    pub fn unacked(&self, dev: u32) -> Vec<(u32, u64)> {
        let log = lock(&self.sent[dev as usize]);
        log.iter()
            .enumerate()
            .filter(|(_, s)| !s.acked && s.intended_us > 0)
            .map(|(k, s)| (k as u32, s.intended_us))
            .collect()
    }

    /// The system acknowledged (stored) message `k` of `dev`, naming it `server`.
    pub fn acked(&self, dev: u32, k: u32, server: u128) {
        let now = self.now_us();
        let intended = {
            let mut log = lock(&self.sent[dev as usize]);
            let Some(entry) = log.get_mut(k as usize) else { return };
            if entry.acked {
                if entry.server != server {
                    self.counters.duplicates.fetch_add(1, Relaxed);
                }
                return;
            }
            entry.acked = true;
            entry.server = server;
            entry.intended_us
        };
        self.counters.acked.fetch_add(1, Relaxed);
        if self.in_window(now) {
            self.counters.acked_in_window.fetch_add(1, Relaxed);
        }
        if self.timed(intended) {
            let _ = lock(&self.latencies).ack.record(now.saturating_sub(intended).max(1));
        }
    }

    /// The broker acknowledged the publish of message `k` of `dev`.
    pub fn puback(&self, dev: u32, k: u32) {
        let now = self.now_us();
        let intended = lock(&self.sent[dev as usize]).get(k as usize).map(|s| s.intended_us);
        if let Some(intended) = intended.filter(|i| self.timed(*i)) {
            let _ = lock(&self.latencies).puback.record(now.saturating_sub(intended).max(1));
        }
    }

    /// Device `to` received message `k` of device `from`, sent at `sent_us`, with
    /// the system's id `server` (0 when it gives none); `sync` when it came
    /// through a sync answer rather than live.
    pub fn delivered(&self, to: u32, from: u32, k: u32, sent_us: u64, server: u128, sync: bool) {
        let now = self.now_us();
        {
            let mut streams = lock(&self.received[to as usize]);
            let stream = streams.entry(from).or_default();
            if !stream.mark(k) {
                self.counters.redelivered.fetch_add(1, Relaxed);
                return;
            }
            if sync {
                self.counters.recovered_by_sync.fetch_add(1, Relaxed);
            } else {
                if stream.max.is_some_and(|m| k < m) {
                    self.counters.out_of_order.fetch_add(1, Relaxed);
                }
                stream.max = stream.max.max(Some(k));
            }
        }
        if server != 0 {
            let acked = lock(&self.sent[from as usize]).get(k as usize).filter(|s| s.acked).map(|s| s.server);
            if acked.is_some_and(|s| s != server) {
                self.counters.duplicates.fetch_add(1, Relaxed);
            }
        }
        if to == from {
            self.counters.echoed.fetch_add(1, Relaxed);
            return;
        }
        self.counters.delivered.fetch_add(1, Relaxed);
        if self.in_window(now) {
            self.counters.delivered_in_window.fetch_add(1, Relaxed);
        }
        if !sync && self.timed(sent_us) {
            let latency = now.saturating_sub(sent_us).max(1);
            let _ = lock(&self.latencies).delivery.record(latency);
            let _ = lock(&self.recent).record(latency);
        }
    }

    pub fn connected(&self, micros: u64) {
        let _ = lock(&self.latencies).connect.record(micros.max(1));
    }

    /// Counts what was acknowledged and never reached every member.
    pub fn tally(&self) -> Tally {
        let mut tally = Tally::default();
        for (from, log) in self.sent.iter().enumerate() {
            let log = lock(log);
            for (k, sent) in log.iter().enumerate() {
                if sent.intended_us == 0 {
                    continue;
                }
                if !sent.acked {
                    tally.unacknowledged += 1;
                    continue;
                }
                for to in &self.audience[from] {
                    let streams = lock(&self.received[*to as usize]);
                    if !streams.get(&(from as u32)).is_some_and(|s| s.has(k as u32)) {
                        tally.lost += 1;
                    }
                }
            }
        }
        tally
    }

    /// Whether every acknowledged message reached every member (for the drain).
    pub fn settled(&self) -> bool {
        let c = &self.counters;
        let acked = c.acked.load(Relaxed);
        let sent = c.sent.load(Relaxed);
        let fanout = self.audience.first().map_or(1, |a| a.len() as u64);
        acked == sent && c.delivered.load(Relaxed) + c.echoed.load(Relaxed) >= acked * fanout
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> Tracker {
        Tracker::new(vec![vec![0, 1], vec![0, 1]])
    }

    #[test]
    fn an_acknowledged_message_missing_at_a_member_is_lost_and_an_unacknowledged_one_is_not() {
        let t = pair();
        t.sent(0, 0, 10);
        t.sent(0, 1, 20);
        t.acked(0, 0, 7);
        t.delivered(0, 0, 0, 10, 7, false);
        let tally = t.tally();
        assert_eq!((tally.lost, tally.unacknowledged), (1, 1), "device 1 never got message 0");
        t.delivered(1, 0, 0, 10, 7, false);
        assert_eq!(t.tally().lost, 0);
        assert_eq!(t.counters.delivered.load(Relaxed), 1);
        assert_eq!(t.counters.echoed.load(Relaxed), 1);
    }

    #[test]
    fn repeats_late_arrivals_and_second_stored_copies_are_told_apart() {
        let t = pair();
        for k in 0..3 {
            t.sent(0, k, 10 + u64::from(k));
            t.acked(0, k, 100 + u128::from(k));
        }
        t.delivered(1, 0, 1, 11, 101, false);
        t.delivered(1, 0, 1, 11, 101, false);
        assert_eq!(t.counters.redelivered.load(Relaxed), 1, "the same message again");
        t.delivered(1, 0, 0, 10, 100, false);
        assert_eq!(t.counters.out_of_order.load(Relaxed), 1, "0 after 1");
        t.delivered(1, 0, 2, 12, 999, true);
        assert_eq!(t.counters.duplicates.load(Relaxed), 1, "message 2 under another server id");
        assert_eq!(t.counters.recovered_by_sync.load(Relaxed), 1);
        t.acked(0, 2, 555);
        assert_eq!(t.counters.duplicates.load(Relaxed), 2, "a second acknowledgement naming another message");
    }
}
