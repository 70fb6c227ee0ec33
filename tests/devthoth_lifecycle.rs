//! The dev thoth as a test fixture: stats, stop, restart on the same port,
//! dropped connections and announced socket errors.

#[path = "common/devthoth_client.rs"]
mod devthoth_client;

use awc::ws::{CloseCode, Message};
use chronus_gateway::devthoth::{describe_audio, DevThothOptions};
use futures_util::SinkExt;
use serde_json::json;
use uuid::Uuid;

use devthoth_client::*;

#[actix_rt::test]
async fn stats_count_connections() {
    let thoth = start_thoth(DevThothOptions::default());
    let stats = thoth.stats();
    assert_eq!(stats.connections_accepted(), 0);
    let mut mux_a = connect_mux(&thoth).await;
    let _mux_b = connect_mux(&thoth).await;
    let _legacy = connect_legacy(&thoth).await;
    eventually("three sockets open", || stats.connections_open() == 3).await;
    assert_eq!(stats.connections_accepted(), 3);
    assert_eq!(stats.mux_connections(), 2);
    assert_eq!(stats.legacy_streams(), 1);

    mux_a
        .send(Message::Close(Some(CloseCode::Normal.into())))
        .await
        .expect("send close");
    assert_eq!(expect_close(&mut mux_a).await, 1000);
    eventually("one socket closed", || stats.connections_open() == 2).await;
    assert_eq!(stats.connections_accepted(), 3);
}

#[actix_rt::test]
async fn stop_really_closes_the_clients_socket() {
    let thoth = start_thoth(DevThothOptions::default());
    let url = thoth.url();
    let mut mux = connect_mux(&thoth).await;
    let mut legacy = connect_legacy(&thoth).await;
    let session = Uuid::new_v4();
    send_json(&mut mux, start_session(session, "f32le", 16_000, 0)).await;

    thoth.stop();
    expect_abrupt_end(&mut mux).await;
    expect_abrupt_end(&mut legacy).await;
    let refused = awc::Client::new().ws(&url).connect().await;
    assert!(refused.is_err(), "nothing listens after stop()");
}

#[actix_rt::test]
async fn a_stopped_thoth_can_be_restarted_on_the_same_port() {
    let thoth = start_thoth(DevThothOptions::default());
    let addr = thoth.addr();
    thoth.stop();
    let thoth = start_thoth(DevThothOptions {
        bind: addr,
        ..DevThothOptions::default()
    });
    assert_eq!(thoth.addr(), addr);
    let _socket = connect_mux(&thoth).await;
}

#[actix_rt::test]
async fn drop_all_connections_ends_sockets_without_a_close_frame() {
    let thoth = start_thoth(DevThothOptions::default());
    let mut mux = connect_mux(&thoth).await;
    let mut legacy = connect_legacy(&thoth).await;
    thoth.drop_all_connections();
    expect_abrupt_end(&mut mux).await;
    expect_abrupt_end(&mut legacy).await;
    let stats = thoth.stats();
    eventually("sockets gone", || stats.connections_open() == 0).await;

    // The server itself is still up, and the legacy stream is free again.
    let _mux = connect_mux(&thoth).await;
    let mut legacy = connect_legacy(&thoth).await;
    send_binary(&mut legacy, f32le(&[0.2; WINDOW])).await;
    let want = describe_audio(0, &[0.2; WINDOW]);
    assert_eq!(
        next_json(&mut legacy).await,
        json!({ "transcription": want })
    );
}

#[actix_rt::test]
async fn send_socket_error_and_close_warns_every_mux_socket() {
    let thoth = start_thoth(DevThothOptions::default());
    let mut first = connect_mux(&thoth).await;
    let mut second = connect_mux(&thoth).await;
    let mut legacy = connect_legacy(&thoth).await;
    eventually("three sockets open", || {
        thoth.stats().connections_open() == 3
    })
    .await;
    thoth.send_socket_error_and_close("OVERLOADED");
    for socket in [&mut first, &mut second] {
        let error = next_json(socket).await;
        assert_eq!(error["type"], "error");
        assert_eq!(error["code"], "OVERLOADED");
        assert!(error.get("session_id").is_none());
        assert_eq!(expect_close(socket).await, 1011);
    }
    expect_nothing_more(&mut legacy).await;
}
