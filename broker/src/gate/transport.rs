//! How devices reach the gate: MQTT over TCP, over TLS, over WebSocket (browsers)
//! and over WebSocket on TLS. TLS and WebSocket end here; what follows is the same
//! byte stream of MQTT packets whatever the transport.
//!
//! The handshakes run in the connection's own task, under the deadline that also
//! covers the CONNECT, so a socket that stalls halfway never delays anyone else.

use std::fmt;
use std::io;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{header, HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tokio_util::either::Either;

/// Room made in a device's read buffer for each read.
const READ_CHUNK: usize = 1024;

/// The kinds of listener the gate has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// MQTT over TCP.
    Mqtt,
    /// MQTT over TLS.
    Mqtts,
    /// MQTT over WebSocket.
    Ws,
    /// MQTT over WebSocket over TLS.
    Wss,
}

impl Kind {
    fn tls(self) -> bool {
        matches!(self, Kind::Mqtts | Kind::Wss)
    }

    fn websocket(self) -> bool {
        matches!(self, Kind::Ws | Kind::Wss)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Mqtt => "mqtt",
            Kind::Mqtts => "mqtts",
            Kind::Ws => "ws",
            Kind::Wss => "wss",
        })
    }
}

/// A bound listener and what it speaks.
pub struct GateListener {
    pub listener: TcpListener,
    pub kind: Kind,
}

/// What the handshakes need, shared by every connection.
#[derive(Clone)]
pub struct TransportSettings {
    /// Set when a TLS listener is configured.
    pub tls: Option<TlsAcceptor>,
    /// The path of the WebSocket endpoint (`/mqtt`).
    pub ws_path: String,
    /// Largest WebSocket message accepted (one MQTT packet, plus room for a few small ones).
    pub ws_max_message: usize,
}

impl fmt::Debug for TransportSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TransportSettings")
            .field("tls", &self.tls.is_some())
            .field("ws_path", &self.ws_path)
            .field("ws_max_message", &self.ws_max_message)
            .finish()
    }
}

/// Reads a PEM certificate chain and private key into a TLS acceptor (TLS 1.2 and 1.3).
pub fn tls_acceptor(cert_file: &Path, key_file: &Path) -> anyhow::Result<TlsAcceptor> {
    let certs = CertificateDer::pem_file_iter(cert_file)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("cannot read the certificate chain in {}", cert_file.display()))?;
    if certs.is_empty() {
        anyhow::bail!("{} holds no PEM certificate", cert_file.display());
    }
    let key = PrivateKeyDer::from_pem_file(key_file)
        .with_context(|| format!("cannot read a PEM private key in {}", key_file.display()))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("the TLS certificate and key do not fit together")?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

type ByteStream = Either<TcpStream, Box<TlsStream<TcpStream>>>;

/// An established transport, carrying MQTT bytes.
pub enum Transport {
    Stream(ByteStream),
    WebSocket(Box<WebSocketStream<ByteStream>>),
}

impl Transport {
    /// Runs the TLS and WebSocket handshakes `kind` needs on an accepted socket.
    // The upgrade callback's error type is tungstenite's contract.
    #[allow(clippy::result_large_err)]
    pub async fn handshake(kind: Kind, tcp: TcpStream, settings: &TransportSettings) -> Result<Transport, String> {
        let _ = tcp.set_nodelay(true);
        let stream: ByteStream = if kind.tls() {
            let acceptor = settings.tls.as_ref().ok_or("TLS listener without a certificate")?;
            let tls = acceptor.accept(tcp).await.map_err(|e| format!("TLS handshake failed: {e}"))?;
            Either::Right(Box::new(tls))
        } else {
            Either::Left(tcp)
        };
        if !kind.websocket() {
            return Ok(Transport::Stream(stream));
        }
        let config = WebSocketConfig::default()
            // Small buffers: most devices are idle most of the time.
            .read_buffer_size(1024)
            .write_buffer_size(0)
            .max_message_size(Some(settings.ws_max_message))
            .max_frame_size(Some(settings.ws_max_message));
        let path = settings.ws_path.clone();
        let ws = tokio_tungstenite::accept_hdr_async_with_config(
            stream,
            move |request: &Request, response: Response| upgrade(&path, request, response),
            Some(config),
        )
        .await
        .map_err(|e| format!("WebSocket handshake failed: {e}"))?;
        Ok(Transport::WebSocket(Box::new(ws)))
    }

    /// Appends what arrives to `buf`; 0 means the device closed. Cancel-safe.
    ///
    /// Room in `buf` is made only once bytes are there to read (or, on TLS, records
    /// are), so an idle device whose buffer was released holds none.
    pub async fn read(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        match self {
            Transport::Stream(Either::Left(tcp)) => loop {
                tcp.readable().await?;
                buf.reserve(READ_CHUNK);
                match tcp.try_read_buf(buf) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    read => return read,
                }
            },
            Transport::Stream(Either::Right(tls)) => {
                let (tcp, session) = tls.get_ref();
                // Without decrypted bytes waiting in rustls, nothing comes before the socket has some.
                if session.wants_read() {
                    tcp.readable().await?;
                }
                buf.reserve(READ_CHUNK);
                tls.read_buf(buf).await
            }
            Transport::WebSocket(ws) => loop {
                match ws.next().await {
                    Some(Ok(Message::Binary(data))) => {
                        if data.is_empty() {
                            continue;
                        }
                        buf.extend_from_slice(&data);
                        return Ok(data.len());
                    }
                    Some(Ok(Message::Text(_))) => {
                        return Err(io::Error::new(io::ErrorKind::InvalidData, "MQTT over WebSocket is binary frames"))
                    }
                    Some(Ok(Message::Close(_))) | None => return Ok(0),
                    // Pings are answered by tungstenite itself.
                    Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                    Some(Err(e)) => return Err(io::Error::other(e)),
                }
            },
        }
    }

    /// Writes `data` (one or more whole MQTT packets; one binary message on WebSocket).
    pub async fn write_all(&mut self, data: Bytes) -> io::Result<()> {
        match self {
            Transport::Stream(s) => {
                s.write_all(&data).await?;
                s.flush().await
            }
            Transport::WebSocket(ws) => ws.send(Message::Binary(data)).await.map_err(io::Error::other),
        }
    }

    /// Closes the transport politely (TLS close_notify, WebSocket close frame).
    pub async fn close(&mut self) {
        match self {
            Transport::Stream(s) => {
                let _ = s.shutdown().await;
            }
            Transport::WebSocket(ws) => {
                let _ = SinkExt::close(ws.as_mut()).await;
            }
        }
    }
}

/// Accepts the WebSocket upgrade on `path` only, with the `mqtt` subprotocol when the
/// client offers subprotocols (a browser offering only others is refused).
// The error type is tungstenite's callback contract.
#[allow(clippy::result_large_err)]
fn upgrade(path: &str, request: &Request, mut response: Response) -> Result<Response, ErrorResponse> {
    if request.uri().path() != path {
        return Err(refuse(StatusCode::NOT_FOUND, format!("MQTT over WebSocket is served at {path}")));
    }
    let Some(offered) = request.headers().get(header::SEC_WEBSOCKET_PROTOCOL) else {
        return Ok(response);
    };
    let offers_mqtt =
        offered.to_str().map(|list| list.split(',').any(|p| p.trim().eq_ignore_ascii_case("mqtt"))).unwrap_or(false);
    if !offers_mqtt {
        return Err(refuse(StatusCode::BAD_REQUEST, "the WebSocket subprotocol must be `mqtt`".into()));
    }
    response.headers_mut().insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static("mqtt"));
    Ok(response)
}

fn refuse(status: StatusCode, why: String) -> ErrorResponse {
    let mut response = ErrorResponse::new(Some(why));
    *response.status_mut() = status;
    response
}
