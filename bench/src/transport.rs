//! The transports a run can use between devices and the server: MQTT over TCP,
//! over TLS, over WebSocket and over WebSocket on TLS. The simulated devices
//! always speak plain MQTT to the generator's proxy; for the other transports the
//! proxy carries their bytes to the server over TLS and WebSocket, so the server
//! does all the work a phone or a browser would make it do (handshakes,
//! encryption, framing) and holds that state per connection.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::WebSocketStream;
use tokio_util::either::Either;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// MQTT over TCP.
    #[default]
    Mqtt,
    /// MQTT over TLS.
    Mqtts,
    /// MQTT over WebSocket (path `/mqtt`, subprotocol `mqtt`), as browsers connect.
    Ws,
    /// MQTT over WebSocket over TLS.
    Wss,
}

impl Transport {
    pub fn tls(self) -> bool {
        matches!(self, Transport::Mqtts | Transport::Wss)
    }

    pub fn websocket(self) -> bool {
        matches!(self, Transport::Ws | Transport::Wss)
    }

    pub fn name(self) -> &'static str {
        match self {
            Transport::Mqtt => "mqtt",
            Transport::Mqtts => "mqtts",
            Transport::Ws => "ws",
            Transport::Wss => "wss",
        }
    }
}

/// A self-signed certificate for 127.0.0.1, made for one run, and a client
/// configuration that trusts only it.
pub struct Cert {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub client: Arc<rustls::ClientConfig>,
}

impl Cert {
    /// Makes the certificate and writes it as PEM files into `dir`.
    pub fn new(dir: &Path) -> anyhow::Result<Cert> {
        let made = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .context("cannot make a self-signed certificate")?;
        let cert_file = dir.join("cert.pem");
        let key_file = dir.join("key.pem");
        std::fs::write(&cert_file, made.cert.pem())?;
        std::fs::write(&key_file, made.signing_key.serialize_pem())?;
        let der: CertificateDer<'static> = made.cert.der().clone();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(der)?;
        let client = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Cert { cert_file, key_file, client: Arc::new(client) })
    }
}

pub type ByteStream = Either<TcpStream, Box<TlsStream<TcpStream>>>;

/// A connection to the server, handshakes done.
pub enum Upstream {
    Stream(ByteStream),
    WebSocket(Box<WebSocketStream<ByteStream>>),
}

/// Connects to `addr` over `transport` (`tls` is needed for the TLS ones).
pub async fn connect(
    transport: Transport,
    addr: &(String, u16),
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> anyhow::Result<Upstream> {
    let tcp = TcpStream::connect((addr.0.as_str(), addr.1)).await?;
    tcp.set_nodelay(true)?;
    let stream = if transport.tls() {
        let config = tls.context("a TLS transport needs the run's certificate")?;
        let name = ServerName::try_from(addr.0.clone())?;
        Either::Right(Box::new(TlsConnector::from(config.clone()).connect(name, tcp).await?))
    } else {
        Either::Left(tcp)
    };
    if !transport.websocket() {
        return Ok(Upstream::Stream(stream));
    }
    let scheme = if transport.tls() { "wss" } else { "ws" };
    let mut request = format!("{scheme}://{}:{}/mqtt", addr.0, addr.1).into_client_request()?;
    request.headers_mut().insert("Sec-WebSocket-Protocol", HeaderValue::from_static("mqtt"));
    let (ws, _) = tokio_tungstenite::client_async(request, stream).await?;
    Ok(Upstream::WebSocket(Box::new(ws)))
}
