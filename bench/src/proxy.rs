//! A small TCP proxy between the simulated devices and the system under test,
//! to make the network as bad as a phone's: it can drop every connection at
//! once (a reconnect storm), and in fault mode it drops or blackholes random
//! connections. A blackholed connection swallows what either side sends and
//! stays open, so the server only learns of it from its keepalive, as with a
//! phone that went into a tunnel. It also carries the devices' plain MQTT to
//! the server over TLS or WebSocket when the run asks for those transports.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use rand::seq::IteratorRandom;
use rand::Rng;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_util::sync::CancellationToken;

use crate::lock;
use crate::transport::{self, Transport, Upstream};

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
    /// Listens on a free loopback port and forwards to `upstream` over `transport`
    /// (`tls`: the client configuration for the TLS ones).
    pub async fn start(
        upstream: (String, u16),
        transport: Transport,
        tls: Option<Arc<rustls::ClientConfig>>,
        stop: CancellationToken,
    ) -> anyhow::Result<Arc<Proxy>> {
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
                let (proxy, upstream, tls, stop) =
                    (accepting.clone(), upstream.clone(), tls.clone(), stop.child_token());
                tokio::spawn(async move {
                    match transport::connect(transport, &upstream, tls.as_ref()).await {
                        Ok(server) => proxy.forward(next, device, server, stop).await,
                        Err(e) => eprintln!("proxy: cannot reach the server over {}: {e:#}", transport.name()),
                    }
                });
            }
        });
        Ok(proxy)
    }

    async fn forward(&self, id: u64, device: TcpStream, server: Upstream, kill: CancellationToken) {
        let _ = device.set_nodelay(true);
        let link = Link { kill, hole: Arc::new(AtomicBool::new(false)) };
        lock(&self.links).insert(id, link.clone());
        let (device_read, device_write) = device.into_split();
        match server {
            Upstream::Stream(server) => {
                let (server_read, server_write) = tokio::io::split(server);
                tokio::join!(pump(device_read, server_write, &link), pump(server_read, device_write, &link));
            }
            Upstream::WebSocket(ws) => {
                let (server_write, server_read) = ws.split();
                tokio::join!(
                    pump_to_ws(device_read, server_write, &link),
                    pump_from_ws(server_read, device_write, &link)
                );
            }
        }
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
async fn pump(mut from: impl AsyncRead + Unpin, mut to: impl AsyncWrite + Unpin, link: &Link) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let Some(n) = link.next(from.read(&mut buf)).await else { break };
        if link.hole.load(Relaxed) {
            continue;
        }
        if to.write_all(&buf[..n]).await.is_err() || to.flush().await.is_err() {
            break;
        }
    }
    link.kill.cancel();
}

/// [`pump`] from the device to a WebSocket: what one read brings is one binary message.
async fn pump_to_ws(
    mut from: impl AsyncRead + Unpin,
    mut to: impl Sink<Message, Error = tungstenite::Error> + Unpin,
    link: &Link,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let Some(n) = link.next(from.read(&mut buf)).await else { break };
        if link.hole.load(Relaxed) {
            continue;
        }
        if to.send(Message::Binary(Bytes::copy_from_slice(&buf[..n]))).await.is_err() {
            break;
        }
    }
    link.kill.cancel();
}

/// [`pump`] from a WebSocket to the device: binary messages' bytes, in order.
async fn pump_from_ws(
    mut from: impl Stream<Item = Result<Message, tungstenite::Error>> + Unpin,
    mut to: impl AsyncWrite + Unpin,
    link: &Link,
) {
    loop {
        let next = tokio::select! {
            _ = link.kill.cancelled() => break,
            next = from.next() => next,
        };
        let data = match next {
            Some(Ok(Message::Binary(data))) => data,
            Some(Ok(Message::Close(_)) | Err(_)) | None => {
                link.end().await;
                break;
            }
            Some(Ok(_)) => continue,
        };
        if link.hole.load(Relaxed) || data.is_empty() {
            continue;
        }
        if to.write_all(&data).await.is_err() || to.flush().await.is_err() {
            break;
        }
    }
    link.kill.cancel();
}

impl Link {
    /// The next read's byte count, or `None` when the link ends: killed, or the
    /// side read from closed (while blackholed, an end waits for the kill).
    async fn next(&self, read: impl std::future::Future<Output = std::io::Result<usize>>) -> Option<usize> {
        let read = tokio::select! {
            _ = self.kill.cancelled() => return None,
            read = read => read,
        };
        match read {
            Ok(n) if n > 0 => Some(n),
            _ => {
                self.end().await;
                None
            }
        }
    }

    async fn end(&self) {
        if self.hole.load(Relaxed) {
            self.kill.cancelled().await;
        }
    }
}
