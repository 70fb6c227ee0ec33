//! The browser client's routes on the public listener (src/http/web.rs):
//! the client scripts always, the demo page and its helpers only under `demo`.

mod common;

use std::time::Duration;

use chronus_gateway::config::{Config, DemoSettings};
use common::{base_env, Auth};
use serde_json::Value;

/// GETs `path` on the gateway's public listener: status, content type, body.
async fn get(gateway: &chronus_gateway::RunningGateway, path: &str) -> (u16, String, Vec<u8>) {
    let mut response = awc::Client::new()
        .get(format!("http://{}{}", gateway.public_addr, path))
        .send()
        .await
        .expect("request");
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let body = response.body().limit(1 << 20).await.expect("body");
    (response.status().as_u16(), content_type, body.to_vec())
}

fn demo_settings() -> DemoSettings {
    DemoSettings {
        user: "demo-user".into(),
        token_ttl: Duration::from_secs(600),
        thoth_ws_url: "ws://127.0.0.1:8765".into(),
    }
}

#[actix_rt::test]
async fn the_demo_page_and_the_client_scripts_are_served_with_their_types() {
    let mut config = Config::from_map(&base_env("ws://127.0.0.1:9/stream-audio")).unwrap();
    config.demo = Some(demo_settings());
    let gateway = chronus_gateway::start(config).await.unwrap();

    let (status, content_type, body) = get(&gateway, "/demo").await;
    assert_eq!(status, 200);
    assert_eq!(content_type, "text/html; charset=utf-8");
    assert!(String::from_utf8(body)
        .unwrap()
        .contains("chronus transcription"));

    for script in ["chronus-transcription.js", "pcm-worklet.js"] {
        let (status, content_type, body) = get(&gateway, &format!("/web/{script}")).await;
        assert_eq!(status, 200, "{script}");
        assert_eq!(content_type, "text/javascript; charset=utf-8", "{script}");
        let on_disk =
            std::fs::read(format!("{}/web/{script}", env!("CARGO_MANIFEST_DIR"))).unwrap();
        assert_eq!(body, on_disk, "{script} is the file in web/");
    }
    for missing in ["/web/demo.html", "/web/..%2FCargo.toml", "/web/nope.js"] {
        assert_eq!(get(&gateway, missing).await.0, 404, "{missing}");
    }
    gateway.stop().await;
}

#[actix_rt::test]
async fn without_demo_settings_there_is_no_token_to_fetch() {
    let gateway = common::start_gateway(&base_env("ws://127.0.0.1:9/stream-audio")).await;
    assert_eq!(get(&gateway, "/demo/token").await.0, 404);
    assert_eq!(get(&gateway, "/demo/config").await.0, 404);
    gateway.stop().await;
}

/// Under `serve` the gateway hosts no page at all (issue 15, item 6); the
/// scripts stay for frontends that embed them.
#[actix_rt::test]
async fn without_demo_settings_the_demo_page_is_not_served() {
    let gateway = common::start_gateway(&base_env("ws://127.0.0.1:9/stream-audio")).await;
    let (status, _, body) = get(&gateway, "/demo").await;
    assert_eq!(status, 404);
    assert!(!String::from_utf8_lossy(&body).contains("chronus transcription"));
    assert_eq!(get(&gateway, "/web/chronus-transcription.js").await.0, 200);
    gateway.stop().await;
}

#[actix_rt::test]
async fn the_demo_hands_out_a_token_the_gateway_accepts_and_thoths_address() {
    let mut config = Config::from_map(&base_env("ws://127.0.0.1:9/stream-audio")).unwrap();
    config.demo = Some(demo_settings());
    let gateway = chronus_gateway::start(config).await.unwrap();

    let (status, _, body) = get(&gateway, "/demo/config").await;
    assert_eq!(status, 200);
    let demo_config: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        demo_config,
        serde_json::json!({"thothWsUrl": "ws://127.0.0.1:8765"})
    );

    let (status, _, body) = get(&gateway, "/demo/token").await;
    assert_eq!(status, 200);
    let minted: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(minted["user"], "demo-user");
    assert_eq!(minted["expiresInSecs"], 600);
    let token = minted["token"].as_str().unwrap();
    let claims = gateway
        .state
        .jwt
        .validate(token)
        .expect("the gateway accepts it");
    assert_eq!(claims.sub, "demo-user");

    // The browser client's way in: the `chronus.jwt` subprotocol.
    let connected = common::connect(
        &common::ws_url(&gateway, "/api/audio/transcribe"),
        Auth::Subprotocol(token),
        Some("http://127.0.0.1:8080"),
    )
    .await;
    assert_eq!(connected.subprotocol.as_deref(), Some("chronus.jwt"));
    gateway.stop().await;
}
