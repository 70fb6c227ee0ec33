//! Unit tests of the configuration: defaults, errors naming the variable,
//! secrets never printed.

use super::*;

fn base() -> HashMap<String, String> {
    HashMap::from([
        (
            "JWT_SECRET".into(),
            "0123456789abcdef0123456789abcdef".into(),
        ),
        (
            "API_KEY_ENCRYPTION_KEY".into(),
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".into(),
        ),
    ])
}

#[test]
fn a_thoth_url_without_a_path_gets_stream_audio() {
    let mut map = base();
    map.insert(
        "THOTH_WS_URL".into(),
        "ws://127.0.0.1:8765, wss://thoth.internal:8443/, ws://h:1/custom?x=1, ws://h:2?x=1".into(),
    );
    let cfg = Config::from_map(&map).unwrap();
    assert_eq!(
        cfg.thoth_ws_urls,
        vec![
            "ws://127.0.0.1:8765/stream-audio",
            "wss://thoth.internal:8443/stream-audio",
            "ws://h:1/custom?x=1",
            "ws://h:2/stream-audio?x=1",
        ]
    );
}

#[test]
fn defaults_are_loopback_and_mux() {
    let cfg = Config::from_map(&base()).unwrap();
    assert_eq!(cfg.bind_addr.to_string(), "127.0.0.1:8080");
    assert_eq!(cfg.admin_bind_addr.to_string(), "127.0.0.1:9091");
    assert_eq!(cfg.thoth_protocol, ThothProtocol::Mux);
    assert_eq!(cfg.max_frame_bytes, 256 * 1024);
    assert_eq!(cfg.thoth_idle_close, Duration::from_secs(30));
    assert_eq!(
        cfg.demo, None,
        "demo routes are never configured from the environment"
    );
}

#[test]
fn missing_secret_names_the_variable() {
    let mut map = base();
    map.remove("JWT_SECRET");
    let err = Config::from_map(&map).unwrap_err();
    assert_eq!(err.var, "JWT_SECRET");
}

#[test]
fn mistral_models_default_to_the_model_of_mistral_ws_url() {
    let cfg = Config::from_map(&base()).unwrap();
    assert_eq!(
        cfg.mistral_models,
        vec!["voxtral-mini-transcribe-realtime-2602"]
    );
    let mut map = base();
    map.insert("MISTRAL_MODELS".into(), " a-model, b-model ,".into());
    let cfg = Config::from_map(&map).unwrap();
    assert_eq!(cfg.mistral_models, vec!["a-model", "b-model"]);
}

#[test]
fn malformed_values_name_the_variable() {
    for (var, bad) in [
        ("THOTH_PROTOCOL", "grpc"),
        ("THOTH_WS_URL", "http://thoth"),
        ("MAX_FRAME_BYTES", "lots"),
        ("JWT_ALGORITHM", "none"),
        ("BIND_ADDR", "localhost"),
        ("SESSION_TOKEN_CHECK", "sometimes"),
        ("MAX_SESSION_SECS", "4h"),
        ("MAX_SESSION_SECS", "0"),
        ("NOTE_ACCESS_URL", "http://backend/api/notes"),
        ("NOTE_ACCESS_URL", "ftp://backend/{noteId}"),
    ] {
        let mut map = base();
        map.insert(var.into(), bad.into());
        let err = Config::from_map(&map).unwrap_err();
        assert_eq!(err.var, var, "{bad}");
    }
}

#[test]
fn chronus_session_defaults_are_connect_and_four_hours() {
    let cfg = Config::from_map(&base()).unwrap();
    assert_eq!(cfg.chronus.token_check, SessionTokenCheck::Connect);
    assert_eq!(cfg.chronus.max_session, Duration::from_secs(14_400));
    assert_eq!(cfg.chronus.note_access_url, None);
    assert_eq!(cfg.chronus.note_access_timeout, Duration::from_secs(5));
}

#[test]
fn debug_print_hides_secrets() {
    let mut map = base();
    map.insert("THOTH_STREAM_TOKEN".into(), "thoth-secret-value".into());
    map.insert(
        "DATABASE_URL".into(),
        "postgres://u:hunter2@127.0.0.1/db".into(),
    );
    let printed = format!("{:?}", Config::from_map(&map).unwrap());
    assert!(!printed.contains("thoth-secret-value"));
    assert!(!printed.contains("hunter2"));
    assert!(!printed.contains("0123456789abcdef"));
    assert!(
        printed.contains("postgres://u:***@127.0.0.1/db"),
        "{printed}"
    );
}

#[test]
fn a_conninfo_database_url_never_prints_its_password() {
    let mut map = base();
    map.insert(
        "DATABASE_URL".into(),
        "host=db port=5432 password=hunter2 dbname=x".into(),
    );
    let config = Config::from_map(&map).unwrap();
    let printed = format!("{config:?}");
    assert!(!printed.contains("hunter2"), "{printed}");
    assert!(printed.contains("password=***"), "{printed}");
    // The secret type itself prints nothing either.
    assert_eq!(format!("{:?}", config.database_url), "***");
    assert_eq!(format!("{}", config.api_key_encryption_key), "***");
}

#[test]
fn previous_encryption_keys_are_read_with_their_versions() {
    let mut map = base();
    map.insert("API_KEY_ENCRYPTION_KEY_VERSION".into(), "3".into());
    map.insert(
        "API_KEY_PREVIOUS_ENCRYPTION_KEYS".into(),
        "2:QkJCQg==, 1:QUFBQQ==".into(),
    );
    let cfg = Config::from_map(&map).unwrap();
    assert_eq!(cfg.api_key_encryption_key_version, 3);
    assert_eq!(
        cfg.api_key_previous_encryption_keys,
        vec![(2, "QkJCQg==".into()), (1, "QUFBQQ==".into())]
    );
    map.insert(
        "API_KEY_PREVIOUS_ENCRYPTION_KEYS".into(),
        "secret-without-version".into(),
    );
    let err = Config::from_map(&map).unwrap_err();
    assert_eq!(err.var, "API_KEY_PREVIOUS_ENCRYPTION_KEYS");
    assert!(!err.to_string().contains("secret-without-version"));
}

#[test]
fn several_thoth_endpoints_are_split_on_commas() {
    let mut map = base();
    map.insert(
        "THOTH_WS_URL".into(),
        "ws://127.0.0.1:1/a, ws://127.0.0.1:2/b".into(),
    );
    let cfg = Config::from_map(&map).unwrap();
    assert_eq!(
        cfg.thoth_ws_urls,
        vec!["ws://127.0.0.1:1/a", "ws://127.0.0.1:2/b"]
    );
}

#[test]
fn the_audio_buffer_budget_defaults_to_1_gib_and_is_always_on() {
    let cfg = Config::from_map(&base()).unwrap();
    assert_eq!(cfg.audio_buffer_budget_bytes, 1024 * 1024 * 1024);
    let mut vars = base();
    vars.insert("AUDIO_BUFFER_BUDGET_BYTES".into(), "0".into());
    let err = Config::from_map(&vars).unwrap_err();
    assert!(
        err.to_string().contains("AUDIO_BUFFER_BUDGET_BYTES"),
        "{err}"
    );
}

#[test]
fn the_cpu_limit_defaults_to_85_percent_and_0_turns_it_off() {
    let cfg = Config::from_map(&base()).unwrap();
    assert_eq!(cfg.overload_cpu_percent, Some(85));
    let mut vars = base();
    vars.insert("OVERLOAD_CPU_PERCENT".into(), "0".into());
    assert_eq!(Config::from_map(&vars).unwrap().overload_cpu_percent, None);
    vars.insert("OVERLOAD_CPU_PERCENT".into(), "busy".into());
    let err = Config::from_map(&vars).unwrap_err();
    assert!(err.to_string().contains("OVERLOAD_CPU_PERCENT"), "{err}");
}
