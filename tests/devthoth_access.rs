//! The dev thoth's handshake checks: Origin, token, paths.

#[path = "common/devthoth_client.rs"]
mod devthoth_client;

use awc::ws::{CloseCode, Message};
use chronus_gateway::devthoth::{describe_audio, DevThothOptions, MUX_SUBPROTOCOL, TOKEN_HEADER};
use futures_util::SinkExt;
use serde_json::json;
use uuid::Uuid;

use devthoth_client::*;

#[actix_rt::test]
async fn an_origin_gets_http_403_in_legacy_and_a_4403_close_in_mux() {
    let thoth = start_thoth(DevThothOptions::default());
    let origin = [("origin", "https://chronus.example")];
    assert_eq!(refused_legacy_status(&thoth, &origin).await, 403);
    let (_, mut mux) = connect_with(&thoth.url(), &[MUX_SUBPROTOCOL], &origin).await;
    assert_eq!(expect_close(&mut mux).await, 4403);
    assert_eq!(thoth.stats().connections_refused(), 2);
    assert_eq!(thoth.stats().mux_connections(), 0);
    assert_eq!(thoth.stats().legacy_streams(), 0);
}

#[actix_rt::test]
async fn an_allowed_origin_gets_a_legacy_stream_and_others_are_still_refused() {
    let thoth = start_thoth(DevThothOptions {
        allowed_origins: vec!["http://127.0.0.1:8080/".to_owned()],
        ..DevThothOptions::default()
    });
    thoth.allow_origins(["http://LOCALHOST:8080"]);

    let other = [("origin", "http://127.0.0.1:8081")];
    assert_eq!(refused_legacy_status(&thoth, &other).await, 403);

    for origin in ["http://127.0.0.1:8080", "http://localhost:8080"] {
        let (selected, mut browser) = connect_with(&thoth.url(), &[], &[("origin", origin)]).await;
        assert_eq!(selected, None, "a browser gets the legacy protocol");
        let window = square_wave(0.25, WINDOW);
        send_binary(&mut browser, f32le(&window)).await;
        assert_eq!(
            next_json(&mut browser).await,
            json!({"transcription": describe_audio(0, &window)})
        );
        browser
            .send(Message::Close(Some(CloseCode::Normal.into())))
            .await
            .expect("send close");
        assert_eq!(expect_close(&mut browser).await, 1000);
        eventually("the legacy stream is free again", || {
            thoth.stats().connections_open() == 0
        })
        .await;
    }
    assert_eq!(thoth.stats().connections_refused(), 1);
    assert_eq!(thoth.stats().legacy_streams(), 2);
}

#[actix_rt::test]
async fn a_missing_or_wrong_token_gets_http_403_in_legacy_and_a_4401_close_in_mux() {
    let thoth = start_thoth(DevThothOptions {
        stream_token: Some("s3cret".to_owned()),
        ..DevThothOptions::default()
    });
    let (_, mut missing) = connect_with(&thoth.url(), &[MUX_SUBPROTOCOL], &[]).await;
    assert_eq!(expect_close(&mut missing).await, 4401);
    let (_, mut wrong) =
        connect_with(&thoth.url(), &[MUX_SUBPROTOCOL], &[(TOKEN_HEADER, "guess")]).await;
    assert_eq!(expect_close(&mut wrong).await, 4401);
    assert_eq!(refused_legacy_status(&thoth, &[]).await, 403);
    assert_eq!(
        refused_legacy_status(&thoth, &[(TOKEN_HEADER, "guess")]).await,
        403
    );
    assert_eq!(thoth.stats().legacy_streams(), 0);

    let (selected, mut right) = connect_with(
        &thoth.url(),
        &[MUX_SUBPROTOCOL],
        &[(TOKEN_HEADER, "s3cret")],
    )
    .await;
    assert_eq!(selected.as_deref(), Some(MUX_SUBPROTOCOL));
    let session = Uuid::new_v4();
    send_json(
        &mut right,
        json!({"type": "session.end", "session_id": session.to_string()}),
    )
    .await;
    assert_eq!(next_json(&mut right).await["code"], "UNKNOWN_SESSION");

    let (selected, mut legacy) = connect_with(&thoth.url(), &[], &[(TOKEN_HEADER, "s3cret")]).await;
    assert_eq!(selected, None);
    send_binary(&mut legacy, f32le(&[0.25; WINDOW])).await;
    assert_eq!(
        next_json(&mut legacy).await,
        json!({"transcription": describe_audio(0, &[0.25; WINDOW])})
    );
}

#[actix_rt::test]
async fn other_paths_answer_404() {
    let thoth = start_thoth(DevThothOptions::default());
    let response = awc::Client::new()
        .get(format!("http://{}/", thoth.addr()))
        .send()
        .await
        .expect("http request");
    assert_eq!(response.status().as_u16(), 404);
    let response = awc::Client::new()
        .get(format!("http://{}/api/audio/transcribe", thoth.addr()))
        .send()
        .await
        .expect("http request");
    assert_eq!(response.status().as_u16(), 404);
}
