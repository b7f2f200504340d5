//! How uplinks are worked off: in bus order, by one worker. Whatever arrived while
//! the previous batch was being stored is taken at once: a run of messages shares
//! one transaction, any other uplink is handled alone in its place. Signals
//! (typing, presence, the gates' presence reports) are the exception: they say
//! nothing about messages, so they are taken out of the batch and handled, in
//! their own order: on PostgreSQL by a lane of their own beside the worker, on
//! SQLite (one writer, which makes the others wait and poll) once the messages'
//! downlinks are out. A storm of them neither splits the batch's messages into
//! many transactions nor, on PostgreSQL, makes them wait.
//!
//! On PostgreSQL a worker that is behind does not wait for a large batch of
//! messages to be answered before it takes the next: that one is decoded,
//! checked and encoded meanwhile, then stored right after it (its turn), and the
//! downlinks of both leave in batch order. Anything that is not a message waits
//! for every batch in flight, as the one-at-a-time worker did. A worker that is
//! not behind takes nothing while a batch is in flight: what arrives meanwhile
//! is taken whole once that batch is done, rather than a few messages at a time,
//! each of which would wait for the batch anyway and then cost a call of its own.
//!
//! On an external bus, the connection acknowledges each uplink as it arrives. rumqttd sends a
//! client at most 100 unacknowledged QoS 1 messages (a constant in its router);
//! acknowledging after the commit held every batch to those 100 and the bridge to
//! 1,200–1,900 messages a second on PostgreSQL (measured with parley-bench,
//! docs/benchmarks.md). Acknowledging later bought nothing: a bridge's session is
//! clean, so whatever it has not acknowledged when its connection ends is dropped
//! by the bus either way. A device's guarantee is its `ack` event, published only
//! after the commit; a device without one sends the message again.
//! Back-pressure is the bounded queue between the connection and the worker: when
//! it is full, the connection stops reading and the bus keeps the rest in its log.
//! On the lane (one process, embedded bus) the queue is the lane itself: when it
//! is full, the gate's device connections wait before they acknowledge.
//!
//! Downlinks leave once their batch is handled, in order: on the lane as one
//! hand-over per batch; on an external bus one publish each, on a connection of
//! their own (rumqttc takes no request while its window of unacknowledged
//! publishes is full, so nothing the subscribing connection must send, pings or
//! subscriptions, waits behind downlinks).

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use parley_domain::Domain;
use parley_store::{Turn, TurnEnd};
use parley_wire::bus::{RawUplink, UplinkReceiver};
use parley_wire::payloads::Outgoing;
use parley_wire::{topics, UserId};
use rumqttc::AsyncClient;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::{handle_messages, handle_uplink, BridgeStats};

/// The most uplinks taken at once: a batch of messages is a few statements of up
/// to 1,000 rows each.
pub(crate) const MAX_BATCH: usize = 1000;

/// Bytes of uplinks the queue between an external bus's connection and the
/// worker holds, at most; beyond them the bus keeps the rest in its log.
pub(crate) const BUS_QUEUE_BYTES: usize = 4 * 1024 * 1024;

/// Batches of messages handled beside the worker at once, at most (PostgreSQL).
/// The next batch is read, decoded and checked while the one before it is
/// stored, and stored after it, while the one before makes its downlinks. At
/// `--rate 10000` on PostgreSQL, seven runs interleaved with the build before:
/// median 7,400 -> 8,100 messages a second; near 10,000 with either build when
/// the machine is quiet (docs/benchmarks.md, session 13).
const ALONGSIDE: usize = 2;

/// The fewest messages a batch handled beside the worker holds. Smaller batches
/// mean the worker is not behind; splitting them further would cost a call of
/// the database each (about 1.7 ms for a few messages) for little.
const ALONGSIDE_FROM: usize = 64;

/// Whether the worker takes uplinks now, with `in_flight` batches handled beside
/// it and `waiting` uplinks in its queue: when nothing is in flight (waiting for
/// the first, if need be), or when it is behind: a batch's worth is already
/// waiting and there is room beside it. Otherwise it waits for the oldest batch
/// in flight. Taking whatever had arrived instead (at `--rate 10000` on
/// PostgreSQL, 800 of 1,034 takes were a large batch followed by a run of a
/// few messages, which waited for it and then cost a call of its own: 193 µs
/// a message at the median call against 95 this way) gave a higher p50 in
/// eight interleaved rounds of nine (docs/benchmarks.md, session 16).
fn takes_now(in_flight: usize, waiting: usize) -> bool {
    in_flight == 0 || (in_flight < ALONGSIDE && waiting >= ALONGSIDE_FROM)
}

/// Signals waiting for their lane (PostgreSQL), at most; a full lane makes the
/// message worker wait.
const SIGNAL_QUEUE: usize = 10_000;

/// Where downlinks go: the gate's end of the lane, or the bus.
#[derive(Clone)]
pub(crate) enum Downlinks {
    Lane(mpsc::Sender<Vec<Outgoing>>),
    Bus(AsyncClient),
}

/// Runs until `uplinks` closes.
pub(crate) async fn work(domain: Domain, downlinks: Downlinks, mut uplinks: UplinkReceiver, stats: Arc<BridgeStats>) {
    let mut batch: Vec<RawUplink> = Vec::with_capacity(MAX_BATCH);
    let mut outgoing: Vec<Outgoing> = Vec::new();
    // On PostgreSQL signals have a lane of their own, beside the messages: a
    // burst of them (every device back at once, each with its presence) neither
    // holds up the messages nor waits for them.
    let (lane, lane_task) = if domain.store().concurrent_writers() {
        let (tx, rx) = mpsc::channel(SIGNAL_QUEUE);
        (Some(tx), Some(tokio::spawn(signal_lane(domain.clone(), downlinks.clone(), rx, stats.clone()))))
    } else {
        (None, None)
    };
    // Batches of messages handled beside the worker (PostgreSQL), oldest first,
    // and the end of the last one's turn, after which the next one stores.
    let mut alongside: Alongside = VecDeque::new();
    let mut last_turn: Option<TurnEnd> = None;
    loop {
        let taken = if takes_now(alongside.len(), uplinks.len()) {
            uplinks.recv_many(&mut batch, MAX_BATCH).await
        } else {
            // What arrives meanwhile waits for the oldest batch and is taken whole.
            if let Some(oldest) = alongside.pop_front() {
                finish(&downlinks, oldest.await, &stats).await;
            }
            continue;
        };
        if taken == 0 {
            break;
        }
        let started = std::time::Instant::now();
        let (signals, ordered): (Vec<RawUplink>, Vec<RawUplink>) = batch.drain(..).partition(|p| is_signal(&p.topic));
        let ordered_count = ordered.len();
        if lane.is_some()
            && ordered.len() >= ALONGSIDE_FROM
            && ordered.iter().all(|p| message_sender(&p.topic).is_some())
        {
            stats.batches_alongside.fetch_add(1, Ordering::Relaxed);
            let (turn, end) = Turn::after(last_turn.take());
            last_turn = Some(end);
            let (domain, stats) = (domain.clone(), stats.clone());
            alongside.push_back(tokio::spawn(async move {
                let out = store_run(&domain, &ordered, &stats, turn).await;
                (out, ordered.len())
            }));
        } else if !ordered.is_empty() {
            // Whatever is in flight first: anything but a message may depend on it.
            finish_all(&mut alongside, &downlinks, &stats).await;
            last_turn = None;
            outgoing.extend(handle_in_order(&domain, &ordered, &stats).await);
            publish(&downlinks, &mut outgoing, &stats).await;
            // Counted once their downlinks are with the bus (signals on a lane: by the lane).
            stats.uplinks_handled.fetch_add(ordered_count as u64, Ordering::Relaxed);
        }
        let signal_count = signals.len();
        match &lane {
            Some(lane) => {
                for signal in signals {
                    if lane.send(signal).await.is_err() {
                        tracing::error!("the bridge's signal lane stopped");
                        break;
                    }
                }
            }
            None => {
                // One writer (SQLite): the signals follow the messages' downlinks.
                outgoing.extend(handle_signals(&domain, &signals).await);
                publish(&downlinks, &mut outgoing, &stats).await;
                stats.uplinks_handled.fetch_add(signal_count as u64, Ordering::Relaxed);
            }
        }
        tracing::debug!(
            uplinks = ordered_count + signal_count,
            ms = started.elapsed().as_secs_f64() * 1e3,
            "batch taken"
        );
    }
    finish_all(&mut alongside, &downlinks, &stats).await;
    drop(lane);
    if let Some(task) = lane_task {
        let _ = task.await;
    }
}

/// Batches of messages handled beside the worker: their downlinks and count.
type Alongside = VecDeque<JoinHandle<(Vec<Outgoing>, usize)>>;

/// Waits for every batch in flight, oldest first, and finishes each.
async fn finish_all(alongside: &mut Alongside, downlinks: &Downlinks, stats: &BridgeStats) {
    while let Some(task) = alongside.pop_front() {
        finish(downlinks, task.await, stats).await;
    }
}

/// Publishes the downlinks of a batch handled beside the worker, and counts it.
async fn finish(
    downlinks: &Downlinks,
    done: Result<(Vec<Outgoing>, usize), tokio::task::JoinError>,
    stats: &BridgeStats,
) {
    match done {
        Ok((mut outgoing, uplinks)) => {
            publish(downlinks, &mut outgoing, stats).await;
            stats.uplinks_handled.fetch_add(uplinks as u64, Ordering::Relaxed);
        }
        Err(e) => tracing::error!(error = %e, "a batch of messages failed"),
    }
}

/// Handles signals as they come, in order, until the worker closes the lane.
async fn signal_lane(
    domain: Domain,
    downlinks: Downlinks,
    mut signals: mpsc::Receiver<RawUplink>,
    stats: Arc<BridgeStats>,
) {
    let mut taken: Vec<RawUplink> = Vec::new();
    while signals.recv_many(&mut taken, MAX_BATCH).await > 0 {
        let mut outgoing = handle_signals(&domain, &taken).await;
        publish(&downlinks, &mut outgoing, &stats).await;
        stats.uplinks_handled.fetch_add(taken.len() as u64, Ordering::Relaxed);
        taken.clear();
    }
}

/// Handles signals one after another, in order.
async fn handle_signals(domain: &Domain, signals: &[RawUplink]) -> Vec<Outgoing> {
    let mut out = Vec::new();
    for p in signals {
        out.extend(handle_uplink(domain, &p.topic, &p.payload).await);
    }
    out
}

/// Handles `uplinks` in order: each run of messages together, anything else alone
/// in its place; returns their downlinks in the same order.
async fn handle_in_order(domain: &Domain, uplinks: &[RawUplink], stats: &BridgeStats) -> Vec<Outgoing> {
    let mut outgoing = Vec::new();
    let mut rest = uplinks;
    while let Some(first) = rest.first() {
        let run = rest.iter().take_while(|p| message_sender(&p.topic).is_some()).count();
        let (now, later) = rest.split_at(run.max(1));
        if run == 0 {
            outgoing.extend(handle_uplink(domain, &first.topic, &first.payload).await);
        } else {
            outgoing.extend(store_run(domain, now, stats, Turn::default()).await);
        }
        rest = later;
    }
    outgoing
}

/// A run of message uplinks stored together in `turn`; returns their downlinks
/// in order.
async fn store_run(domain: &Domain, run: &[RawUplink], stats: &BridgeStats, turn: Turn) -> Vec<Outgoing> {
    let messages: Vec<(UserId, &[u8])> =
        run.iter().filter_map(|p| Some((message_sender(&p.topic)?, &p.payload[..]))).collect();
    let handling = std::time::Instant::now();
    let (outs, together) = handle_messages(domain, &messages, turn).await;
    tracing::debug!(
        messages = messages.len(),
        together,
        ms = handling.elapsed().as_secs_f64() * 1e3,
        "message run stored"
    );
    stats.stored_together.fetch_add(together as u64, Ordering::Relaxed);
    outs.into_iter().flatten().collect()
}

/// Hands a batch's downlinks on, in order: to the gate's lane in one go, or to
/// the bus one publish each.
async fn publish(downlinks: &Downlinks, outgoing: &mut Vec<Outgoing>, stats: &BridgeStats) {
    if outgoing.is_empty() {
        return;
    }
    stats.downlinks.fetch_add(outgoing.len() as u64, Ordering::Relaxed);
    match downlinks {
        Downlinks::Lane(lane) => {
            if lane.send(std::mem::take(outgoing)).await.is_err() {
                tracing::debug!("the gate has stopped; downlinks dropped");
            }
        }
        Downlinks::Bus(client) => {
            for d in outgoing.drain(..) {
                stats.downlink_publishes.fetch_add(1, Ordering::Relaxed);
                if let Err(e) = client.publish_bytes(d.topic(), d.mqtt_qos(), false, d.payload()).await {
                    tracing::error!(error = %e, "bridge could not publish a downlink");
                }
            }
        }
    }
}

/// Typing, presence and the gates' presence reports: signals about people, not
/// about messages, so they need no place among the messages of their batch.
fn is_signal(topic: &str) -> bool {
    topics::parse_gate_presence(topic).is_some()
        || topics::parse_uplink(topic).is_some_and(|u| u.kind == topics::TYPING || u.kind == topics::PRESENCE)
}

/// The sender of a message uplink (`from/{uid}/msg`).
fn message_sender(topic: &str) -> Option<UserId> {
    topics::parse_uplink(topic).filter(|u| u.kind == topics::MSG).map(|u| u.user)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_message_uplinks_join_a_run() {
        let uid = "0193b6d0-7c1e-7a55-8f0e-3f0b1c2d4e5f";
        assert_eq!(message_sender(&format!("from/{uid}/msg")).map(|u| u.to_string()), Some(uid.to_string()));
        for other in [
            format!("from/{uid}/receipt"),
            format!("from/{uid}/msg/x"),
            "from/nobody/msg".into(),
            "sys/presence/g".into(),
        ] {
            assert_eq!(message_sender(&other), None, "{other}");
        }
    }

    #[test]
    fn the_worker_takes_while_a_batch_is_in_flight_only_when_behind() {
        // Nothing in flight: take, whatever is waiting (or wait for the first).
        assert!(takes_now(0, 0));
        assert!(takes_now(0, 1));
        // A batch in flight and a few waiting: they wait for it, to be taken whole.
        assert!(!takes_now(1, 0));
        assert!(!takes_now(1, ALONGSIDE_FROM - 1));
        // Behind: a batch's worth waiting is taken beside it.
        assert!(takes_now(1, ALONGSIDE_FROM));
        assert!(takes_now(ALONGSIDE - 1, 10 * ALONGSIDE_FROM));
        // No room beside the batches in flight, however much is waiting.
        assert!(!takes_now(ALONGSIDE, 10 * ALONGSIDE_FROM));
    }

    #[test]
    fn typing_and_presence_are_signals_and_nothing_else_is() {
        let uid = "0193b6d0-7c1e-7a55-8f0e-3f0b1c2d4e5f";
        for signal in [format!("from/{uid}/typing"), format!("from/{uid}/presence"), "sys/presence/gate-1".into()] {
            assert!(is_signal(&signal), "{signal}");
        }
        for other in ["msg", "receipt", "edit", "delete", "react", "sync", "settings"] {
            let topic = format!("from/{uid}/{other}");
            assert!(!is_signal(&topic), "{topic}");
        }
        assert!(!is_signal("from/nobody/typing"));
    }
}
