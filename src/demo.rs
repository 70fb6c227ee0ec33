//! `chronus-gateway demo`: the whole thing on one machine with nothing
//! installed — the gateway, a dev thoth on a loopback port, a SQLite file —
//! and a ready-to-use token printed on the terminal.

use std::collections::HashMap;
use std::path::PathBuf;

use base64::Engine;

use crate::devthoth::{DevThoth, DevThothOptions};

const DEMO_USER: &str = "demo-user";
const TOKEN_TTL_SECS: u64 = 12 * 3600;

/// Options of the demo command.
struct DemoArgs {
    bind: String,
    admin_bind: String,
    data_dir: PathBuf,
    legacy: bool,
}

fn parse_args(args: &[String]) -> Result<DemoArgs, String> {
    let mut parsed = DemoArgs {
        bind: "127.0.0.1:8080".into(),
        admin_bind: "127.0.0.1:9091".into(),
        data_dir: PathBuf::from("chronus-demo"),
        legacy: false,
    };
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        let mut value = || iter.next().cloned().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--bind" => parsed.bind = value()?,
            "--admin-bind" => parsed.admin_bind = value()?,
            "--data-dir" => parsed.data_dir = PathBuf::from(value()?),
            "--legacy" => parsed.legacy = true,
            other => {
                return Err(format!(
                "unknown option {other:?} (demo takes --bind, --admin-bind, --data-dir, --legacy)"
            ))
            }
        }
    }
    Ok(parsed)
}

/// A random secret, kept in `data_dir` so the SQLite key store stays readable
/// across demo runs.
fn persistent_secret(path: &std::path::Path, bytes: usize) -> std::io::Result<String> {
    if let Ok(existing) = std::fs::read_to_string(path) {
        return Ok(existing.trim().to_string());
    }
    let mut secret = vec![0u8; bytes];
    rand::fill(&mut secret[..]);
    let encoded = base64::engine::general_purpose::STANDARD.encode(secret);
    std::fs::write(path, &encoded)?;
    Ok(encoded)
}

pub fn run(args: &[String]) -> Result<(), Box<dyn std::error::Error>> {
    let args = parse_args(args)?;
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    std::fs::create_dir_all(&args.data_dir)?;
    let jwt_secret = persistent_secret(&args.data_dir.join("jwt-secret"), 32)?;
    let encryption_key = persistent_secret(&args.data_dir.join("api-key-encryption-key"), 32)?;

    let thoth = DevThoth::start(DevThothOptions::default())?;
    let mut env: HashMap<String, String> = HashMap::from([
        ("BIND_ADDR".into(), args.bind.clone()),
        ("ADMIN_BIND_ADDR".into(), args.admin_bind.clone()),
        ("JWT_SECRET".into(), jwt_secret.clone()),
        ("API_KEY_ENCRYPTION_KEY".into(), encryption_key),
        ("THOTH_WS_URL".into(), thoth.url()),
        (
            "THOTH_PROTOCOL".into(),
            if args.legacy { "legacy" } else { "mux" }.into(),
        ),
        (
            "DATABASE_URL".into(),
            args.data_dir.join("gateway.db").display().to_string(),
        ),
    ]);
    // Anything set in the environment (e.g. MISTRAL_WS_URL) still applies.
    for (key, value) in std::env::vars() {
        if key.chars().all(|c| c.is_ascii_uppercase() || c == '_') && !env.contains_key(&key) {
            env.insert(key, value);
        }
    }
    let config = crate::config::Config::from_map(&env)?;
    let token =
        crate::auth::mint_hs256(jwt_secret.as_bytes(), DEMO_USER, TOKEN_TTL_SECS, None, None)?;

    actix_rt::System::new().block_on(async move {
        let gateway = crate::start(config).await?;
        let public = gateway.public_addr;
        let admin = gateway.admin_addr;
        println!(
            "\nchronus-gateway demo is running\n\
             \n  dev thoth:      {thoth_url} ({mode})\
             \n  transcription:  ws://{public}/api/audio/transcribe?token=<TOKEN>\
             \n  pool monitor:   http://{admin}/api/transcription/pool\
             \n  metrics:        http://{admin}/metrics\
             \n\nA token for user {DEMO_USER}, valid 12 hours:\n\n{token}\n\
             \nTry it (the dev thoth answers each second of audio with a description of it):\n\
             \n  websocat -b 'ws://{public}/api/audio/transcribe?token={token}'\n\
             \nPress Ctrl-C to stop.\n",
            thoth_url = thoth.url(),
            mode = if args.legacy {
                "legacy protocol"
            } else {
                "mux protocol v1"
            },
        );
        gateway.wait().await?;
        thoth.stop();
        Ok(())
    })
}
