//! No text lost over Mistral, and pauses survived (issue 11 items 1–2,
//! PROTOCOL.md 4): a real gateway on 127.0.0.1:0 against the fake Mistral
//! (`fake_mistral`), each test naming the fake's mode. Every test compares
//! what the browser received (finals, `done.data`) with what the fake said
//! (its `transcription.done` text, its segments).

mod common;
mod fake_mistral;

use std::collections::HashMap;
use std::time::Duration;

use chronus_gateway::RunningGateway;
use common::*;
use fake_mistral::*;
use serde_json::{json, Value};

/// A Mistral key as the tests store it.
const KEY: &str = "mk-TESTKEY-text-0b1e6a2c";
/// 16 kHz f32: bytes per second of audio.
const BYTES_PER_SEC: usize = 64_000;

fn env_for(fake: &FakeMistral) -> HashMap<String, String> {
    let mut env = base_env("ws://127.0.0.1:9/stream-audio");
    env.insert("MISTRAL_WS_URL".into(), fake.url());
    env
}

async fn gateway_with_key(fake: &FakeMistral, user: &str) -> RunningGateway {
    let gateway = start_gateway(&env_for(fake)).await;
    let reply = awc::Client::new()
        .put(format!(
            "http://{}/api/settings/api-keys/mistral",
            gateway.public_addr
        ))
        .bearer_auth(token_for(user))
        .insert_header(("content-type", "application/json"))
        .send_body(json!({"apiKey": KEY}).to_string())
        .await
        .expect("PUT key");
    assert_eq!(reply.status().as_u16(), 204);
    gateway
}

/// A chronus Mistral session, `ready`.
async fn ready_session(gateway: &RunningGateway, user: &str) -> WsClient {
    let url = ws_url(gateway, "/api/audio/transcribe?provider=mistral");
    let mut client = connect(&url, Auth::Query(&token_for(user)), None)
        .await
        .client;
    client.expect_type("ready").await;
    client
}

/// Sends `seconds` of 16 kHz f32 audio in 20 ms frames.
async fn send_audio(client: &mut WsClient, seconds: f64) {
    for frame in f32_audio(0.25, seconds).chunks(1280) {
        client.send_binary(frame.to_vec()).await;
    }
}

fn of_type<'a>(messages: &'a [Value], ty: &str) -> Vec<&'a Value> {
    messages.iter().filter(|m| m["type"] == ty).collect()
}

fn texts(messages: &[&Value]) -> Vec<String> {
    messages
        .iter()
        .map(|m| m["data"].as_str().unwrap().to_owned())
        .collect()
}

/// The `text` of the `transcription.done` connection `id` of the fake sent.
fn fake_done_text(fake: &FakeMistral, id: usize) -> String {
    let sent = fake.connections()[id].sent_json();
    let done = sent
        .iter()
        .find(|e| e["type"] == "transcription.done")
        .unwrap_or_else(|| panic!("the fake sent no done: {sent:?}"));
    done["text"].as_str().unwrap().to_owned()
}

/// Streams 1.25 s (two full 0.5 s utterances and a quarter second), sends
/// `end`, and returns what the browser received until the close.
async fn one_and_a_quarter_seconds_then_end(fake: &FakeMistral) -> (Vec<Value>, Option<u16>) {
    let gateway = gateway_with_key(fake, "alice").await;
    let mut client = ready_session(&gateway, "alice").await;
    send_audio(&mut client, 1.25).await;
    client.send_json(json!({"type": "end"})).await;
    let received = client.until_close(Duration::from_secs(10)).await;
    gateway.stop().await;
    received
}

const UTTERANCES: [usize; 3] = [32_000, 32_000, 16_000];

#[actix_rt::test]
async fn deltas_then_done_mode_the_whole_text_arrives_as_a_final_and_in_done() {
    // Mode "deltas + done only": no segment at all.
    let fake = FakeMistral::start(FakeMistralOptions::new(KEY, Mode::DeltasThenDone));
    let (messages, close) = one_and_a_quarter_seconds_then_end(&fake).await;
    let said = fake_done_text(&fake, 0);
    assert_eq!(said, full_text(&UTTERANCES));
    let finals = of_type(&messages, "transcription");
    assert_eq!(texts(&finals), vec![said.clone()], "{messages:?}");
    let done = messages.last().unwrap();
    assert_eq!(done["type"], "done");
    assert_eq!(done["data"], said, "done.data is Mistral's done.text");
    assert_eq!(close, Some(1000));
}

#[actix_rt::test]
async fn segments_mode_every_segment_is_a_final_and_done_is_mistrals_text() {
    // Mode "segments": the short last utterance is a segment too.
    let fake = FakeMistral::start(FakeMistralOptions::new(KEY, Mode::Segments));
    let (messages, close) = one_and_a_quarter_seconds_then_end(&fake).await;
    let said = fake_done_text(&fake, 0);
    let finals = of_type(&messages, "transcription");
    let expected: Vec<String> = UTTERANCES
        .iter()
        .enumerate()
        .map(|(i, bytes)| segment_text(i, *bytes))
        .collect();
    assert_eq!(texts(&finals), expected, "nothing repeated, nothing lost");
    assert_eq!(messages.last().unwrap()["data"], said);
    assert_eq!(close, Some(1000));
}

#[actix_rt::test]
async fn trailing_deltas_mode_the_text_after_the_last_segment_is_a_final_before_done() {
    // Mode "trailing deltas after the last segment".
    let fake = FakeMistral::start(FakeMistralOptions::new(KEY, Mode::TrailingDeltas));
    let (messages, close) = one_and_a_quarter_seconds_then_end(&fake).await;
    let said = fake_done_text(&fake, 0);
    let finals = of_type(&messages, "transcription");
    assert_eq!(
        texts(&finals),
        [
            segment_text(0, 32_000),
            segment_text(1, 32_000),
            segment_text(2, 16_000)
        ]
    );
    // The trailing final starts where the last segment ended.
    assert_eq!(finals[2]["start"].as_f64(), Some(1.0));
    let done = messages.last().unwrap();
    assert_eq!(done["type"], "done");
    assert_eq!(done["data"], said);
    assert_eq!(close, Some(1000));
}

/// A fake whose sessions end with 3804 after `idle` without audio.
fn idle_timing_fake(mode: Mode, idle: Duration) -> FakeMistral {
    let mut options = FakeMistralOptions::new(KEY, mode);
    options.idle_timeout = Some(idle);
    FakeMistral::start(options)
}

/// Waits until the fake's connection `id` timed out (sent 3804).
async fn wait_timed_out(fake: &FakeMistral, id: usize) {
    assert!(
        eventually(Duration::from_secs(5), || async {
            fake.connections().get(id).is_some_and(|c| c.timed_out)
        })
        .await,
        "the fake never timed connection {id} out"
    );
}

#[actix_rt::test]
async fn idle_timeout_mode_a_pause_is_survived_and_timestamps_continue() {
    // Mode "segments" with "3804 after 1 s of no audio".
    let fake = idle_timing_fake(Mode::Segments, Duration::from_secs(1));
    let gateway = gateway_with_key(&fake, "pauser").await;
    let mut client = ready_session(&gateway, "pauser").await;
    send_audio(&mut client, 1.25).await;
    wait_timed_out(&fake, 0).await;
    // The text Mistral gave before ending its session (deltas only) arrives
    // as a final, and no error.
    let before_pause = client.drain_for(Duration::from_millis(500)).await;
    assert!(
        of_type(&before_pause, "error").is_empty(),
        "{before_pause:?}"
    );
    assert_eq!(
        texts(&of_type(&before_pause, "transcription")),
        [
            segment_text(0, 32_000),
            segment_text(1, 32_000),
            segment_text(2, 16_000)
        ]
    );
    assert_eq!(fake.connections().len(), 1, "no fresh session before audio");

    // Speaking again opens a fresh Mistral session; its times continue.
    send_audio(&mut client, 1.0).await;
    client.send_json(json!({"type": "end"})).await;
    let (after_pause, close) = client.until_close(Duration::from_secs(10)).await;
    assert!(of_type(&after_pause, "error").is_empty(), "{after_pause:?}");
    let finals = of_type(&after_pause, "transcription");
    assert_eq!(
        texts(&finals),
        [segment_text(0, 32_000), segment_text(1, 32_000)]
    );
    let bounds: Vec<(f64, f64)> = finals
        .iter()
        .map(|f| (f["start"].as_f64().unwrap(), f["end"].as_f64().unwrap()))
        .collect();
    assert_eq!(bounds, [(1.25, 1.75), (1.75, 2.25)]);
    let done = after_pause.last().unwrap();
    assert_eq!(
        done["data"],
        format!("{} {}", full_text(&UTTERANCES), fake_done_text(&fake, 1))
    );
    assert_eq!(close, Some(1000));

    let second = fake.wait_ended(1).await;
    assert_eq!(second.types()[0], "session.update");
    assert_eq!(second.appends().concat().len(), BYTES_PER_SEC);
    gateway.stop().await;
}

#[actix_rt::test]
async fn idle_timeout_mode_nothing_is_lost_in_deltas_only_sessions_across_a_pause() {
    // Mode "deltas + done only" with "3804 after 1 s of no audio".
    let fake = idle_timing_fake(Mode::DeltasThenDone, Duration::from_secs(1));
    let gateway = gateway_with_key(&fake, "quiet").await;
    let mut client = ready_session(&gateway, "quiet").await;
    send_audio(&mut client, 0.75).await;
    wait_timed_out(&fake, 0).await;
    // Mistral said this before giving up on the session: all as deltas.
    let before_pause = full_text(&[32_000, 16_000]);
    send_audio(&mut client, 0.5).await;
    client.send_json(json!({"type": "end"})).await;
    let (messages, close) = client.until_close(Duration::from_secs(10)).await;
    assert!(of_type(&messages, "error").is_empty(), "{messages:?}");
    let after_pause = fake_done_text(&fake, 1);
    assert_eq!(
        texts(&of_type(&messages, "transcription")),
        [before_pause.clone(), after_pause.clone()]
    );
    assert_eq!(
        messages.last().unwrap()["data"],
        format!("{before_pause} {after_pause}")
    );
    assert_eq!(close, Some(1000));
    gateway.stop().await;
}

#[actix_rt::test]
async fn idle_timeout_mode_end_during_a_pause_is_done_without_a_fresh_session() {
    // Mode "segments" with "3804 after 1 s of no audio".
    let fake = idle_timing_fake(Mode::Segments, Duration::from_secs(1));
    let gateway = gateway_with_key(&fake, "stopper").await;
    let mut client = ready_session(&gateway, "stopper").await;
    send_audio(&mut client, 0.5).await;
    wait_timed_out(&fake, 0).await;
    client.send_json(json!({"type": "end"})).await;
    let (messages, close) = client.until_close(Duration::from_secs(10)).await;
    assert!(of_type(&messages, "error").is_empty(), "{messages:?}");
    let done = messages.last().unwrap();
    assert_eq!(done["type"], "done");
    assert_eq!(done["data"], segment_text(0, 32_000));
    assert_eq!(close, Some(1000));
    assert_eq!(fake.connections().len(), 1);
    gateway.stop().await;
}

#[actix_rt::test]
async fn segments_mode_an_error_other_than_3804_still_ends_the_session_with_mistral_error() {
    // Mode "segments", answering the first audio with error 3001.
    let mut options = FakeMistralOptions::new(KEY, Mode::Segments);
    options.error_code = Some(3001);
    let fake = FakeMistral::start(options);
    let gateway = gateway_with_key(&fake, "unlucky").await;
    let mut client = ready_session(&gateway, "unlucky").await;
    send_audio(&mut client, 0.1).await;
    let (messages, close) = client.until_close(Duration::from_secs(10)).await;
    let error = messages.last().unwrap();
    assert_eq!(error["code"], "MISTRAL_ERROR");
    assert_eq!(error["upstreamCode"], 3001);
    assert_eq!(close, Some(1011));
    assert_eq!(
        fake.connections().len(),
        1,
        "no reconnect after a real error"
    );
    gateway.stop().await;
}

#[actix_rt::test]
async fn idle_timeout_mode_end_right_after_new_audio_waits_for_the_fresh_session() {
    // Mode "segments" with "3804 after 1 s of no audio": the audio after the
    // pause and `end` both arrive while the fresh Mistral session opens.
    let fake = idle_timing_fake(Mode::Segments, Duration::from_secs(1));
    let gateway = gateway_with_key(&fake, "hurried").await;
    let mut client = ready_session(&gateway, "hurried").await;
    send_audio(&mut client, 0.5).await;
    wait_timed_out(&fake, 0).await;
    send_audio(&mut client, 0.5).await;
    client.send_json(json!({"type": "end"})).await;
    let (messages, close) = client.until_close(Duration::from_secs(10)).await;
    assert!(of_type(&messages, "error").is_empty(), "{messages:?}");
    let finals = of_type(&messages, "transcription");
    assert_eq!(
        texts(&finals),
        [segment_text(0, 32_000), segment_text(0, 32_000)]
    );
    assert_eq!(finals[1]["start"].as_f64(), Some(0.5));
    assert_eq!(
        messages.last().unwrap()["data"],
        format!("{} {}", segment_text(0, 32_000), fake_done_text(&fake, 1))
    );
    assert_eq!(close, Some(1000));
    let second = fake.wait_ended(1).await;
    let types = second.types();
    assert_eq!(
        types[types.len() - 2..],
        ["input_audio.flush", "input_audio.end"]
    );
    gateway.stop().await;
}
