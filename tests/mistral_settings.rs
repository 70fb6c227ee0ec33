//! The Mistral key settings endpoints and the token endpoint, on SQLite and
//! on PostgreSQL.
//!
//! The PostgreSQL variant reads `TEST_DATABASE_URL_PG`
//! (`eval "$(bash .ci/start-postgres.sh)"`); without it it is skipped with a
//! loud note, unless `CI` is set, where it fails.

mod common;
mod fake_mistral;
#[path = "common/mistral.rs"]
mod mistral;

use std::time::Duration;

use chronus_gateway::RunningGateway;
use common::*;
use fake_mistral::*;
use mistral::*;
use serde_json::{json, Value};

// ---- settings endpoints ---------------------------------------------------------

/// Every settings behaviour, for users named `<prefix>-…` (the PostgreSQL
/// database is shared between runs).
async fn settings_endpoints_behave(gateway: &RunningGateway, prefix: &str) {
    let alice = token_for(&format!("{prefix}-alice"));
    let bob = token_for(&format!("{prefix}-bob"));
    let keys_url = http_url(gateway, "/api/settings/api-keys");
    let mistral_url = http_url(gateway, "/api/settings/api-keys/mistral");
    let token_url = http_url(gateway, "/api/mistral/token");
    let body = json!({"apiKey": KEY}).to_string();

    // Without a token: 401 everywhere, with the REST error body.
    for (method, url, body) in [
        ("GET", &keys_url, None),
        ("PUT", &mistral_url, Some(body.as_str())),
        ("DELETE", &mistral_url, None),
        ("GET", &token_url, None),
    ] {
        let reply = call(method, url.clone(), None, body).await;
        assert_eq!(reply.status, 401, "{method} {url}");
        assert_eq!(reply.json(), json!({"error": "Unauthorized"}));
    }
    // Unknown provider: 404.
    let openai = http_url(gateway, "/api/settings/api-keys/openai");
    assert_eq!(
        call("PUT", openai.clone(), Some(&alice), Some(&body))
            .await
            .status,
        404
    );
    assert_eq!(call("DELETE", openai, Some(&alice), None).await.status, 404);

    // Invalid bodies and keys: 400 with a reason, never the input.
    let too_long = "k".repeat(513);
    let oversized = json!({"apiKey": KEY, "padding": "x".repeat(5000)}).to_string();
    let invalid = [
        String::new(),
        "not json".to_owned(),
        json!({"key": KEY}).to_string(),
        json!({"apiKey": 12345}).to_string(),
        json!({"apiKey": ""}).to_string(),
        json!({"apiKey": format!("{KEY} with spaces")}).to_string(),
        json!({"apiKey": too_long}).to_string(),
        oversized,
    ];
    for bad in &invalid {
        let reply = call("PUT", mistral_url.clone(), Some(&alice), Some(bad)).await;
        assert_eq!(reply.status, 400, "{bad:.60}: {reply:?}");
        assert!(reply.json()["error"].is_string(), "{reply:?}");
        assert!(
            !reply.body.contains(KEY) && !reply.body.contains("kkkk"),
            "{reply:?}"
        );
    }
    assert_eq!(
        call("GET", keys_url.clone(), Some(&alice), None)
            .await
            .json(),
        json!([])
    );

    // Store, list, replace.
    let stored = call("PUT", mistral_url.clone(), Some(&alice), Some(&body)).await;
    assert_eq!((stored.status, stored.body.as_str()), (204, ""));
    let listed = call("GET", keys_url.clone(), Some(&alice), None).await;
    assert_eq!(listed.status, 200);
    assert!(!listed.body.contains(KEY), "GET never returns the key");
    let entries = listed.json();
    assert_eq!(entries.as_array().unwrap().len(), 1, "{entries}");
    assert_eq!(entries[0]["provider"], "mistral");
    assert_eq!(entries[0]["last4"], &KEY[KEY.len() - 4..]);
    let first_update = entries[0]["updatedAt"].as_str().unwrap().to_owned();
    assert!(chrono::DateTime::parse_from_rfc3339(&first_update).is_ok());
    assert_eq!(entries[0].as_object().unwrap().len(), 3, "{entries}");

    let token = call("GET", token_url.clone(), Some(&alice), None).await;
    assert_eq!(token.status, 200);
    assert_eq!(
        token.json(),
        json!({
            "websocketUrl": format!("ws://{}/api/mistral/ws", gateway.public_addr),
            "serverUrl": format!("http://{}/api/mistral", gateway.public_addr),
        })
    );

    tokio::time::sleep(Duration::from_millis(5)).await;
    let replaced = call(
        "PUT",
        mistral_url.clone(),
        Some(&alice),
        Some(&json!({"apiKey": "  mk-second-key-WXYZ\n"}).to_string()),
    )
    .await;
    assert_eq!(replaced.status, 204);
    let entries = call("GET", keys_url.clone(), Some(&alice), None)
        .await
        .json();
    assert_eq!(entries[0]["last4"], "WXYZ");
    assert_ne!(entries[0]["updatedAt"], first_update);

    // Another user sees nothing of it.
    assert_eq!(
        call("GET", keys_url.clone(), Some(&bob), None).await.json(),
        json!([])
    );
    assert_eq!(
        call("DELETE", mistral_url.clone(), Some(&bob), None)
            .await
            .status,
        404
    );
    assert_eq!(
        call("GET", token_url.clone(), Some(&bob), None)
            .await
            .status,
        400
    );

    // Delete: 204, then 404.
    let deleted = call("DELETE", mistral_url.clone(), Some(&alice), None).await;
    assert_eq!((deleted.status, deleted.body.as_str()), (204, ""));
    assert_eq!(
        call("DELETE", mistral_url.clone(), Some(&alice), None)
            .await
            .status,
        404
    );
    assert_eq!(
        call("GET", keys_url, Some(&alice), None).await.json(),
        json!([])
    );
    assert_eq!(call("GET", token_url, Some(&alice), None).await.status, 400);
}

#[actix_rt::test]
async fn settings_endpoints_store_list_replace_and_delete_a_key_without_returning_it() {
    let fake = FakeMistral::start(FakeMistralOptions::new(KEY, Mode::Segments));
    let gateway = start_gateway(&env_for(fake.url())).await;
    settings_endpoints_behave(&gateway, "sqlite").await;
    gateway.stop().await;
}

#[actix_rt::test]
async fn the_token_endpoint_prefers_public_ws_base_url_then_the_forwarded_scheme() {
    let fake = FakeMistral::start(FakeMistralOptions::new(KEY, Mode::Segments));
    let mut env = env_for(fake.url());
    let gateway = start_gateway(&env).await;
    put_key(&gateway, "fwd", KEY).await;
    let reply = awc::Client::new()
        .get(http_url(&gateway, "/api/mistral/token"))
        .bearer_auth(token_for("fwd"))
        .insert_header(("x-forwarded-proto", "https"))
        .insert_header(("x-forwarded-host", "chronus.example"))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(
        reply["websocketUrl"],
        "wss://chronus.example/api/mistral/ws"
    );
    assert_eq!(reply["serverUrl"], "https://chronus.example/api/mistral");
    gateway.stop().await;

    env.insert(
        "PUBLIC_WS_BASE_URL".into(),
        "wss://app.chronus.example/gateway/".into(),
    );
    let gateway = start_gateway(&env).await;
    put_key(&gateway, "fwd", KEY).await;
    let reply = call(
        "GET",
        http_url(&gateway, "/api/mistral/token"),
        Some(&token_for("fwd")),
        None,
    )
    .await;
    assert_eq!(
        reply.json(),
        json!({
            "websocketUrl": "wss://app.chronus.example/gateway/api/mistral/ws",
            "serverUrl": "https://app.chronus.example/gateway/api/mistral",
        })
    );
    gateway.stop().await;
}

/// The PostgreSQL URL, or `None` (after a loud note) outside CI.
fn pg_url() -> Option<String> {
    match std::env::var(PG_URL_VAR) {
        Ok(url) if !url.trim().is_empty() => Some(url),
        _ if std::env::var_os("CI").is_some_and(|ci| !ci.is_empty()) => panic!(
            "CI is set but {PG_URL_VAR} is not: start PostgreSQL with \
             eval \"$(bash .ci/start-postgres.sh)\" before the tests"
        ),
        _ => {
            eprintln!(
                "\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\
                 !! {PG_URL_VAR} is not set: SKIPPING this PostgreSQL test.\n\
                 !! Run: eval \"$(bash .ci/start-postgres.sh)\"\n\
                 !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n"
            );
            None
        }
    }
}

#[actix_rt::test]
async fn settings_endpoints_and_a_mistral_session_work_on_postgresql() {
    let Some(database_url) = pg_url() else {
        return;
    };
    let fake = FakeMistral::start(FakeMistralOptions::new(KEY, Mode::Segments));
    let mut env = env_for(fake.url());
    env.insert("DATABASE_URL".into(), database_url);
    let gateway = start_gateway(&env).await;
    let prefix = format!("pg-{}", uuid::Uuid::new_v4().simple());
    settings_endpoints_behave(&gateway, &prefix).await;

    // A key stored in PostgreSQL decrypts and reaches Mistral.
    let user = format!("{prefix}-carol");
    assert_eq!(put_key(&gateway, &user, KEY).await.status, 204);
    let mut client = chronus_session(&gateway, &user, "").await;
    client.expect_type("ready").await;
    assert_eq!(
        fake.only_connection().authorization.as_deref(),
        Some(&*format!("Bearer {KEY}"))
    );
    gateway.stop().await;
}
