//! Raw MQTT clients over every transport the gate serves (TCP, TLS, WebSocket as a
//! browser opens it, WebSocket over TLS), packets encoded with rumqttc's codecs:
//! for the tests that need exact bytes, odd framing, or a transport rumqttc lacks.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use parley_wire::codec::{self, ConnectInfo, Protocol};
use rumqttc::mqttbytes::v4;
use rumqttc::v5::mqttbytes::v5;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tokio_util::either::Either;

use super::DEADLINE;

/// A self-signed certificate for 127.0.0.1 and localhost, written as PEM files.
pub struct TestCert {
    pub cert_file: std::path::PathBuf,
    pub key_file: std::path::PathBuf,
    pub der: CertificateDer<'static>,
    _dir: tempfile::TempDir,
}

impl TestCert {
    pub fn new() -> TestCert {
        let dir = tempfile::tempdir().expect("cert dir");
        let key = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .expect("self-signed certificate");
        let cert_file = dir.path().join("cert.pem");
        let key_file = dir.path().join("key.pem");
        std::fs::write(&cert_file, key.cert.pem()).expect("write cert");
        std::fs::write(&key_file, key.signing_key.serialize_pem()).expect("write key");
        TestCert { cert_file, key_file, der: key.cert.der().clone(), _dir: dir }
    }

    /// A TLS client configuration trusting only this certificate.
    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.der.clone()).expect("trust the test certificate");
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("tls versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        Arc::new(config)
    }
}

type Stream = Either<TcpStream, TlsStream<TcpStream>>;

enum Link {
    Stream(Stream),
    Ws(Box<WebSocketStream<Stream>>),
}

/// One raw connection to the gate.
pub struct RawClient {
    link: Link,
    buf: BytesMut,
}

/// The WebSocket upgrade as a browser's MQTT library sends it.
pub fn browser_request(url: &str) -> tokio_tungstenite::tungstenite::handshake::client::Request {
    let mut request = url.into_client_request().expect("ws request");
    let headers = request.headers_mut();
    headers.insert("Sec-WebSocket-Protocol", HeaderValue::from_static("mqtt"));
    headers.insert("Origin", HeaderValue::from_static("https://app.example.com"));
    headers.insert("User-Agent", HeaderValue::from_static("Mozilla/5.0 (test browser)"));
    request
}

impl RawClient {
    pub async fn tcp(addr: std::net::SocketAddr) -> RawClient {
        let tcp = TcpStream::connect(addr).await.expect("tcp connect");
        RawClient { link: Link::Stream(Either::Left(tcp)), buf: BytesMut::new() }
    }

    pub fn tcp_from(tcp: TcpStream) -> RawClient {
        RawClient { link: Link::Stream(Either::Left(tcp)), buf: BytesMut::new() }
    }

    pub async fn tls(addr: std::net::SocketAddr, cert: &TestCert) -> RawClient {
        let stream = tls_stream(addr, cert).await.expect("tls handshake");
        RawClient { link: Link::Stream(Either::Right(stream)), buf: BytesMut::new() }
    }

    /// A browser-style WebSocket client (subprotocol `mqtt`), over TLS when `cert` is given.
    pub async fn ws(addr: std::net::SocketAddr, path: &str, cert: Option<&TestCert>) -> RawClient {
        let (stream, scheme) = match cert {
            Some(cert) => (Either::Right(tls_stream(addr, cert).await.expect("tls handshake")), "wss"),
            None => (Either::Left(TcpStream::connect(addr).await.expect("tcp connect")), "ws"),
        };
        let request = browser_request(&format!("{scheme}://{addr}{path}"));
        let (ws, response) = tokio_tungstenite::client_async(request, stream).await.expect("websocket upgrade");
        assert_eq!(response.headers().get("Sec-WebSocket-Protocol").map(|v| v.as_bytes()), Some(&b"mqtt"[..]));
        RawClient { link: Link::Ws(Box::new(ws)), buf: BytesMut::new() }
    }

    /// Sends `bytes` in one write (one binary WebSocket message).
    pub async fn send(&mut self, bytes: &[u8]) {
        match &mut self.link {
            Link::Stream(s) => {
                s.write_all(bytes).await.expect("send");
                s.flush().await.expect("flush");
            }
            Link::Ws(ws) => ws.send(Message::Binary(Bytes::copy_from_slice(bytes))).await.expect("send ws"),
        }
    }

    /// Sends a text WebSocket message (which MQTT over WebSocket forbids).
    pub async fn send_text(&mut self, text: &str) {
        let Link::Ws(ws) = &mut self.link else { panic!("not a WebSocket client") };
        ws.send(Message::Text(text.into())).await.expect("send text");
    }

    /// Reads more bytes; false when the gate closed the connection.
    async fn fill(&mut self) -> bool {
        match &mut self.link {
            Link::Stream(s) => matches!(s.read_buf(&mut self.buf).await, Ok(n) if n > 0),
            Link::Ws(ws) => loop {
                match ws.next().await {
                    Some(Ok(Message::Binary(b))) => {
                        self.buf.extend_from_slice(&b);
                        return true;
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    _ => return false,
                }
            },
        }
    }

    /// The next 3.1.1 packet, or `None` once the gate closed the connection.
    pub async fn next_v4(&mut self) -> Option<v4::Packet> {
        tokio::time::timeout(DEADLINE, async {
            loop {
                if let Ok(p) = v4::Packet::read(&mut self.buf, 1 << 24) {
                    return Some(p);
                }
                if !self.fill().await {
                    return None;
                }
            }
        })
        .await
        .expect("a packet or the close in time")
    }

    /// The next v5 packet, or `None` once the gate closed the connection.
    pub async fn next_v5(&mut self) -> Option<v5::Packet> {
        tokio::time::timeout(DEADLINE, async {
            loop {
                if let Ok(p) = v5::Packet::read(&mut self.buf, None) {
                    return Some(p);
                }
                if !self.fill().await {
                    return None;
                }
            }
        })
        .await
        .expect("a packet or the close in time")
    }

    /// Whether the gate closes the connection within `limit` (anything sent meanwhile is skipped).
    pub async fn closed_within(&mut self, limit: Duration) -> bool {
        tokio::time::timeout(limit, async {
            while self.fill().await {
                self.buf.clear();
            }
        })
        .await
        .is_ok()
    }
}

async fn tls_stream(addr: std::net::SocketAddr, cert: &TestCert) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let connector = tokio_rustls::TlsConnector::from(cert.client_config());
    connector.connect(ServerName::try_from("127.0.0.1").expect("server name"), tcp).await
}

/// A 3.1.1 CONNECT with the user id and token as credentials (clean session).
pub fn connect_v4(client_id: &str, user: &str, token: &str, keep_alive: u16) -> BytesMut {
    connect(Protocol::V4, client_id, user, token, keep_alive)
}

/// A v5 CONNECT with the user id and token as credentials (clean start).
pub fn connect_v5(client_id: &str, user: &str, token: &str, keep_alive: u16) -> BytesMut {
    connect(Protocol::V5, client_id, user, token, keep_alive)
}

fn connect(protocol: Protocol, client_id: &str, user: &str, token: &str, keep_alive: u16) -> BytesMut {
    let mut buf = BytesMut::new();
    codec::write_connect(&connect_info(protocol, client_id, Some((user, token)), keep_alive), &mut buf);
    buf
}

/// A clean-start CONNECT with `login` (user id, token) as credentials, or none.
pub fn connect_info(protocol: Protocol, client_id: &str, login: Option<(&str, &str)>, keep_alive: u16) -> ConnectInfo {
    ConnectInfo {
        protocol,
        client_id: client_id.into(),
        clean_start: true,
        keep_alive,
        username: login.map(|(u, _)| u.into()),
        password: login.map(|(_, p)| p.into()),
        will: None,
        session_expiry: None,
        receive_maximum: None,
        max_packet_size: None,
        topic_alias_max: 0,
    }
}
