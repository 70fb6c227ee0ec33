//! chronus's own gateway test suite, run against this gateway.
//!
//! chronus's `TranscribeAudioGateway` has a spec file that checks exactly the
//! behaviours REAL-PEERS.md 2b lists; the later chronus frontend relies on
//! them. Each is restated here as an integration test on the notes path
//! `/api/notes/transcribe-audio` (PROTOCOL.md 2.7): real sockets, chronus-style
//! tokens (HS256, `{"username","sub":<integer>,"iat","exp"}`, one minute), a
//! real HTTP server as the notes backend (`NOTE_ACCESS_URL`),
//! `MAX_SESSIONS_PER_USER=1`, and the dev thoth as the upstream — every test
//! once with `THOTH_PROTOCOL=legacy` (today's thoth) and once with `mux`
//! (`<test>::legacy`, `<test>::mux`).
//!
//! One difference is by design: chronus's "thoth drops the stream" is a
//! one-socket-per-session thoth closing it. In legacy mode that is the dev
//! thoth dropping the connection; in mux mode a dropped shared socket is
//! resumed (PROTOCOL.md 3.1), so there thoth goes away for good.

#[path = "../common/mod.rs"]
mod common;
mod notes_backend;
mod suite;

use chronus_gateway::devthoth::DevThoth;
use common::*;
use serde_json::json;
use suite::*;

/// Runs a test body once per thoth mode, as `<name>::legacy` and `<name>::mux`.
macro_rules! in_both_modes {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[actix_rt::test]
            async fn legacy() {
                super::$name(super::Mode::Legacy).await
            }
            #[actix_rt::test]
            async fn mux() {
                super::$name(super::Mode::Mux).await
            }
        }
    )*};
}

// ---- rejections ---------------------------------------------------------

in_both_modes!(
    closes_4401_when_no_token_is_offered,
    closes_4401_for_an_invalid_or_expired_token,
    closes_4404_when_note_id_is_missing,
    closes_4404_when_note_id_is_not_an_integer,
    closes_4403_for_a_note_the_user_does_not_own,
    closes_4404_for_a_note_the_notes_backend_does_not_know,
    closes_4409_for_a_second_concurrent_session_of_the_same_user,
    never_opens_an_upstream_socket_for_a_rejected_connection,
);

async fn closes_4401_when_no_token_is_offered(mode: Mode) {
    let suite = Suite::start(mode).await;
    let query = format!("?noteId={OWNED_NOTE_ID}");
    suite
        .refused(&query, Auth::None, "UNAUTHORIZED", 4401)
        .await;
    suite.stop().await;
}

async fn closes_4401_for_an_invalid_or_expired_token(mode: Mode) {
    let suite = Suite::start(mode).await;
    let query = format!("?noteId={OWNED_NOTE_ID}");
    let expired = token_with(json!({
        "username": "ada", "sub": OWNER_ID, "iat": now() - 120, "exp": now() - 60,
    }));
    let forged = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"username": "ada", "sub": OWNER_ID, "iat": now(), "exp": now() + 60}),
        &jsonwebtoken::EncodingKey::from_secret(b"not-the-chronus-jwt-secret"),
    )
    .unwrap();
    for token in ["expired.token", expired.as_str(), forged.as_str()] {
        let auth = Auth::Subprotocol(token);
        suite.refused(&query, auth, "UNAUTHORIZED", 4401).await;
    }
    assert!(
        suite.notes.requests().is_empty(),
        "no note check without a valid token"
    );
    suite.stop().await;
}

async fn closes_4404_when_note_id_is_missing(mode: Mode) {
    let suite = Suite::start(mode).await;
    let token = chronus_token(OWNER_ID);
    let auth = Auth::Subprotocol(&token);
    suite.refused("", auth, "NOTE_NOT_FOUND", 4404).await;
    suite.stop().await;
}

async fn closes_4404_when_note_id_is_not_an_integer(mode: Mode) {
    let suite = Suite::start(mode).await;
    let token = chronus_token(OWNER_ID);
    for note_id in ["abc", "12abc", "1.5", ""] {
        let query = format!("?noteId={note_id}");
        let auth = Auth::Subprotocol(&token);
        suite.refused(&query, auth, "NOTE_NOT_FOUND", 4404).await;
    }
    assert!(
        suite.notes.requests().is_empty(),
        "a malformed noteId is never looked up"
    );
    suite.stop().await;
}

async fn closes_4403_for_a_note_the_user_does_not_own(mode: Mode) {
    let suite = Suite::start(mode).await;
    let token = chronus_token(OWNER_ID);
    let query = format!("?noteId={OTHERS_NOTE_ID}");
    suite
        .refused(&query, Auth::Subprotocol(&token), "FORBIDDEN", 4403)
        .await;
    let requests = suite.notes.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert_eq!(requests[0].path, format!("/api/notes/{OTHERS_NOTE_ID}"));
    assert_eq!(
        requests[0].authorization.as_deref(),
        Some(format!("Bearer {token}").as_str()),
        "the note is checked with the user's own token"
    );
    suite.stop().await;
}

async fn closes_4404_for_a_note_the_notes_backend_does_not_know(mode: Mode) {
    let suite = Suite::start(mode).await;
    let token = chronus_token(OWNER_ID);
    let query = format!("?noteId={MISSING_NOTE_ID}");
    suite
        .refused(&query, Auth::Subprotocol(&token), "NOTE_NOT_FOUND", 4404)
        .await;
    suite.stop().await;
}

async fn closes_4409_for_a_second_concurrent_session_of_the_same_user(mode: Mode) {
    let suite = Suite::start(mode).await;
    let mut first = suite.open(OWNED_NOTE_ID, OWNER_ID).await;
    let token = chronus_token(OWNER_ID);
    let query = format!("?noteId={OWNED_NOTE_ID}");
    suite
        .refused(&query, Auth::Subprotocol(&token), "TOO_MANY_SESSIONS", 4409)
        .await;
    assert_eq!(
        suite.thoth_connections(),
        1,
        "only the first session went upstream"
    );

    // The first session is untouched: nothing arrived, and it still transcribes.
    assert!(first.drain_for(QUIET_PERIOD).await.is_empty());
    let (audio, expected) = audio_for(&suite, 1);
    send_frames(&mut first, &audio).await;
    let messages = until_transcriptions(&mut first, 1).await;
    assert_eq!(transcription_texts(&messages), expected);

    // Another user is not affected by user 7's cap.
    first.close().await;
    suite.assert_released().await;
    let mut other = suite.open(OTHERS_NOTE_ID, OTHER_USER_ID).await;
    other.close().await;
    suite.stop().await;
}

async fn never_opens_an_upstream_socket_for_a_rejected_connection(mode: Mode) {
    let suite = Suite::start(mode).await;
    let token = chronus_token(OWNER_ID);
    let owned = format!("?noteId={OWNED_NOTE_ID}");
    let others = format!("?noteId={OTHERS_NOTE_ID}");
    let missing = format!("?noteId={MISSING_NOTE_ID}");
    let good = || Auth::Subprotocol(&token);
    suite
        .refused(&owned, Auth::None, "UNAUTHORIZED", 4401)
        .await;
    suite
        .refused(&owned, Auth::Subprotocol("bad.token"), "UNAUTHORIZED", 4401)
        .await;
    suite.refused("", good(), "NOTE_NOT_FOUND", 4404).await;
    suite
        .refused("?noteId=abc", good(), "NOTE_NOT_FOUND", 4404)
        .await;
    suite.refused(&others, good(), "FORBIDDEN", 4403).await;
    suite
        .refused(&missing, good(), "NOTE_NOT_FOUND", 4404)
        .await;

    tokio::time::sleep(QUIET_PERIOD).await;
    assert_eq!(
        suite.thoth_connections(),
        0,
        "no upstream socket was opened"
    );
    let report = pool_report(&suite.gateway).await;
    assert_eq!(report["thoth"][0]["refCount"], 0, "{report}");
    suite.assert_released().await;
    suite.stop().await;
}

// ---- streaming ----------------------------------------------------------

in_both_modes!(
    relays_audio_upstream_and_transcriptions_downstream,
    does_not_relay_text_frames_upstream,
    closes_1011_when_thoth_drops_the_stream,
    closes_4408_once_the_maximum_session_length_is_reached,
);

async fn relays_audio_upstream_and_transcriptions_downstream(mode: Mode) {
    let suite = Suite::start(mode).await;
    let mut client = suite.open(OWNED_NOTE_ID, OWNER_ID).await;
    let (audio, expected) = audio_for(&suite, 2);
    send_frames(&mut client, &audio).await;
    let messages = until_transcriptions(&mut client, expected.len()).await;
    // The dev thoth's text is a checksum of the audio it got: the audio
    // arrived unchanged, in order, and each result came back once.
    assert_eq!(transcription_texts(&messages), expected);
    assert_eq!(
        suite.thoth().stats().audio_bytes_received(),
        audio.len() as u64
    );
    client.close().await;
    suite.stop().await;
}

async fn does_not_relay_text_frames_upstream(mode: Mode) {
    let suite = Suite::start(mode).await;
    let mut client = suite.open(OWNED_NOTE_ID, OWNER_ID).await;
    client.send_json(json!({"type": "stop"})).await;
    client.send_text("hello thoth").await;
    let said = client.drain_for(QUIET_PERIOD).await;
    let stats = suite.thoth().stats();
    assert_eq!(stats.audio_bytes_received(), 0, "nothing reached thoth");
    assert_eq!(stats.errors_sent(), 0, "thoth was sent nothing it rejects");
    assert!(
        said.iter().all(|m| m["type"] != "transcription"),
        "{said:?}"
    );

    // The session goes on, and thoth's stream with it.
    let (audio, expected) = audio_for(&suite, 1);
    send_frames(&mut client, &audio).await;
    let messages = until_transcriptions(&mut client, 1).await;
    assert_eq!(transcription_texts(&messages), expected);
    assert_eq!(stats.audio_bytes_received(), audio.len() as u64);
    client.close().await;
    suite.stop().await;
}

async fn closes_1011_when_thoth_drops_the_stream(mode: Mode) {
    let mut suite = Suite::start(mode).await;
    let mut client = suite.open(OWNED_NOTE_ID, OWNER_ID).await;
    let thoth_addr = suite.thoth().addr();
    match mode {
        Mode::Legacy => suite.thoth().drop_all_connections(),
        Mode::Mux => suite.thoth.take().unwrap().stop(),
    }
    let (messages, close) = client.until_close(PATIENCE).await;
    assert_eq!(close, Some(1011), "{messages:?}");
    let last = messages.last().expect("an error before the close");
    assert_eq!(last["type"], "error", "{messages:?}");

    // The claim is released: once thoth is back, the user records again.
    if suite.thoth.is_none() {
        suite.thoth = Some(DevThoth::start(thoth_options(mode, &thoth_addr.to_string())).unwrap());
    }
    suite.assert_released().await;
    suite.assert_user_can_reconnect().await;
    suite.stop().await;
}

async fn closes_4408_once_the_maximum_session_length_is_reached(mode: Mode) {
    let suite = Suite::start_with(mode, &[("MAX_SESSION_SECS", "2")]).await;
    let mut client = suite.open(OWNED_NOTE_ID, OWNER_ID).await;
    let (messages, close) = client.until_close(PATIENCE).await;
    assert_eq!(close, Some(4408), "{messages:?}");
    let last = messages.last().expect("an error before the close");
    assert_eq!(last["type"], "error");
    assert_eq!(last["code"], "SESSION_EXPIRED");

    // Everything is released when the cap fires.
    suite.assert_released().await;
    suite.assert_user_can_reconnect().await;
    suite.stop().await;
}

// ---- resource release ---------------------------------------------------

in_both_modes!(
    releases_everything_when_the_client_closes_cleanly,
    releases_everything_when_the_client_vanishes_abruptly,
    sends_ready_then_transcriptions_with_text_and_performs_no_note_writes,
);

async fn releases_everything_when_the_client_closes_cleanly(mode: Mode) {
    let suite = Suite::start(mode).await;
    let mut client = suite.open(OWNED_NOTE_ID, OWNER_ID).await;
    assert_eq!(ref_count(&suite.gateway).await, 1);
    send_frames(&mut client, &f32_audio(LEVEL, 0.5)).await;
    client.close().await;
    suite.assert_released().await;
    suite.assert_user_can_reconnect().await;
    suite.stop().await;
}

async fn releases_everything_when_the_client_vanishes_abruptly(mode: Mode) {
    let suite = Suite::start(mode).await;
    let mut client = suite.open(OWNED_NOTE_ID, OWNER_ID).await;
    assert_eq!(ref_count(&suite.gateway).await, 1);
    send_frames(&mut client, &f32_audio(LEVEL, 0.5)).await;
    // Dropping the socket ends the TCP connection without a close frame.
    drop(client);
    suite.assert_released().await;
    suite.assert_user_can_reconnect().await;
    suite.stop().await;
}

async fn sends_ready_then_transcriptions_with_text_and_performs_no_note_writes(mode: Mode) {
    let suite = Suite::start(mode).await;
    let token = chronus_token(OWNER_ID);
    let connected = connect(
        &suite.url(&format!("?noteId={OWNED_NOTE_ID}")),
        Auth::Subprotocol(&token),
        None,
    )
    .await;
    let mut client = connected.client;
    let (audio, expected) = audio_for(&suite, 3);
    // Like the later frontend: audio only after `ready`.
    let ready = client.json().await;
    assert_eq!(ready["type"], "ready", "{ready}");
    assert!(ready["sessionId"].is_string(), "{ready}");
    send_frames(&mut client, &audio).await;
    let mut messages = vec![ready];
    messages.extend(until_transcriptions(&mut client, expected.len()).await);
    messages.extend(client.drain_for(QUIET_PERIOD).await);
    client.close().await;

    // `ready`, then transcriptions; `transcription.partial` (mux interim
    // results, which chronus's frontend ignores as an unknown type) aside,
    // nothing else: no error, no notice.
    let types: Vec<&str> = messages
        .iter()
        .map(|m| m["type"].as_str().unwrap())
        .filter(|t| *t != "transcription.partial")
        .collect();
    let mut expected_types = vec!["ready"];
    expected_types.extend(std::iter::repeat_n("transcription", expected.len()));
    assert_eq!(types, expected_types, "{messages:?}");
    for message in messages.iter().filter(|m| m["type"] == "transcription") {
        assert_eq!(message["text"], message["data"], "{message}");
        assert!(message["timestamp"].is_string(), "{message}");
    }
    assert_eq!(transcription_texts(&messages), expected);

    // The note was only looked at, once: the editor owns the text.
    let requests = suite.notes.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert!(
        ["GET", "HEAD"].contains(&requests[0].method.as_str()),
        "{requests:?}"
    );
    suite.stop().await;
}
