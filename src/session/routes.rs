//! Every browser WebSocket route, each through the one admission/upgrade
//! path of [`crate::session::admission`]: `GET /api/audio/transcribe` and
//! `GET /api/notes/transcribe-audio` (the same chronus protocol, with a
//! required `noteId`, PROTOCOL.md 2.7) start a ClientActor; `GET
//! /api/mistral/ws` and its SDK path start a MistralProxyActor (2.6).

use std::collections::HashMap;

use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::FutureExt;
use uuid::Uuid;

use crate::audio::{AudioFormat, Encoding, SAMPLE_RATES};
use crate::config::ThothProtocol;
use crate::error::{ErrorCode, GatewayError};
use crate::metrics;
use crate::session::admission::{accept, accept_detached, admit_upgrade, reject_websocket};
use crate::session::client::{ClientActor, ClientSession, UpstreamConnector};
use crate::session::mistral_model::endpoint_for_query;
use crate::session::mistral_proxy::MistralProxyActor;
use crate::session::note_access::{check_note_access, note_id_from_query};
use crate::session::note_sessions::NoteSessionGuard;
use crate::state::AppState;
use crate::upstream::mistral::{self, MistralUpstreamActor};
use crate::upstream::UpstreamLink;
use crate::wire::browser::{ErrorDialect, Provider};

/// What the browser asked for in the query string.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SessionRequest {
    pub provider: Provider,
    pub format: AudioFormat,
}

/// Parses `provider`, `encoding` and `sampleRate`; other keys (`noteId`,
/// `language`, `token`) are not the relay's business.
pub fn parse_session_query(query: &str) -> Result<SessionRequest, GatewayError> {
    let params: HashMap<String, String> = url::form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    let bad = |what: String| GatewayError::with_message(ErrorCode::InvalidAudioFormat, what);
    let provider = match params.get("provider").map(String::as_str) {
        None | Some("thoth") => Provider::Thoth,
        Some("mistral") => Provider::Mistral,
        Some(other) => {
            return Err(GatewayError::with_message(
                ErrorCode::BadMessage,
                format!(
                    "Unknown provider {:?}: use thoth or mistral",
                    truncate(other)
                ),
            ))
        }
    };
    let encoding = match params.get("encoding") {
        None => Encoding::F32le,
        Some(raw) => Encoding::parse(raw).ok_or_else(|| {
            bad(format!(
                "Unknown encoding {:?}: use f32le or s16le",
                truncate(raw)
            ))
        })?,
    };
    let sample_rate = match params.get("sampleRate") {
        None => 16_000,
        Some(raw) => raw
            .parse::<u32>()
            .ok()
            .filter(|rate| SAMPLE_RATES.contains(rate))
            .ok_or_else(
                || bad("sampleRate must be a whole number between 8000 and 48000".into()),
            )?,
    };
    Ok(SessionRequest {
        provider,
        format: AudioFormat {
            encoding,
            sample_rate,
        },
    })
}

fn truncate(s: &str) -> String {
    s.chars().take(32).collect()
}

/// Which chronus path a session came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChronusPath {
    /// `/api/audio/transcribe`: `noteId` optional and not checked.
    Transcribe,
    /// `/api/notes/transcribe-audio`: `noteId` required and checked (2.7).
    Notes,
}

/// The chronus transcription WebSocket.
pub async fn transcribe(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    open_chronus_session(req, payload, state, ChronusPath::Transcribe).await
}

/// The later chronus frontend's path: the same protocol for one note.
pub async fn transcribe_note(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    open_chronus_session(req, payload, state, ChronusPath::Notes).await
}

/// The notes path's own admission, after the token: a valid `noteId`, and
/// the notes backend's consent when `NOTE_ACCESS_URL` is set. Books the
/// session under its note for monitoring.
async fn admit_note(
    req: &HttpRequest,
    state: &AppState,
    session_id: Uuid,
    provider: Provider,
) -> Result<NoteSessionGuard, GatewayError> {
    let note = note_id_from_query(req.query_string()).inspect_err(|_| {
        log::info!("session {session_id}: refused: noteId missing or not a positive integer");
    })?;
    // Admission found the token already: it is there.
    let token = crate::auth::token_from_request(req, &state.config.jwt.cookie_name)
        .map(|(token, _)| token)
        .unwrap_or_default();
    check_note_access(&state.config.chronus, note, &token)
        .await
        .inspect_err(|error| {
            log::info!(
                "session {session_id} (note {note}): refused: {}",
                error.code
            );
        })?;
    Ok(state.note_sessions.open(session_id, note, provider))
}

async fn open_chronus_session(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    path: ChronusPath,
) -> Result<HttpResponse, actix_web::Error> {
    // Every refusal below is by upgrade-and-close with the chronus envelope.
    let reject = |payload, error| reject_websocket(&req, payload, error, ErrorDialect::Chronus);
    let admitted = match admit_upgrade(&req, &state) {
        Ok(admitted) => admitted,
        Err(refusal) => return refusal.respond(&req, payload, ErrorDialect::Chronus),
    };
    let request = match parse_session_query(req.query_string()) {
        Ok(request) => request,
        Err(error) => return reject(payload, error),
    };
    let session_id = Uuid::new_v4();
    // At capacity: refused before any upstream work, so the sessions already
    // admitted keep their latency instead of sharing seconds of queue.
    let at_capacity = match request.provider {
        Provider::Thoth => state.thoth.at_capacity(state.config.overload_cpu_percent),
        _ => None,
    };
    if let Some(why) = at_capacity {
        metrics::count_refusal(metrics::REFUSAL_AT_CAPACITY);
        log::info!("session {session_id}: refused at capacity: {why}");
        return reject(
            payload,
            GatewayError::with_message(
                ErrorCode::ThothBusy,
                "Transcription is at capacity; try again in a moment",
            ),
        );
    }
    let note = match path {
        ChronusPath::Transcribe => None,
        ChronusPath::Notes => match admit_note(&req, &state, session_id, request.provider).await {
            Ok(note) => Some(note),
            Err(error) => return reject(payload, error),
        },
    };
    let legacy_thoth = state.config.thoth_protocol == ThothProtocol::Legacy;
    if request.provider == Provider::Thoth && legacy_thoth && request.format.sample_rate != 16_000 {
        return reject(
            payload,
            GatewayError::with_message(
                ErrorCode::InvalidAudioFormat,
                "This transcription service only takes 16000 Hz audio",
            ),
        );
    }
    let connector: UpstreamConnector = match request.provider {
        Provider::Thoth => {
            let pool = state.thoth.clone();
            Box::new(move |subscribe| async move { pool.subscribe(subscribe).await }.boxed_local())
        }
        Provider::Mistral => {
            // The key is looked up before the upgrade: no key, no upstream work.
            let key = match mistral::user_key(&state.keys, &admitted.claims.sub).await {
                Ok(key) => key,
                Err(error) => return reject(payload, error),
            };
            let endpoint = state.mistral.clone();
            let sessions = state.mistral_sessions.clone();
            let user = admitted.claims.sub.clone();
            // One actor per session, on this (the ClientActor's) arbiter.
            Box::new(move |subscribe| {
                async move {
                    let counted = sessions.open(&user);
                    let actor = MistralUpstreamActor::new(subscribe, user, endpoint, key, counted);
                    Ok(UpstreamLink::of(&actix::Actor::start(actor)))
                }
                .boxed_local()
            })
        }
    };
    let session = ClientSession {
        session_id,
        note,
        user: admitted.claims.sub,
        token_exp: admitted.claims.exp,
        provider: request.provider,
        format: request.format,
        convert_to_f32: request.provider == Provider::Thoth
            && legacy_thoth
            && request.format.encoding == Encoding::S16le,
        state: state.clone().into_inner(),
        permit: admitted.permit,
    };
    accept(&req, payload, &state, |taken| {
        ClientActor::new(session, connector, taken)
    })
}

/// The native Mistral WebSocket (`/api/mistral/ws` and the SDKs'
/// `/api/mistral/v1/audio/transcriptions/realtime`): the model, then the
/// user's key, then a [`MistralProxyActor`]. Refusals carry `error.message`
/// for Mistral's SDKs.
pub async fn mistral_native(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    let dialect = ErrorDialect::MistralSdk;
    let admitted = match admit_upgrade(&req, &state) {
        Ok(admitted) => admitted,
        Err(refusal) => return refusal.respond(&req, payload, dialect),
    };
    // The model is checked before the key is even read: nothing upstream yet.
    let endpoint = match endpoint_for_query(
        req.query_string(),
        &state.mistral,
        &state.config.mistral_models,
    ) {
        Ok(endpoint) => endpoint,
        Err(error) => return reject_websocket(&req, payload, error, dialect),
    };
    let key = match mistral::user_key(&state.keys, &admitted.claims.sub).await {
        Ok(key) => key,
        Err(error) => return reject_websocket(&req, payload, error, dialect),
    };
    // Detached: Mistral's events are relayed only while the browser keeps
    // up, and the actor must run on to notice that it does not.
    let shared = state.clone().into_inner();
    accept_detached(&req, payload, &state, |taken| {
        MistralProxyActor::new(admitted, key, endpoint, shared, taken)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_legacy_frontend() {
        let req = parse_session_query("token=abc").unwrap();
        assert_eq!(req.provider, Provider::Thoth);
        assert_eq!(
            req.format,
            AudioFormat {
                encoding: Encoding::F32le,
                sample_rate: 16_000
            }
        );
    }

    #[test]
    fn reads_provider_encoding_and_rate() {
        let req = parse_session_query("provider=mistral&encoding=s16le&sampleRate=24000&noteId=7")
            .unwrap();
        assert_eq!(req.provider, Provider::Mistral);
        assert_eq!(
            req.format,
            AudioFormat {
                encoding: Encoding::S16le,
                sample_rate: 24_000
            }
        );
    }

    #[test]
    fn refuses_bad_values() {
        assert_eq!(
            parse_session_query("provider=x").unwrap_err().code,
            ErrorCode::BadMessage
        );
        assert_eq!(
            parse_session_query("encoding=mp3").unwrap_err().code,
            ErrorCode::InvalidAudioFormat
        );
        assert_eq!(
            parse_session_query("sampleRate=1").unwrap_err().code,
            ErrorCode::InvalidAudioFormat
        );
        assert_eq!(
            parse_session_query("sampleRate=abc").unwrap_err().code,
            ErrorCode::InvalidAudioFormat
        );
    }
}
