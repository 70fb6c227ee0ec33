//! A stand-in for the chronus backend's notes API, as `NOTE_ACCESS_URL` asks
//! it (PROTOCOL.md 2.7): a real HTTP server on 127.0.0.1:0 that checks the
//! caller's chronus token and answers by who owns the note — 2xx when the
//! token's user owns it, 403 when someone else does, 404 when there is no such
//! note. It remembers every request, so a test can tell how often the gateway
//! asked and with what.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use actix_web::dev::ServerHandle;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use serde_json::{json, Value};

/// One request the backend received.
#[derive(Debug, Clone)]
pub struct NoteRequest {
    pub method: String,
    pub path: String,
    /// The `Authorization` header as sent.
    pub authorization: Option<String>,
}

#[derive(Default)]
struct State {
    /// noteId → owner's user id (chronus user ids are integers).
    owners: HashMap<u64, u64>,
    requests: Mutex<Vec<NoteRequest>>,
}

pub struct NotesBackend {
    pub addr: SocketAddr,
    state: Arc<State>,
    server: ServerHandle,
}

impl NotesBackend {
    /// Serves `GET /api/notes/{noteId}` for notes owned as `owners` says.
    /// Call from inside the actix runtime of the test.
    pub fn start(owners: &[(u64, u64)]) -> NotesBackend {
        let state = Arc::new(State {
            owners: owners.iter().copied().collect(),
            requests: Mutex::new(Vec::new()),
        });
        let data = web::Data::from(Arc::clone(&state));
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .default_service(web::to(answer))
        })
        .workers(1)
        .disable_signals()
        .shutdown_timeout(0)
        .bind("127.0.0.1:0")
        .expect("notes backend binds");
        let addr = server.addrs()[0];
        let server = server.run();
        let handle = server.handle();
        actix_rt::spawn(server);
        NotesBackend {
            addr,
            state,
            server: handle,
        }
    }

    /// The `NOTE_ACCESS_URL` the gateway is given, as chronus would set it.
    pub fn access_url(&self) -> String {
        format!("http://{}/api/notes/{{noteId}}", self.addr)
    }

    /// Every request so far, in order.
    pub fn requests(&self) -> Vec<NoteRequest> {
        self.state.requests.lock().unwrap().clone()
    }

    pub async fn stop(self) {
        self.server.stop(false).await;
    }
}

/// The user id of a valid chronus token (HS256 with the test secret, `sub` an
/// integer), or `None`.
fn user_of(authorization: Option<&str>) -> Option<u64> {
    let token = authorization?.strip_prefix("Bearer ")?;
    let validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    let claims = jsonwebtoken::decode::<Value>(
        token,
        &jsonwebtoken::DecodingKey::from_secret(crate::common::SECRET.as_bytes()),
        &validation,
    )
    .ok()?
    .claims;
    claims["sub"].as_u64()
}

async fn answer(req: HttpRequest, state: web::Data<State>) -> HttpResponse {
    let authorization = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    state.requests.lock().unwrap().push(NoteRequest {
        method: req.method().to_string(),
        path: req.path().to_owned(),
        authorization: authorization.clone(),
    });
    let Some(note_id) = req
        .path()
        .strip_prefix("/api/notes/")
        .and_then(|id| id.parse::<u64>().ok())
    else {
        return HttpResponse::NotFound().json(json!({"message": "Not Found"}));
    };
    let Some(user) = user_of(authorization.as_deref()) else {
        return HttpResponse::Unauthorized().json(json!({"message": "Unauthorized"}));
    };
    match state.owners.get(&note_id) {
        None => HttpResponse::NotFound().json(json!({"message": "Note not found"})),
        Some(owner) if *owner != user => {
            HttpResponse::Forbidden().json(json!({"message": "Forbidden"}))
        }
        Some(_) => HttpResponse::Ok().json(json!({"id": note_id, "name": "a note"})),
    }
}
