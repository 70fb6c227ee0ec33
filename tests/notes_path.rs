//! The notes path `/api/notes/transcribe-audio` (PROTOCOL.md 2.7), end to end:
//! a real gateway, the dev thoth as upstream, and a real HTTP server started
//! here as the chronus notes backend behind `NOTE_ACCESS_URL`. Every refusal
//! is checked to leave thoth untouched.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chronus_gateway::devthoth::{DevThoth, DevThothOptions};
use chronus_gateway::RunningGateway;
use common::harness::Harness;
use common::*;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const NOTES: &str = "/api/notes/transcribe-audio";

/// How the fake notes backend answers.
#[derive(Debug, Clone, Copy)]
enum Backend {
    Status(u16),
    /// Accepts and never answers.
    Hang,
    /// Answers bytes that are not HTTP.
    Garbage,
}

/// A notes backend on 127.0.0.1:0 that records each request's head.
struct NotesBackend {
    port: u16,
    requests: Arc<Mutex<Vec<String>>>,
}

impl NotesBackend {
    async fn start(behaviour: Backend) -> NotesBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = requests.clone();
        actix_rt::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let seen = seen.clone();
                actix_rt::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    seen.lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&head).into_owned());
                    match behaviour {
                        Backend::Status(code) => {
                            let reply = format!(
                                "HTTP/1.1 {code} Whatever\r\ncontent-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{{}}"
                            );
                            let _ = stream.write_all(reply.as_bytes()).await;
                        }
                        Backend::Hang => tokio::time::sleep(Duration::from_secs(30)).await,
                        Backend::Garbage => {
                            let _ = stream
                                .write_all(b"SSH-2.0-OpenSSH_9.6\r\nnot http at all\r\n\r\n")
                                .await;
                        }
                    }
                });
            }
        });
        NotesBackend { port, requests }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/api/notes/{{noteId}}", self.port)
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

/// A port nothing listens on (bound, then released).
async fn refused_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap().port()
}

/// A chronus-style token: integer `sub`, `username`, one minute.
fn chronus_token(user_id: i64) -> String {
    let now = now();
    token_with(json!({"username": "ada", "sub": user_id, "iat": now, "exp": now + 60}))
}

/// Opens the notes path as the later chronus frontend does (subprotocol).
async fn open_note(gateway: &RunningGateway, query: &str, token: &str) -> Connected {
    connect(
        &ws_url(gateway, &format!("{NOTES}{query}")),
        Auth::Subprotocol(token),
        None,
    )
    .await
}

async fn gateway_with(thoth: &DevThoth, note_access_url: Option<&str>) -> RunningGateway {
    let mut env = base_env(&thoth.url());
    if let Some(url) = note_access_url {
        env.insert("NOTE_ACCESS_URL".into(), url.into());
        env.insert("NOTE_ACCESS_TIMEOUT_MS".into(), "700".into());
    }
    start_gateway(&env).await
}

fn error_codes(messages: &[Value]) -> Vec<String> {
    messages
        .iter()
        .filter(|m| m["type"] == "error")
        .map(|m| m["code"].as_str().unwrap_or("?").to_string())
        .collect()
}

/// The session is refused with `code`/`close`, and thoth saw nothing.
async fn assert_refused(
    gateway: &RunningGateway,
    thoth: &DevThoth,
    query: &str,
    code: &str,
    close: u16,
) {
    let mut client = open_note(gateway, query, &chronus_token(7)).await.client;
    let (messages, closed) = client.until_close(Duration::from_secs(5)).await;
    assert_eq!(error_codes(&messages), vec![code], "{query}");
    assert_eq!(closed, Some(close), "{query}");
    assert_eq!(
        thoth.stats().connections_accepted(),
        0,
        "{query}: no upstream work for a refused session"
    );
    assert!(pool_report(gateway).await["notes"]
        .as_array()
        .unwrap()
        .is_empty());
}

#[actix_rt::test]
async fn a_note_session_speaks_the_chronus_protocol_and_shows_its_note_in_the_pool() {
    let thoth = DevThoth::start(DevThothOptions::default()).unwrap();
    let gateway = gateway_with(&thoth, None).await;
    let token = chronus_token(7);
    let connected = open_note(&gateway, "?noteId=42", &token).await;
    assert_eq!(connected.subprotocol.as_deref(), Some("chronus.jwt"));
    let mut client = connected.client;
    let ready = client.expect_type("ready").await;
    let session_id = ready["sessionId"].as_str().unwrap().to_string();

    let notes = pool_report(&gateway).await["notes"].clone();
    assert_eq!(
        notes,
        json!([{"sessionId": session_id, "noteId": 42, "provider": "thoth"}])
    );

    client.send_binary(f32_audio(0.25, 2.0)).await;
    let first = client.expect_type("transcription").await;
    assert!(!first["text"].as_str().unwrap().is_empty());
    assert_eq!(first["text"], first["data"]);
    client.close().await;
    assert!(
        eventually(Duration::from_secs(3), || async {
            pool_report(&gateway).await["notes"] == json!([])
        })
        .await,
        "the note leaves the pool JSON with its session"
    );
    gateway.stop().await;
    thoth.stop();
}

#[actix_rt::test]
async fn a_missing_or_malformed_note_id_is_note_not_found_4404_before_any_upstream_work() {
    let thoth = DevThoth::start(DevThothOptions::default()).unwrap();
    let backend = NotesBackend::start(Backend::Status(200)).await;
    let gateway = gateway_with(&thoth, Some(&backend.url())).await;
    for query in [
        "",
        "?noteId=",
        "?noteId=abc",
        "?noteId=0",
        "?noteId=-1",
        "?noteId=1e3",
        "?noteId=1.5",
        "?noteId=%2B5",
        "?noteId=9223372036854775808",
        "?noteId=123456789012345678901234567890",
    ] {
        assert_refused(&gateway, &thoth, query, "NOTE_NOT_FOUND", 4404).await;
    }
    assert!(
        backend.requests().is_empty(),
        "a malformed noteId is refused before the notes backend is asked"
    );
    gateway.stop().await;
    thoth.stop();
}

#[actix_rt::test]
async fn a_2xx_from_the_notes_backend_admits_and_it_is_asked_with_the_users_token() {
    let thoth = DevThoth::start(DevThothOptions::default()).unwrap();
    let backend = NotesBackend::start(Backend::Status(200)).await;
    let gateway = gateway_with(&thoth, Some(&backend.url())).await;
    let token = chronus_token(7);
    let mut client = open_note(&gateway, "?noteId=42", &token).await.client;
    client.expect_type("ready").await;
    let requests = backend.requests();
    assert_eq!(requests.len(), 1);
    assert!(
        requests[0].starts_with("GET /api/notes/42 HTTP/1.1\r\n"),
        "{}",
        requests[0]
    );
    assert!(requests[0].to_ascii_lowercase().contains(&format!(
        "authorization: bearer {}",
        token.to_ascii_lowercase()
    )));
    client.close().await;
    gateway.stop().await;
    thoth.stop();
}

#[actix_rt::test]
async fn a_403_from_the_notes_backend_is_forbidden_4403() {
    let thoth = DevThoth::start(DevThothOptions::default()).unwrap();
    let backend = NotesBackend::start(Backend::Status(403)).await;
    let gateway = gateway_with(&thoth, Some(&backend.url())).await;
    assert_refused(&gateway, &thoth, "?noteId=42", "FORBIDDEN", 4403).await;
    assert_eq!(backend.requests().len(), 1);
    gateway.stop().await;
    thoth.stop();
}

#[actix_rt::test]
async fn a_404_from_the_notes_backend_is_note_not_found_4404() {
    let thoth = DevThoth::start(DevThothOptions::default()).unwrap();
    let backend = NotesBackend::start(Backend::Status(404)).await;
    let gateway = gateway_with(&thoth, Some(&backend.url())).await;
    assert_refused(&gateway, &thoth, "?noteId=42", "NOTE_NOT_FOUND", 4404).await;
    gateway.stop().await;
    thoth.stop();
}

#[actix_rt::test]
async fn a_5xx_from_the_notes_backend_is_unavailable_1011() {
    let thoth = DevThoth::start(DevThothOptions::default()).unwrap();
    let backend = NotesBackend::start(Backend::Status(503)).await;
    let gateway = gateway_with(&thoth, Some(&backend.url())).await;
    assert_refused(&gateway, &thoth, "?noteId=42", "UNAVAILABLE", 1011).await;
    gateway.stop().await;
    thoth.stop();
}

#[actix_rt::test]
async fn a_notes_backend_that_hangs_past_the_timeout_is_unavailable_1011() {
    let thoth = DevThoth::start(DevThothOptions::default()).unwrap();
    let backend = NotesBackend::start(Backend::Hang).await;
    let gateway = gateway_with(&thoth, Some(&backend.url())).await;
    let started = std::time::Instant::now();
    assert_refused(&gateway, &thoth, "?noteId=42", "UNAVAILABLE", 1011).await;
    assert!(
        started.elapsed() >= Duration::from_millis(700),
        "waited for the timeout"
    );
    assert_eq!(backend.requests().len(), 1);
    gateway.stop().await;
    thoth.stop();
}

#[actix_rt::test]
async fn a_notes_backend_answering_garbage_is_unavailable_1011() {
    let thoth = DevThoth::start(DevThothOptions::default()).unwrap();
    let backend = NotesBackend::start(Backend::Garbage).await;
    let gateway = gateway_with(&thoth, Some(&backend.url())).await;
    assert_refused(&gateway, &thoth, "?noteId=42", "UNAVAILABLE", 1011).await;
    gateway.stop().await;
    thoth.stop();
}

#[actix_rt::test]
async fn a_notes_backend_refusing_the_connection_is_unavailable_1011() {
    let thoth = DevThoth::start(DevThothOptions::default()).unwrap();
    let url = format!(
        "http://127.0.0.1:{}/api/notes/{{noteId}}",
        refused_port().await
    );
    let gateway = gateway_with(&thoth, Some(&url)).await;
    assert_refused(&gateway, &thoth, "?noteId=42", "UNAVAILABLE", 1011).await;
    gateway.stop().await;
    thoth.stop();
}

#[actix_rt::test]
async fn the_notes_path_still_checks_the_token_first() {
    let thoth = DevThoth::start(DevThothOptions::default()).unwrap();
    let backend = NotesBackend::start(Backend::Status(200)).await;
    let gateway = gateway_with(&thoth, Some(&backend.url())).await;
    let mut client = connect(
        &ws_url(&gateway, &format!("{NOTES}?noteId=42")),
        Auth::None,
        None,
    )
    .await
    .client;
    let (messages, close) = client.until_close(Duration::from_secs(5)).await;
    assert_eq!(error_codes(&messages), vec!["UNAUTHORIZED"]);
    assert_eq!(close, Some(4401));
    assert!(backend.requests().is_empty(), "no token, no backend call");
    assert_eq!(thoth.stats().connections_accepted(), 0);
    gateway.stop().await;
    thoth.stop();
}

#[actix_rt::test]
async fn the_users_token_sent_to_the_notes_backend_never_reaches_the_log() {
    let thoth = DevThoth::start(DevThothOptions::default()).unwrap();
    let backend = NotesBackend::start(Backend::Status(200)).await;
    let mut env = base_env(&thoth.url());
    env.insert("NOTE_ACCESS_URL".into(), backend.url());
    env.insert("RUST_LOG".into(), "trace".into());
    let mut harness = Harness::new();
    let gateway = harness.start_gateway(env);
    let token = chronus_token(7);
    let url = format!("ws://{}{NOTES}?noteId=42", gateway.public_addr);
    let mut client = connect(&url, Auth::Subprotocol(&token), None).await.client;
    client.expect_type("ready").await;
    client.close().await;
    client.until_close(Duration::from_secs(5)).await;
    assert_eq!(backend.requests().len(), 1, "the backend was asked");

    gateway.child.kill().unwrap();
    let log = gateway.drain_log(Duration::from_secs(2)).join("\n");
    assert!(
        log.contains("note 42"),
        "the note is in the session's log lines"
    );
    assert!(
        log.contains(&format!("127.0.0.1:{}/api/notes/42", backend.port)),
        "the note URL may be logged"
    );
    assert!(
        !log.contains(token.as_str()),
        "the token leaked into the log"
    );
    let signature = token.rsplit('.').next().unwrap();
    assert!(!log.contains(signature), "the token's signature leaked");
    thoth.stop();
}
