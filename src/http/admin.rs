//! The admin listener (PROTOCOL.md 5): never bound to the public address.

use actix_web::{web, HttpResponse};
use serde::Serialize;

use crate::metrics;
use crate::state::AppState;
use crate::upstream::mistral::sessions::MistralSessionsSnapshot;
use crate::upstream::thoth::EndpointSnapshot;

/// Routes of the admin listener.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/metrics", web::get().to(prometheus_metrics))
        .route("/api/transcription/pool", web::get().to(pool))
        .route("/healthz", web::get().to(healthz))
        .route("/readyz", web::get().to(readyz));
}

async fn prometheus_metrics() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(metrics::render())
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PoolReport {
    thoth: Vec<EndpointSnapshot>,
    /// Open Mistral sessions (chronus and native), per user.
    mistral: MistralSessionsSnapshot,
    sessions_open: usize,
    /// Notes-path sessions: each session id beside its `noteId`.
    notes: Vec<crate::session::note_sessions::NoteSessionEntry>,
}

async fn pool(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(PoolReport {
        thoth: state.thoth.snapshot().await,
        mistral: state.mistral_sessions.snapshot(),
        sessions_open: state.sessions.total(),
        notes: state.note_sessions.snapshot(),
    })
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({"status": "ok"}))
}

/// Ready when the database answers. thoth's state is reported but not
/// required: a thoth socket only opens when a session needs one.
async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let thoth: Vec<_> = state
        .thoth
        .snapshot()
        .await
        .into_iter()
        .map(|e| serde_json::json!({"url": e.url, "state": e.state, "refCount": e.ref_count}))
        .collect();
    let database = state.keys.database().clone();
    let database_ok = matches!(web::block(move || database.ping()).await, Ok(Ok(())));
    let body = serde_json::json!({
        "status": if database_ok { "ready" } else { "unavailable" },
        "database": if database_ok { "ok" } else { "unreachable" },
        "thoth": thoth,
    });
    if database_ok {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}
