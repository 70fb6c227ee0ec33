//! Mistral settings: the default realtime endpoint and the allowed models.

use super::vars::Vars;

/// Default Mistral realtime endpoint (unreachable from the test machines; tests
/// point `MISTRAL_WS_URL` at a fake).
pub const DEFAULT_MISTRAL_WS_URL: &str =
    "wss://api.mistral.ai/v1/audio/transcriptions/realtime?model=voxtral-mini-transcribe-realtime-2602";

/// The `model` query parameter of a Mistral URL, if it has one.
pub fn model_of_url(raw: &str) -> Option<String> {
    let url = url::Url::parse(raw).ok()?;
    let model = url
        .query_pairs()
        .find(|(name, _)| name == "model")
        .map(|(_, value)| value.into_owned());
    model.filter(|m| !m.is_empty())
}

/// `MISTRAL_MODELS`, or the model `MISTRAL_WS_URL` names when it is unset
/// (none when it names none: then only requests without a `model` pass).
pub(super) fn read_mistral_models(vars: &Vars, mistral_ws_url: &str) -> Vec<String> {
    match vars.get("MISTRAL_MODELS") {
        Some(list) => list
            .split(',')
            .map(|m| m.trim().to_string())
            .filter(|m| !m.is_empty())
            .collect(),
        None => model_of_url(mistral_ws_url).into_iter().collect(),
    }
}
