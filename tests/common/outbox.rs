//! Fakes of the third parties one-time codes go through: an SMTP server that
//! accepts every mail, and an SMS provider's HTTP endpoint. Parley talks to them
//! with its real SMTP client (lettre) and HTTP client; tests read what arrived.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::Notify;

use super::DEADLINE;

/// One delivered message: to whom, through which channel, and its text.
#[derive(Debug, Clone)]
pub struct Delivered {
    pub to: String,
    pub channel: &'static str,
    pub text: String,
    /// For SMS: the Authorization header the provider received.
    pub authorization: Option<String>,
}

/// Everything both fakes received.
#[derive(Clone, Default)]
pub struct Outbox {
    messages: Arc<Mutex<Vec<Delivered>>>,
    arrived: Arc<Notify>,
}

impl Outbox {
    /// Starts both fakes; returns the outbox, the SMTP URL and the SMS URL.
    pub async fn start() -> (Outbox, String, String) {
        let outbox = Outbox::default();
        let smtp = TcpListener::bind("127.0.0.1:0").await.expect("smtp bind");
        let smtp_url = format!("smtp://{}", smtp.local_addr().expect("addr"));
        tokio::spawn(outbox.clone().serve_smtp(smtp));
        let sms = TcpListener::bind("127.0.0.1:0").await.expect("sms bind");
        let sms_url = format!("http://{}/messages", sms.local_addr().expect("addr"));
        let app = axum::Router::new().route("/messages", axum::routing::post(receive_sms)).with_state(outbox.clone());
        tokio::spawn(async move { axum::serve(sms, app).await });
        (outbox, smtp_url, sms_url)
    }

    fn push(&self, d: Delivered) {
        self.messages.lock().expect("outbox").push(d);
        self.arrived.notify_waiters();
    }

    /// Everything delivered to `to` so far.
    pub fn to(&self, to: &str) -> Vec<Delivered> {
        self.messages.lock().expect("outbox").iter().filter(|d| d.to == to).cloned().collect()
    }

    /// Waits until `to` has received `n` messages; returns the code in the `n`th.
    pub async fn code(&self, to: &str, n: usize) -> String {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let notified = self.arrived.notified();
            if let Some(d) = self.to(to).get(n - 1) {
                return six_digits(&d.text).unwrap_or_else(|| panic!("no code in {:?}", d.text));
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!("message {n} to {to} did not arrive; got {:?}", self.to(to));
            }
        }
    }

    /// Whether nothing arrives for `to` beyond the first `n` messages within `wait`.
    pub async fn nothing_more(&self, to: &str, n: usize, wait: Duration) -> bool {
        tokio::time::sleep(wait).await;
        self.to(to).len() == n
    }

    async fn serve_smtp(self, listener: TcpListener) {
        while let Ok((stream, _)) = listener.accept().await {
            let outbox = self.clone();
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut lines = BufReader::new(read).lines();
                let _ = write.write_all(b"220 fake-smtp ESMTP\r\n").await;
                let mut rcpt = Vec::new();
                while let Ok(Some(line)) = lines.next_line().await {
                    let upper = line.to_ascii_uppercase();
                    let reply: &[u8] = if upper.starts_with("EHLO") || upper.starts_with("HELO") {
                        b"250-fake-smtp\r\n250 8BITMIME\r\n"
                    } else if upper.starts_with("RCPT TO:") {
                        rcpt.push(line[8..].trim().trim_matches(|c| c == '<' || c == '>').to_string());
                        b"250 ok\r\n"
                    } else if upper.starts_with("DATA") {
                        let _ = write.write_all(b"354 end with .\r\n").await;
                        let mut body = String::new();
                        while let Ok(Some(l)) = lines.next_line().await {
                            if l == "." {
                                break;
                            }
                            body.push_str(&l);
                            body.push('\n');
                        }
                        for to in rcpt.drain(..) {
                            outbox.push(Delivered { to, channel: "email", text: body.clone(), authorization: None });
                        }
                        b"250 queued\r\n"
                    } else if upper.starts_with("QUIT") {
                        let _ = write.write_all(b"221 bye\r\n").await;
                        return;
                    } else {
                        b"250 ok\r\n"
                    };
                    if write.write_all(reply).await.is_err() {
                        return;
                    }
                }
            });
        }
    }
}

async fn receive_sms(
    axum::extract::State(outbox): axum::extract::State<Outbox>,
    headers: axum::http::HeaderMap,
    axum::Json(body): axum::Json<serde_json::Value>,
) -> axum::http::StatusCode {
    let authorization = headers.get("authorization").and_then(|v| v.to_str().ok()).map(str::to_string);
    outbox.push(Delivered {
        to: body["to"].as_str().unwrap_or_default().to_string(),
        channel: "sms",
        text: body["text"].as_str().unwrap_or_default().to_string(),
        authorization,
    });
    axum::http::StatusCode::ACCEPTED
}

/// The first run of exactly six digits in `text`.
pub fn six_digits(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i].is_ascii_digit() {
            let start = i;
            while i < bytes.len() && bytes[i].is_ascii_digit() {
                i += 1;
            }
            if i - start == 6 {
                return Some(text[start..i].to_string());
            }
        } else {
            i += 1;
        }
    }
    None
}
