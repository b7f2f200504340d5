//! A small TCP proxy between the simulated devices and the system under test,
//! to make the network as bad as a phone's: it can drop every connection at
//! once (a reconnect storm), and in fault mode it drops or blackholes random
//! connections. A blackholed connection swallows what either side sends and
//! stays open, so the server only learns of it from its keepalive, as with a
//! phone that went into a tunnel.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::seq::IteratorRandom;
use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::lock;

#[derive(Clone)]
struct Link {
    kill: CancellationToken,
    hole: Arc<AtomicBool>,
}

/// What the proxy did to the connections.
#[derive(Debug, Default)]
pub struct Faults {
    pub dropped: AtomicU64,
    pub blackholed: AtomicU64,
}

pub struct Proxy {
    pub port: u16,
    links: Mutex<HashMap<u64, Link>>,
    pub faults: Faults,
}

impl Proxy {
    /// Listens on a free loopback port and forwards to `upstream`.
    pub async fn start(upstream: (String, u16), stop: CancellationToken) -> anyhow::Result<Arc<Proxy>> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let proxy =
            Arc::new(Proxy { port: listener.local_addr()?.port(), links: Mutex::default(), faults: Faults::default() });
        let accepting = proxy.clone();
        tokio::spawn(async move {
            let mut next = 0u64;
            loop {
                let accepted = tokio::select! {
                    _ = stop.cancelled() => break,
                    accepted = listener.accept() => accepted,
                };
                let Ok((device, _)) = accepted else { continue };
                next += 1;
                let (proxy, upstream, stop) = (accepting.clone(), upstream.clone(), stop.child_token());
                tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect((upstream.0.as_str(), upstream.1)).await {
                        proxy.forward(next, device, server, stop).await;
                    }
                });
            }
        });
        Ok(proxy)
    }

    async fn forward(&self, id: u64, device: TcpStream, server: TcpStream, kill: CancellationToken) {
        let _ = device.set_nodelay(true);
        let _ = server.set_nodelay(true);
        let link = Link { kill, hole: Arc::new(AtomicBool::new(false)) };
        lock(&self.links).insert(id, link.clone());
        let (device_read, device_write) = device.into_split();
        let (server_read, server_write) = server.into_split();
        tokio::join!(pump(device_read, server_write, &link), pump(server_read, device_write, &link));
        lock(&self.links).remove(&id);
    }

    /// How many connections pass through now.
    pub fn open(&self) -> usize {
        lock(&self.links).len()
    }

    /// Drops every connection at once.
    pub fn drop_all(&self) -> usize {
        let links: Vec<Link> = lock(&self.links).drain().map(|(_, l)| l).collect();
        for link in &links {
            link.kill.cancel();
        }
        self.faults.dropped.fetch_add(links.len() as u64, Relaxed);
        links.len()
    }

    /// Until `stop`, every `every`: one random connection is dropped or (as
    /// often) blackholed, and a blackholed one is closed after `hold`.
    pub async fn chaos(self: Arc<Self>, every: Duration, hold: Duration, stop: CancellationToken) {
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let Some(link) =
                lock(&self.links).values().filter(|l| !l.hole.load(Relaxed)).choose(&mut rand::thread_rng()).cloned()
            else {
                continue;
            };
            if rand::thread_rng().gen_bool(0.5) {
                self.faults.dropped.fetch_add(1, Relaxed);
                link.kill.cancel();
            } else {
                self.faults.blackholed.fetch_add(1, Relaxed);
                link.hole.store(true, Relaxed);
                tokio::spawn(async move {
                    tokio::time::sleep(hold).await;
                    link.kill.cancel();
                });
            }
        }
    }
}

/// Copies one direction until either side closes or the link is killed; while
/// blackholed it reads and discards, and an end seen then waits for the kill.
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, link: &Link) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let read = tokio::select! {
            _ = link.kill.cancelled() => break,
            read = from.read(&mut buf) => read,
        };
        let n = match read {
            Ok(n) if n > 0 => n,
            _ => {
                if link.hole.load(Relaxed) {
                    link.kill.cancelled().await;
                }
                break;
            }
        };
        if link.hole.load(Relaxed) {
            continue;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    link.kill.cancel();
}
