//! The workloads: how many devices, what they send, and what happens to their
//! connections. Each runs against one started [`Target`] and returns a
//! [`Report`].

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rand::Rng;
use tokio::sync::Semaphore;
use tokio::time::Instant as TokioInstant;
use tokio_util::sync::CancellationToken;

use crate::device::{Dest, Device, Spec};
use crate::provision::{self, Account, Api};
use crate::proxy::Proxy;
use crate::report::{Percentiles, Report};
use crate::targets::{cpu_seconds, machine_cpu, machine_shares, Target};
use crate::tracker::{histogram, Tracker};
use crate::transport::Transport;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    /// 1:1 chat between pairs of users, QoS 1.
    Chat,
    /// Group conversations (`--room` members each), every member sending.
    Fanout,
    /// Connected devices doing nothing: resident memory per connection.
    Idle,
    /// Chat, plus typing signals every second and presence changes every 5 s from every device.
    Storm,
    /// Chat; a third of the way in every connection drops at once and comes back with jittered back-off.
    Reconnect,
    /// Chat through a proxy that drops and blackholes random connections.
    Faults,
}

impl Workload {
    pub fn name(self) -> &'static str {
        match self {
            Workload::Chat => "chat",
            Workload::Fanout => "fanout",
            Workload::Idle => "idle",
            Workload::Storm => "storm",
            Workload::Reconnect => "reconnect",
            Workload::Faults => "faults",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Options {
    pub workload: Workload,
    pub devices: usize,
    /// Members per conversation; 1:1 chat is 2.
    pub room: usize,
    /// Messages per second, all devices together.
    pub rate: f64,
    pub seconds: f64,
    pub warmup: f64,
    /// How long to wait after the send window for what is still in flight.
    pub drain: f64,
    /// Devices connecting at the same time while setting up.
    pub connect_parallel: usize,
    pub keep_alive_secs: u64,
    /// Reconnect back-off: at least `backoff_ms`, plus up to `jitter_ms`.
    pub backoff_ms: u64,
    pub jitter_ms: u64,
    /// Fault mode: a fault every this often, and how long a blackhole lasts.
    pub fault_every: Duration,
    pub blackhole_hold: Duration,
    pub progress: bool,
    /// A prefix that keeps account names of runs against one server apart.
    pub run_id: String,
}

/// Runs `options.workload` against `target`.
pub async fn run(target: &Target, options: &Options) -> anyhow::Result<Report> {
    let n = options.devices;
    let room = if options.workload == Workload::Idle { 1 } else { options.room.max(2) };
    if n < room || !n.is_multiple_of(room) {
        bail!("--devices ({n}) must be a multiple of the room size ({room})");
    }
    let accounts = accounts(target, options, n).await?;
    let rooms: Vec<Vec<u32>> = (0..n / room).map(|r| ((r * room) as u32..((r + 1) * room) as u32).collect()).collect();
    let dests = destinations(target, &accounts, &rooms, room).await?;
    let audience: Vec<Vec<u32>> = (0..n).map(|i| rooms[i / room].clone()).collect();
    let tracker = Arc::new(Tracker::new(audience));
    let stop = CancellationToken::new();
    let faulty = matches!(options.workload, Workload::Reconnect | Workload::Faults);
    // Devices speak plain MQTT; the proxy carries it over TLS and WebSocket.
    let proxy = match faulty || target.transport != Transport::Mqtt {
        true => Some(Proxy::start(target.mqtt.clone(), target.transport, target.tls.clone(), stop.clone()).await?),
        false => None,
    };
    let (host, port) = match &proxy {
        Some(proxy) => ("127.0.0.1".to_string(), proxy.port),
        None => target.mqtt.clone(),
    };
    let mut report = Report {
        target: target.kind.to_string(),
        transport: target.transport,
        workload: options.workload.name().into(),
        devices: n,
        room,
        rate: if options.workload == Workload::Idle { 0.0 } else { options.rate },
        ..Report::default()
    };
    report.rss_before = target.rss_bytes();

    // Connect everyone, a batch at a time.
    let started = Instant::now();
    let parallel = Arc::new(Semaphore::new(options.connect_parallel.max(1)));
    let mut devices = Vec::with_capacity(n);
    let mut connecting = Vec::with_capacity(n);
    for (i, (account, dest)) in accounts.into_iter().zip(dests).enumerate() {
        let spec = Spec {
            idx: i as u32,
            account,
            dest,
            host: host.clone(),
            port,
            // Phones keep their session; the storm shows recovery through sync alone.
            clean_session: options.workload == Workload::Reconnect,
            keep_alive_secs: options.keep_alive_secs,
            backoff_ms: options.backoff_ms,
            jitter_ms: options.jitter_ms,
        };
        let permit = parallel.clone().acquire_owned().await?;
        let device = Device::start(spec, tracker.clone(), stop.clone());
        let waiting = device.clone();
        connecting.push(tokio::spawn(async move {
            let ready = waiting.ready(1, Duration::from_secs(60)).await;
            drop(permit);
            ready
        }));
        devices.push(device);
        if options.progress && (i + 1) % 2000 == 0 {
            eprintln!("  {} devices connecting", i + 1);
        }
    }
    let mut failed = 0;
    for task in connecting {
        if !task.await.unwrap_or(false) {
            failed += 1;
        }
    }
    if failed > 0 {
        stop.cancel();
        bail!("{failed} of {n} devices could not connect and subscribe within 60 s");
    }
    report.connects_per_sec = n as f64 / started.elapsed().as_secs_f64();
    report.connect_latency =
        Percentiles::of(&tracker.latencies.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.connect);

    if options.workload == Workload::Idle {
        // Let the allocator and the server's timers settle before measuring.
        tokio::time::sleep(Duration::from_secs(5)).await;
        report.rss_after = target.rss_bytes();
        if let (Some(before), Some(after)) = (report.rss_before, report.rss_after) {
            report.rss_per_device = Some(after.saturating_sub(before) as f64 / n as f64);
        }
        stop.cancel();
        return Ok(report);
    }

    let cpu_before = target.pid().and_then(cpu_seconds);
    let machine_before = machine_cpu();
    let window = traffic(&devices, &tracker, options, proxy.as_ref(), &mut report, &stop).await;
    if let (Some(before), Some(after)) = (cpu_before, target.pid().and_then(cpu_seconds)) {
        report.server_cpu_seconds = Some(after - before);
    }
    if let Some((busy, stolen)) = machine_before.zip(machine_cpu()).and_then(|(b, a)| machine_shares(b, a)) {
        report.machine_busy = Some(busy);
        report.machine_stolen = Some(stolen);
    }
    finish(&devices, &tracker, options, window, &mut report).await;
    if let Some(proxy) = &proxy {
        report.dropped = proxy.faults.dropped.load(Relaxed);
        report.blackholed = proxy.faults.blackholed.load(Relaxed);
    }
    stop.cancel();
    Ok(report)
}

async fn accounts(target: &Target, options: &Options, n: usize) -> anyhow::Result<Vec<Account>> {
    let Some(api) = &target.api else { return Ok(provision::names(n)) };
    let api = Arc::new(Api::new(api));
    let started = Instant::now();
    let accounts = if options.workload == Workload::Idle {
        api.kiosks(&options.run_id, n).await.context("provisioning kiosks")?
    } else {
        api.people(&options.run_id, n).await.context("registering users")?
    };
    if options.progress {
        eprintln!("  {n} accounts ready in {:.1} s", started.elapsed().as_secs_f64());
    }
    Ok(accounts)
}

/// Where each device sends: its partner, its group conversation, or its room's topic.
async fn destinations(
    target: &Target,
    accounts: &[Account],
    rooms: &[Vec<u32>],
    room: usize,
) -> anyhow::Result<Vec<Dest>> {
    let mut dests = Vec::with_capacity(accounts.len());
    for (r, members) in rooms.iter().enumerate() {
        let members: Vec<&Account> = members.iter().map(|m| &accounts[*m as usize]).collect();
        match &target.api {
            None => dests.extend(members.iter().map(|_| Dest::Room(format!("bench/r{r}")))),
            Some(_) if room == 1 => dests.push(Dest::User(members[0].user_id.clone())),
            Some(_) if room == 2 => {
                dests.push(Dest::User(members[1].user_id.clone()));
                dests.push(Dest::User(members[0].user_id.clone()));
            }
            Some(api) => {
                let id = Api::new(api).group(&members).await.context("creating a group")?;
                dests.extend(members.iter().map(|_| Dest::Conversation(id.clone())));
            }
        }
    }
    Ok(dests)
}

/// The send window in tracker time: (start, end) in µs.
type Window = (u64, u64);

/// Sends at the fixed rate for the warm-up and the measured seconds, with the
/// workload's extras (typing and presence, a mass drop, random faults).
async fn traffic(
    devices: &[Arc<Device>],
    tracker: &Arc<Tracker>,
    options: &Options,
    proxy: Option<&Arc<Proxy>>,
    report: &mut Report,
    stop: &CancellationToken,
) -> Window {
    let n = devices.len();
    let start_us = tracker.now_us() + 200_000;
    let measure_us = start_us + (options.warmup * 1e6) as u64;
    let end_us = measure_us + (options.seconds * 1e6) as u64;
    tracker.set_window(measure_us, end_us);
    let at = |us: u64| TokioInstant::from_std(tracker.epoch + Duration::from_micros(us));
    let interval_us = (n as f64 / options.rate * 1e6).max(1.0) as u64;
    let mut senders = Vec::with_capacity(n);
    for device in devices {
        let (device, offset) = (device.clone(), rand::thread_rng().gen_range(0..interval_us));
        let tracker = tracker.clone();
        senders.push(tokio::spawn(async move {
            let mut k = 0u32;
            loop {
                let intended = start_us + offset + k as u64 * interval_us;
                if intended >= end_us {
                    break;
                }
                tokio::time::sleep_until(TokioInstant::from_std(tracker.epoch + Duration::from_micros(intended))).await;
                device.send(k, intended).await;
                k += 1;
            }
        }));
    }
    let extras = stop.child_token();
    if options.workload == Workload::Storm {
        for device in devices {
            tokio::spawn(signals(device.clone(), extras.clone()));
        }
    }
    if let (Workload::Faults, Some(proxy)) = (options.workload, proxy) {
        tokio::spawn(proxy.clone().chaos(options.fault_every, options.blackhole_hold, extras.clone()));
    }
    let progress = options.progress.then(|| tokio::spawn(progress(tracker.clone(), extras.clone())));
    if let (Workload::Reconnect, Some(proxy)) = (options.workload, proxy) {
        tokio::time::sleep_until(at(measure_us + (end_us - measure_us) / 3)).await;
        if let Ok(mut l) = tracker.latencies.lock() {
            l.connect = histogram();
        }
        let dropped_at = Instant::now();
        let dropped = proxy.drop_all();
        eprintln!("  dropped {dropped} connections at once");
        let mut back = 0;
        for device in devices {
            if device.ready(2, Duration::from_secs(120)).await {
                back += 1;
            }
        }
        let took = dropped_at.elapsed().as_secs_f64();
        report.recovery_seconds = Some(took);
        report.connects_per_sec = back as f64 / took;
        if let Ok(l) = tracker.latencies.lock() {
            report.connect_latency = Percentiles::of(&l.connect);
        }
        eprintln!("  {back} of {n} devices back and subscribed in {took:.2} s");
    }
    for sender in senders {
        let _ = sender.await;
    }
    extras.cancel();
    if let Some(progress) = progress {
        let _ = progress.await;
    }
    (measure_us, end_us)
}

/// Typing every second, and away/online every 5 s, until `stop`.
async fn signals(device: Arc<Device>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_millis(1000 + rand::thread_rng().gen_range(0..50)));
    let mut n = 0u64;
    while !stop.is_cancelled() {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        device.typing(n.is_multiple_of(2)).await;
        if n % 5 == 4 {
            device.presence(if n % 10 == 4 { "away" } else { "online" }).await;
        }
        n += 1;
    }
}

async fn progress(tracker: Arc<Tracker>, stop: CancellationToken) {
    let c = &tracker.counters;
    let mut last = (0u64, 0u64, 0u64);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = (c.sent.load(Relaxed), c.acked.load(Relaxed), c.delivered.load(Relaxed));
        let p99 = tracker.recent.lock().map(|mut h| {
            let p = h.value_at_quantile(0.99) as f64 / 1000.0;
            h.reset();
            p
        });
        eprintln!(
            "  {:>6.1} s  sent {:>7}/s  acked {:>7}/s  delivered {:>8}/s  p99 {:>7.1} ms  unacked {:>6}  reconnects {}",
            tracker.epoch.elapsed().as_secs_f64(),
            now.0 - last.0,
            now.1 - last.1,
            now.2 - last.2,
            p99.unwrap_or(0.0),
            now.0 - now.1,
            c.reconnects.load(Relaxed),
        );
        last = now;
    }
}

/// Waits for what is still in flight (after a last sync when connections were
/// disturbed), then counts.
async fn finish(devices: &[Arc<Device>], tracker: &Tracker, options: &Options, window: Window, report: &mut Report) {
    let deadline = Instant::now() + Duration::from_secs_f64(options.drain);
    if matches!(options.workload, Workload::Reconnect | Workload::Faults) {
        // A phone that was cut off asks what it missed when it is back.
        tokio::time::sleep(Duration::from_secs(1)).await;
        for device in devices {
            device.sync();
        }
    }
    while Instant::now() < deadline && !tracker.settled() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let c = &tracker.counters;
    let seconds = (window.1 - window.0) as f64 / 1e6;
    report.seconds = seconds;
    report.sent = c.sent.load(Relaxed);
    report.acked = c.acked.load(Relaxed);
    report.delivered = c.delivered.load(Relaxed);
    report.acked_per_sec = c.acked_in_window.load(Relaxed) as f64 / seconds;
    report.delivered_per_sec = c.delivered_in_window.load(Relaxed) as f64 / seconds;
    report.redelivered = c.redelivered.load(Relaxed);
    report.duplicates = c.duplicates.load(Relaxed);
    report.out_of_order = c.out_of_order.load(Relaxed);
    report.refused = c.refused.load(Relaxed);
    report.recovered_by_sync = c.recovered_by_sync.load(Relaxed);
    report.reconnects = c.reconnects.load(Relaxed);
    report.signals = c.signals.load(Relaxed);
    if let Ok(l) = tracker.latencies.lock() {
        report.ack_latency = Percentiles::of(&l.ack);
        report.delivery_latency = Percentiles::of(&l.delivery);
        report.puback_latency = Percentiles::of(&l.puback);
    }
    let tally = tracker.tally();
    report.lost = tally.lost;
    report.unacknowledged = tally.unacknowledged;
}
