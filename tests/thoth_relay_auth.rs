//! The thoth relay, admission: every auth failure is refused before thoth is
//! touched, a token is read from every place a browser may put it, and bad
//! input gets its code without harming other sessions.

mod common;
#[path = "common/relay.rs"]
mod relay;

use std::time::Duration;

use chronus_gateway::devthoth::{DevThoth, DevThothOptions};
use common::*;
use relay::*;
use serde_json::{json, Value};

#[actix_rt::test]
async fn every_auth_failure_is_refused_before_thoth_is_touched() {
    let thoth = DevThoth::start(DevThothOptions::default()).unwrap();
    let mut env = base_env(&thoth.url());
    env.insert("JWT_ISSUER".into(), "chronus".into());
    env.insert("JWT_AUDIENCE".into(), "transcription".into());
    env.insert("ALLOWED_ORIGINS".into(), "https://app.chronus.test".into());
    let gateway = start_gateway(&env).await;
    let good = |extra: Value| {
        let mut claims =
            json!({"sub": "u", "exp": now() + 600, "iss": "chronus", "aud": "transcription"});
        for (k, v) in extra.as_object().unwrap() {
            claims[k] = v.clone();
        }
        claims
    };
    let other_secret = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &good(json!({})),
        &jsonwebtoken::EncodingKey::from_secret(b"another-secret-another-secret-0000"),
    )
    .unwrap();
    let hs384 = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS384),
        &good(json!({})),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    // (case, token, Origin, expected code, expected close code)
    type Case<'a> = (&'a str, Option<String>, Option<&'a str>, &'a str, u16);
    let cases: Vec<Case> = vec![
        ("missing", None, None, "UNAUTHORIZED", 4401),
        (
            "garbage",
            Some("not.a.jwt".into()),
            None,
            "UNAUTHORIZED",
            4401,
        ),
        (
            "bad signature",
            Some(other_secret),
            None,
            "UNAUTHORIZED",
            4401,
        ),
        (
            "expired",
            Some(token_with(good(json!({"exp": now() - 120})))),
            None,
            "UNAUTHORIZED",
            4401,
        ),
        (
            "not yet valid",
            Some(token_with(good(json!({"nbf": now() + 600})))),
            None,
            "UNAUTHORIZED",
            4401,
        ),
        ("wrong algorithm", Some(hs384), None, "UNAUTHORIZED", 4401),
        (
            "alg none",
            Some(alg_none_token("u")),
            None,
            "UNAUTHORIZED",
            4401,
        ),
        (
            "wrong issuer",
            Some(token_with(good(json!({"iss": "evil"})))),
            None,
            "UNAUTHORIZED",
            4401,
        ),
        (
            "wrong audience",
            Some(token_with(good(json!({"aud": "other"})))),
            None,
            "UNAUTHORIZED",
            4401,
        ),
        (
            "no sub",
            Some(token_with(
                json!({"exp": now() + 600, "iss": "chronus", "aud": "transcription"}),
            )),
            None,
            "UNAUTHORIZED",
            4401,
        ),
        (
            "bad origin",
            Some(token_with(good(json!({})))),
            Some("https://evil.test"),
            "FORBIDDEN",
            4403,
        ),
    ];
    for (name, token, origin, code, close_code) in cases {
        let auth = match &token {
            Some(t) => Auth::Query(t),
            None => Auth::None,
        };
        let mut client = connect(&ws_url(&gateway, TRANSCRIBE), auth, origin)
            .await
            .client;
        let (messages, close) = client.until_close(Duration::from_secs(5)).await;
        assert_eq!(messages.len(), 1, "{name}: {messages:?}");
        assert_eq!(messages[0]["type"], "error", "{name}");
        assert_eq!(messages[0]["code"], code, "{name}");
        assert_eq!(close, Some(close_code), "{name}");
    }
    assert_eq!(
        thoth.stats().connections_accepted(),
        0,
        "no upstream work for refused requests"
    );

    // The same gateway accepts a good token from an allowed origin, and from no origin.
    let token = token_with(good(json!({})));
    for origin in [Some("https://app.chronus.test"), None] {
        let mut client = connect(&ws_url(&gateway, TRANSCRIBE), Auth::Query(&token), origin)
            .await
            .client;
        client.expect_type("ready").await;
    }
    gateway.stop().await;
    thoth.stop();
}

#[actix_rt::test]
async fn a_token_is_read_from_header_subprotocol_query_and_cookie() {
    let thoth = DevThoth::start(DevThothOptions::default()).unwrap();
    let gateway = start_gateway(&base_env(&thoth.url())).await;
    let token = token_for("sources");
    for (name, auth) in [
        ("header", Auth::Header(&token)),
        ("subprotocol", Auth::Subprotocol(&token)),
        ("query", Auth::Query(&token)),
        ("cookie", Auth::Cookie(&token)),
    ] {
        let connected = connect(&ws_url(&gateway, TRANSCRIBE), auth, None).await;
        if name == "subprotocol" {
            assert_eq!(
                connected.subprotocol.as_deref(),
                Some("chronus.jwt"),
                "never the token"
            );
        }
        let mut client = connected.client;
        assert_eq!(client.json().await["type"], "ready", "{name}");
    }
    gateway.stop().await;
    thoth.stop();
}

#[actix_rt::test]
async fn bad_input_gets_its_code_without_harming_other_sessions() {
    let thoth = DevThoth::start(DevThothOptions::default()).unwrap();
    let mut env = base_env(&thoth.url());
    env.insert("MAX_FRAME_BYTES".into(), "65536".into());
    let gateway = start_gateway(&env).await;
    let mut bystander = open_session(&gateway, "bystander").await;
    let mut client = open_session(&gateway, "clumsy").await;

    let cases: [(&str, &str); 4] = [
        ("{not json", "BAD_MESSAGE"),
        (r#"{"type":"dance"}"#, "BAD_MESSAGE"),
        (
            r#"{"type":"audio","data":"%%%not base64"}"#,
            "INVALID_AUDIO_FORMAT",
        ),
        (r#"{"type":"audio","data":"AAA="}"#, "INVALID_AUDIO_FORMAT"), // 2 bytes: half a sample
    ];
    for (frame, code) in cases {
        client.send_text(frame).await;
        let error = client.json().await;
        assert_eq!(error["code"], code, "{frame}");
        assert_eq!(error["retryable"], false);
    }
    client.send_binary(vec![0u8; 7]).await;
    assert_eq!(client.json().await["code"], "INVALID_AUDIO_FORMAT");
    // The session goes on after all of those.
    client.send_json(json!({"type": "ping"})).await;
    assert_eq!(client.json().await["type"], "pong");

    client.send_binary(vec![0u8; 65_540]).await;
    let (messages, close) = client.until_close(Duration::from_secs(5)).await;
    assert_eq!(messages.last().unwrap()["code"], "MESSAGE_TOO_LARGE");
    assert_eq!(close, Some(1009));

    stream_then_end(&mut bystander, &f32_audio(0.75, 1.0)).await;
    let (messages, close) = bystander.until_close(Duration::from_secs(10)).await;
    assert_eq!(
        texts_of(&messages, "transcription"),
        expected_finals(0.75, 1)
    );
    assert!(messages.iter().all(|m| m["type"] != "error"));
    assert_eq!(close, Some(1000));
    gateway.stop().await;
    thoth.stop();
}
