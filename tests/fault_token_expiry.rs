//! Fault injection, tokens: expiry in the middle of a session, with and
//! without a refresh, and a refresh for another user.

mod common;
#[path = "common/live_session.rs"]
mod live_session;
#[path = "common/scenario.rs"]
mod scenario;

use std::time::Duration;

use chronus_gateway::devthoth::{DevThoth, DevThothOptions};
use common::*;
use live_session::*;
use scenario::*;
use serde_json::json;
use tokio::time::{sleep_until, Instant};

// ---- 5. token expiry and refresh ---------------------------------------------

/// A token for `sub` expiring `secs` seconds from now (may be negative).
fn token_expiring_in(sub: &str, secs: i64) -> (String, u64) {
    let exp = (now() as i64 + secs) as u64;
    (token_with(json!({"sub": sub, "exp": exp})), exp)
}

/// The monotonic instant of a Unix time in seconds.
fn instant_of_unix(secs: u64) -> Instant {
    let unix_now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let target = Duration::from_secs(secs);
    if target >= unix_now {
        Instant::now() + (target - unix_now)
    } else {
        Instant::now() - (unix_now - target)
    }
}

#[actix_rt::test]
async fn token_expiry_mid_session_with_and_without_refresh_and_refresh_for_another_user_is_refused()
{
    let _one_at_a_time = one_at_a_time();
    let thoth = DevThoth::start(DevThothOptions::default()).unwrap();
    // Today's in-band refresh behaviour, kept exactly under `continuous`.
    let mut env = base_env(&thoth.url());
    env.insert("SESSION_TOKEN_CHECK".into(), "continuous".into());
    let gateway = start_gateway(&env).await;
    let frame = Duration::from_millis(100);

    // Without refresh: results until `exp`, then TOKEN_EXPIRED and 4401.
    let expiring = async {
        let audio = TestAudio::for_session(1, 10.0, Encoding::F32le);
        let (token, exp) = token_expiring_in("expiring", 3);
        let mut session = LiveSession::open_with_token(&gateway, &token, "").await;
        let epoch = Instant::now();
        session
            .stream_until_refused(&audio.frames(100), frame, epoch)
            .await;
        let transcript = session.finish().await;
        assert_eq!(transcript.error_codes(), vec!["TOKEN_EXPIRED"], "expiring");
        let (expired_at, last) = transcript.events.last().unwrap();
        assert_eq!(last["code"], "TOKEN_EXPIRED");
        assert_eq!(transcript.close, Some(4401));
        assert!(*expired_at >= instant_of_unix(exp), "not before exp");
        let finals = transcript.finals().len();
        assert!(finals >= 1, "results until the token expired");
        transcript.assert_finals(&audio.expected_finals()[..finals], "expiring");
    };

    // Refreshed twice (a short token, then a long one): the session streams on
    // past both earlier `exp`s and ends normally with every result.
    let refreshed = async {
        let audio = TestAudio::for_session(2, 7.0, Encoding::S16le);
        let (token, first_exp) = token_expiring_in("refreshing", 3);
        let mut session = LiveSession::open_with_token(&gateway, &token, &audio.query()).await;
        let frames = audio.frames(100);
        let epoch = Instant::now();
        let (second, second_exp) = token_expiring_in("refreshing", 5);
        for (k, audio_frame) in frames.iter().enumerate() {
            sleep_until(epoch + frame * k as u32).await;
            match k {
                10 => assert!(
                    session
                        .send_json(json!({"type": "auth", "token": second}))
                        .await
                ),
                30 => {
                    let long = token_for("refreshing");
                    assert!(
                        session
                            .send_json(json!({"type": "auth", "token": long}))
                            .await
                    )
                }
                _ => {}
            }
            assert!(session.send_audio(audio_frame.clone()).await, "frame {k}");
        }
        assert!(session.send_json(json!({"type": "end"})).await);
        let transcript = session.finish().await;
        transcript.assert_complete(&audio.expected_finals(), "refreshed");
        assert!(transcript.error_codes().is_empty());
        let latest_exp = instant_of_unix(first_exp.max(second_exp));
        let finals_after_exp = transcript
            .events
            .iter()
            .filter(|(at, m)| m["type"] == "transcription" && *at > latest_exp)
            .count();
        assert!(
            finals_after_exp >= 1,
            "results arrive after the earlier tokens expired"
        );
    };

    // Refreshes that must be refused end the session with UNAUTHORIZED.
    let refused = |name: &'static str, refresh: String| {
        let gateway = &gateway;
        async move {
            let audio = TestAudio::for_session(3, 1.5, Encoding::F32le);
            let mut session = LiveSession::open(gateway, "owner", "").await;
            let finals = session.finals_counter();
            for audio_frame in audio.frames(100) {
                assert!(session.send_audio(audio_frame).await);
            }
            let got_one = eventually(Duration::from_secs(10), || {
                let one = finals.get() == 1;
                async move { one }
            })
            .await;
            assert!(got_one, "{name}: streaming before the refresh");
            assert!(
                session
                    .send_json(json!({"type": "auth", "token": refresh}))
                    .await
            );
            let transcript = session.finish().await;
            assert_eq!(transcript.error_codes(), vec!["UNAUTHORIZED"], "{name}");
            assert_eq!(transcript.close, Some(4401), "{name}");
            transcript.assert_finals(&audio.expected_finals()[..1], name);
        }
    };
    let (expired_token, _) = token_expiring_in("owner", -120);
    tokio::join!(
        expiring,
        refreshed,
        refused("another user", token_for("intruder")),
        refused("expired", expired_token),
        refused("garbage", "not.a.jwt".to_string()),
    );
    assert_nothing_left(&gateway, Duration::from_secs(5)).await;
    let stats = thoth.stats();
    assert!(
        eventually(Duration::from_secs(5), || async {
            stats.sessions_ended() == stats.mux_sessions_started()
        })
        .await,
        "every thoth session ended too"
    );
    assert_eq!(
        stats.sessions_done(),
        1,
        "only the refreshed session finished"
    );
    gateway.stop().await;
    thoth.stop();
}
