//! The fixture of chronus's gateway suite: the gateway on the notes path, the
//! dev thoth in either mode, the notes backend, chronus-style tokens, and the
//! audio the chronus frontends send.

use std::collections::HashMap;
use std::time::Duration;

use chronus_gateway::devthoth::{describe_audio, DevThoth, DevThothOptions};
use chronus_gateway::RunningGateway;
use serde_json::{json, Value};

use crate::common::*;
use crate::notes_backend::NotesBackend;

pub const NOTES_PATH: &str = "/api/notes/transcribe-audio";
/// chronus's spec: user 7 owns note 123.
pub const OWNER_ID: u64 = 7;
pub const OWNED_NOTE_ID: u64 = 123;
/// A note of another user (the backend answers 403 to user 7).
pub const OTHERS_NOTE_ID: u64 = 456;
pub const OTHER_USER_ID: u64 = 8;
/// A note the backend does not know (404).
pub const MISSING_NOTE_ID: u64 = 999;
/// The frontends' frame: 4096 float32 samples.
pub const FRAME_BYTES: usize = 4096 * 4;
pub const SAMPLE_RATE: usize = 16_000;
/// Level of the test audio: well above today's thoth's silence threshold.
pub const LEVEL: f32 = 0.25;
/// How long a test waits for any one thing the gateway should do.
pub const PATIENCE: Duration = Duration::from_secs(15);
/// How long a test waits to be sure something does *not* happen.
pub const QUIET_PERIOD: Duration = Duration::from_millis(400);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Legacy,
    Mux,
}

/// A chronus token as its backend signs it: `sub` a JSON number, one minute.
pub fn chronus_token(user_id: u64) -> String {
    token_with(json!({
        "username": format!("user{user_id}"),
        "sub": user_id,
        "iat": now(),
        "exp": now() + 60,
    }))
}

/// The gateway, the dev thoth and the notes backend of one test.
pub struct Suite {
    pub mode: Mode,
    pub thoth: Option<DevThoth>,
    pub notes: NotesBackend,
    pub gateway: RunningGateway,
}

impl Suite {
    pub async fn start(mode: Mode) -> Suite {
        Suite::start_with(mode, &[]).await
    }

    /// Starts everything; `settings` override the gateway's environment.
    pub async fn start_with(mode: Mode, settings: &[(&str, &str)]) -> Suite {
        let thoth = DevThoth::start(thoth_options(mode, "127.0.0.1:0")).unwrap();
        let notes =
            NotesBackend::start(&[(OWNED_NOTE_ID, OWNER_ID), (OTHERS_NOTE_ID, OTHER_USER_ID)]);
        let mut env: HashMap<String, String> = base_env(&thoth.url());
        let protocol = match mode {
            Mode::Legacy => "legacy",
            Mode::Mux => "mux",
        };
        env.insert("THOTH_PROTOCOL".into(), protocol.into());
        env.insert("NOTE_ACCESS_URL".into(), notes.access_url());
        env.insert("MAX_SESSIONS_PER_USER".into(), "1".into());
        for (key, value) in settings {
            env.insert((*key).into(), (*value).into());
        }
        let gateway = start_gateway(&env).await;
        Suite {
            mode,
            thoth: Some(thoth),
            notes,
            gateway,
        }
    }

    pub fn thoth(&self) -> &DevThoth {
        self.thoth.as_ref().expect("the dev thoth is running")
    }

    pub fn url(&self, query: &str) -> String {
        ws_url(&self.gateway, &format!("{NOTES_PATH}{query}"))
    }

    /// Opens a session as the later chronus frontend does and waits for `ready`.
    pub async fn open(&self, note_id: u64, user_id: u64) -> WsClient {
        let token = chronus_token(user_id);
        let connected = connect(
            &self.url(&format!("?noteId={note_id}")),
            Auth::Subprotocol(&token),
            None,
        )
        .await;
        assert_eq!(connected.subprotocol.as_deref(), Some("chronus.jwt"));
        let mut client = connected.client;
        let ready = client.json().await;
        assert_eq!(ready["type"], "ready", "the first message: {ready}");
        client
    }

    /// A connection the gateway must refuse: returns what it said, and asserts
    /// it said one `error` with `code` and closed with `close`.
    pub async fn refused(&self, query: &str, auth: Auth<'_>, code: &str, close: u16) {
        let mut client = connect(&self.url(query), auth, None).await.client;
        let (messages, closed) = client.until_close(PATIENCE).await;
        assert_eq!(closed, Some(close), "{query}: {messages:?}");
        let errors: Vec<&Value> = messages.iter().filter(|m| m["type"] == "error").collect();
        assert_eq!(errors.len(), 1, "{query}: {messages:?}");
        assert_eq!(errors[0]["code"], code, "{query}");
        assert!(
            messages.iter().all(|m| m["type"] == "error"),
            "a refused connection gets nothing but its error: {messages:?}"
        );
    }

    /// Upstream sockets the dev thoth has seen, refused handshakes included.
    pub fn thoth_connections(&self) -> u64 {
        let stats = self.thoth().stats();
        stats.connections_accepted() + stats.connections_refused()
    }

    /// Nothing held for any session: the pool's reference count is 0, no
    /// session id or notes-path session is listed, and no thoth socket is
    /// left open.
    pub async fn assert_released(&self) {
        let released = eventually(PATIENCE, || async {
            let report = pool_report(&self.gateway).await;
            let endpoint = &report["thoth"][0];
            let empty = |list: &Value| list.as_array().is_none_or(|items| items.is_empty());
            endpoint["refCount"] == 0 && empty(&endpoint["sessionIds"]) && empty(&report["notes"])
        })
        .await;
        assert!(released, "{}", pool_report(&self.gateway).await);
        if let Some(thoth) = &self.thoth {
            let stats = thoth.stats();
            // Mux: the shared socket closes THOTH_IDLE_CLOSE_SECS (1 s) later.
            let closed = eventually(PATIENCE, || async { stats.connections_open() == 0 }).await;
            assert!(closed, "a thoth socket is still open");
            if self.mode == Mode::Mux {
                assert_eq!(stats.sessions_ended(), stats.mux_sessions_started());
            }
        }
    }

    /// The user can record again: a new session of the same user gets `ready`.
    pub async fn assert_user_can_reconnect(&self) {
        let mut client = self.open(OWNED_NOTE_ID, OWNER_ID).await;
        client.close().await;
    }

    pub async fn stop(mut self) {
        self.gateway.stop().await;
        if let Some(thoth) = self.thoth.take() {
            thoth.stop();
        }
        self.notes.stop().await;
    }
}

pub fn thoth_options(mode: Mode, bind: &str) -> DevThothOptions {
    DevThothOptions {
        bind: bind.parse().unwrap(),
        mux: mode == Mode::Mux,
        ..DevThothOptions::default()
    }
}

/// Samples per result of the dev thoth: a second in mux mode, a window (as
/// today's thoth) in legacy mode.
pub fn samples_per_result(suite: &Suite) -> usize {
    match suite.mode {
        Mode::Mux => SAMPLE_RATE,
        Mode::Legacy => (suite.thoth().options().legacy_window_secs * SAMPLE_RATE as f64) as usize,
    }
}

/// `results` results' worth of constant-level audio, and what the dev thoth
/// answers for it, in order.
pub fn audio_for(suite: &Suite, results: usize) -> (Vec<u8>, Vec<String>) {
    let per_result = samples_per_result(suite);
    let audio = f32_audio(LEVEL, (results * per_result) as f64 / SAMPLE_RATE as f64);
    let window = vec![LEVEL; per_result];
    let texts = (0..results as u64)
        .map(|i| describe_audio(i, &window))
        .collect();
    (audio, texts)
}

/// Sends audio as the chronus frontends do: binary frames of 4096 samples.
pub async fn send_frames(client: &mut WsClient, audio: &[u8]) {
    for frame in audio.chunks(FRAME_BYTES) {
        client.send_binary(frame.to_vec()).await;
    }
}

/// Reads until `count` `transcription`s arrived; returns every message read.
pub async fn until_transcriptions(client: &mut WsClient, count: usize) -> Vec<Value> {
    let mut messages = Vec::new();
    while messages
        .iter()
        .filter(|m: &&Value| m["type"] == "transcription")
        .count()
        < count
    {
        match client.recv(PATIENCE).await {
            Received::Json(message) => messages.push(message),
            Received::Closed(code) => panic!("closed ({code:?}) after {messages:?}"),
        }
    }
    messages
}

pub fn transcription_texts(messages: &[Value]) -> Vec<String> {
    messages
        .iter()
        .filter(|m| m["type"] == "transcription")
        .map(|m| m["text"].as_str().expect("a transcription has text").into())
        .collect()
}
