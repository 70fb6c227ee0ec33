//! A browser session that streams audio while it collects what comes back,
//! and audio whose every result the dev thoth describes in advance (the
//! fault scenarios check exact finals with these).
#![allow(dead_code)]

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use actix_codec::Framed;
use awc::ws::{self, Frame, Message};
use awc::BoxedSocket;
use bytes::Bytes;
use chronus_gateway::devthoth::describe_audio;
use chronus_gateway::RunningGateway;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::time::{sleep_until, timeout, Instant};

use crate::common::{token_for, ws_url};

pub const TRANSCRIBE: &str = "/api/audio/transcribe";
/// The gateway's default sample rate (what browsers send).
pub const SAMPLE_RATE: usize = 16_000;
/// No session in this suite may take longer than this to end.
pub const SESSION_DEADLINE: Duration = Duration::from_secs(60);

// ---- audio whose every result is known --------------------------------------

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Encoding {
    F32le,
    S16le,
}

/// One session's audio: the bytes the browser sends and the samples the dev
/// thoth decodes from them.
pub struct TestAudio {
    pub encoding: Encoding,
    pub sample_rate: usize,
    pub bytes: Vec<u8>,
    pub samples: Vec<f32>,
}

/// A final result as the browser must see it.
#[derive(Debug, Clone, PartialEq)]
pub struct ExpectedFinal {
    pub text: String,
    pub start: f64,
    pub end: f64,
}

impl TestAudio {
    /// `seconds` of audio no other session has: a sawtooth whose level and
    /// period depend on `session`.
    pub fn for_session(session: usize, seconds: f64, encoding: Encoding) -> TestAudio {
        Self::at_rate(session, seconds, encoding, SAMPLE_RATE)
    }

    /// The same at `sample_rate` Hz.
    pub fn at_rate(
        session: usize,
        seconds: f64,
        encoding: Encoding,
        sample_rate: usize,
    ) -> TestAudio {
        let count = (sample_rate as f64 * seconds).round() as usize;
        let level = 0.05 + (session % 97) as f32 / 110.0;
        let period = 40 + (session * 7) % 200;
        let wave = move |k: usize| level * ((k % period) as f32 / period as f32 - 0.5);
        match encoding {
            Encoding::F32le => {
                let samples: Vec<f32> = (0..count).map(wave).collect();
                let bytes = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
                TestAudio {
                    encoding,
                    sample_rate,
                    bytes,
                    samples,
                }
            }
            Encoding::S16le => {
                let ints: Vec<i16> = (0..count).map(|k| (wave(k) * 32767.0) as i16).collect();
                TestAudio {
                    encoding,
                    sample_rate,
                    bytes: ints.iter().flat_map(|s| s.to_le_bytes()).collect(),
                    samples: ints.iter().map(|&s| f32::from(s) / 32768.0).collect(),
                }
            }
        }
    }

    pub fn bytes_per_sample(&self) -> usize {
        match self.encoding {
            Encoding::F32le => 4,
            Encoding::S16le => 2,
        }
    }

    /// The query string selecting this audio's encoding and rate.
    pub fn query(&self) -> String {
        let encoding = match self.encoding {
            Encoding::F32le => "f32le",
            Encoding::S16le => "s16le",
        };
        format!("?encoding={encoding}&sampleRate={}", self.sample_rate)
    }

    /// The audio cut into frames of `millis` ms, as a browser sends it.
    pub fn frames(&self, millis: usize) -> Vec<Bytes> {
        let frame_bytes = self.sample_rate * millis / 1000 * self.bytes_per_sample();
        self.bytes
            .chunks(frame_bytes)
            .map(Bytes::copy_from_slice)
            .collect()
    }

    /// What the dev thoth answers for this audio: one final per second (the
    /// last one shorter when the audio does not end on a whole second).
    pub fn expected_finals(&self) -> Vec<ExpectedFinal> {
        self.samples
            .chunks(self.sample_rate)
            .enumerate()
            .map(|(index, second)| ExpectedFinal {
                text: describe_audio(index as u64, second),
                start: index as f64,
                end: index as f64 + second.len() as f64 / self.sample_rate as f64,
            })
            .collect()
    }
}

// ---- a browser session that sends and receives at the same time --------------

pub type WsSink = SplitSink<Framed<BoxedSocket, ws::Codec>, Message>;

/// Everything a session received, each message with the moment it arrived.
pub struct Transcript {
    pub events: Vec<(Instant, Value)>,
    pub close: Option<u16>,
}

impl Transcript {
    pub fn messages(&self) -> impl Iterator<Item = &Value> {
        self.events.iter().map(|(_, m)| m)
    }

    pub fn finals(&self) -> Vec<&Value> {
        self.messages()
            .filter(|m| m["type"] == "transcription")
            .collect()
    }

    pub fn error_codes(&self) -> Vec<String> {
        self.messages()
            .filter(|m| m["type"] == "error")
            .map(|m| m["code"].as_str().unwrap_or("?").to_string())
            .collect()
    }

    /// The codes of the `status` notices (PROTOCOL.md 2.4), in order.
    pub fn status_codes(&self) -> Vec<String> {
        self.messages()
            .filter(|m| m["type"] == "status")
            .map(|m| m["code"].as_str().unwrap_or("?").to_string())
            .collect()
    }

    /// Index of the first `status` notice of `code`.
    pub fn position_of_status(&self, code: &str) -> Option<usize> {
        self.events
            .iter()
            .position(|(_, m)| m["type"] == "status" && m["code"] == code)
    }

    /// The finals are exactly `expected`, each once, in order, with their
    /// `start`/`end`.
    pub fn assert_finals(&self, expected: &[ExpectedFinal], label: &str) {
        let got: Vec<ExpectedFinal> = self
            .finals()
            .iter()
            .map(|m| ExpectedFinal {
                text: m["data"].as_str().unwrap_or_default().to_string(),
                start: m["start"].as_f64().unwrap_or(f64::NAN),
                end: m["end"].as_f64().unwrap_or(f64::NAN),
            })
            .collect();
        assert_eq!(got, expected, "{label}: final results");
    }

    /// Exact finals, then `done` with their texts, then close 1000.
    pub fn assert_complete(&self, expected: &[ExpectedFinal], label: &str) {
        self.assert_finals(expected, label);
        let done = &self.events.last().expect("some messages").1;
        assert_eq!(done["type"], "done", "{label}: last message {done}");
        let joined: Vec<&str> = expected.iter().map(|f| f.text.as_str()).collect();
        assert_eq!(done["data"], joined.join(" "), "{label}: done text");
        assert_eq!(self.close, Some(1000), "{label}: close code");
    }
}

/// A browser session: audio goes out through `sink` while a task collects
/// what comes back.
pub struct LiveSession {
    pub session_id: String,
    sink: WsSink,
    pub received: tokio::task::JoinHandle<Transcript>,
    /// Finals received so far (shared with the collecting task).
    finals_seen: Rc<Cell<usize>>,
}

impl LiveSession {
    /// Connects as `user`, waits for `ready`, then starts collecting.
    pub async fn open(gateway: &RunningGateway, user: &str, query: &str) -> LiveSession {
        Self::open_with_token(gateway, &token_for(user), query).await
    }

    pub async fn open_with_token(
        gateway: &RunningGateway,
        token: &str,
        query: &str,
    ) -> LiveSession {
        let url = ws_url(gateway, &format!("{TRANSCRIBE}{query}"));
        let client = awc::Client::builder()
            .timeout(Duration::from_secs(10))
            .finish();
        let (_, framed) = client
            .ws(url.as_str())
            .bearer_auth(token)
            .max_frame_size(4 * 1024 * 1024)
            .connect()
            .await
            .unwrap_or_else(|e| panic!("websocket handshake to {url}: {e}"));
        let (sink, mut stream) = framed.split();
        let ready = match next_message(&mut stream, Instant::now() + SESSION_DEADLINE).await {
            Some(Ok(ready)) => ready,
            other => panic!("expected ready, got {other:?}"),
        };
        assert_eq!(ready["type"], "ready", "{ready}");
        let session_id = ready["sessionId"].as_str().unwrap().to_string();
        let finals_seen = Rc::new(Cell::new(0));
        let received = actix_rt::spawn(collect_until_close(stream, finals_seen.clone()));
        LiveSession {
            session_id,
            sink,
            received,
            finals_seen,
        }
    }

    /// A handle on the number of finals received so far.
    pub fn finals_counter(&self) -> Rc<Cell<usize>> {
        self.finals_seen.clone()
    }

    pub async fn send_audio(&mut self, frame: Bytes) -> bool {
        self.sink.send(Message::Binary(frame)).await.is_ok()
    }

    pub async fn send_json(&mut self, value: Value) -> bool {
        self.sink
            .send(Message::Text(value.to_string().into()))
            .await
            .is_ok()
    }

    /// Sends `frames` paced at real time from `epoch` (frame `k` at
    /// `epoch + k × frame`), then `end`.
    pub async fn stream_in_real_time(&mut self, frames: &[Bytes], frame: Duration, epoch: Instant) {
        for (k, audio) in frames.iter().enumerate() {
            sleep_until(epoch + frame * k as u32).await;
            assert!(self.send_audio(audio.clone()).await, "audio frame {k} sent");
        }
        assert!(self.send_json(json!({"type": "end"})).await, "end sent");
    }

    /// Sends `frames` paced at real time from `epoch` until the gateway stops
    /// taking them (it closed the session) or they run out; returns how many
    /// were sent. No `end`.
    pub async fn stream_until_refused(
        &mut self,
        frames: &[Bytes],
        frame: Duration,
        epoch: Instant,
    ) -> usize {
        for (k, audio) in frames.iter().enumerate() {
            sleep_until(epoch + frame * k as u32).await;
            if self.received.is_finished() || !self.send_audio(audio.clone()).await {
                return k;
            }
        }
        frames.len()
    }

    /// Waits for the server to close; everything received since `ready`.
    pub async fn finish(self) -> Transcript {
        let LiveSession { sink, received, .. } = self;
        let transcript = received.await.expect("collector task");
        drop(sink);
        transcript
    }
}

/// The next JSON message; `Err(close code)` when the socket closed.
pub async fn next_message(
    stream: &mut SplitStream<Framed<BoxedSocket, ws::Codec>>,
    deadline: Instant,
) -> Option<Result<Value, Option<u16>>> {
    loop {
        let frame = timeout(deadline - Instant::now(), stream.next())
            .await
            .ok()?;
        match frame {
            Some(Ok(Frame::Text(text))) => {
                return Some(Ok(serde_json::from_slice(&text).expect("server sends JSON")))
            }
            Some(Ok(Frame::Close(reason))) => return Some(Err(reason.map(|r| u16::from(r.code)))),
            Some(Ok(_)) => {}
            Some(Err(e)) => panic!("protocol error from the gateway: {e}"),
            None => return Some(Err(None)),
        }
    }
}

pub async fn collect_until_close(
    mut stream: SplitStream<Framed<BoxedSocket, ws::Codec>>,
    finals_seen: Rc<Cell<usize>>,
) -> Transcript {
    let deadline = Instant::now() + SESSION_DEADLINE;
    let mut events = Vec::new();
    loop {
        match next_message(&mut stream, deadline).await {
            Some(Ok(message)) => {
                if message["type"] == "transcription" {
                    finals_seen.set(finals_seen.get() + 1);
                }
                events.push((Instant::now(), message));
            }
            Some(Err(close)) => return Transcript { events, close },
            None => panic!("session not closed within {SESSION_DEADLINE:?}: {events:?}"),
        }
    }
}
