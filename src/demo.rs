//! `chronus-gateway demo`: the whole thing on one machine with nothing
//! installed — the gateway, a dev thoth on a loopback port, a SQLite file —
//! a ready-to-use token printed on the terminal, and the browser client's
//! demo page at `/demo` (with its demo-only helpers `/demo/token` and
//! `/demo/config`).
//!
//! The first line printed on stdout is `gateway listening on http://ADDR`,
//! with the address actually bound (`--bind 127.0.0.1:0` picks a free port),
//! for scripts and tests to read.
//!
//! `--mistral-key KEY` stores KEY as the demo user's Mistral key at start, so
//! `provider=mistral` works at once (against `MISTRAL_WS_URL` when set in the
//! environment, else Mistral itself).

use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use base64::Engine;

use crate::config::DemoSettings;
use crate::devthoth::{DevThoth, DevThothOptions};
use crate::store::keys::Provider;
use crate::store::SecretString;

const DEMO_USER: &str = "demo-user";
const TOKEN_TTL_SECS: u64 = 12 * 3600;

/// Options of the demo command.
struct DemoArgs {
    bind: SocketAddr,
    admin_bind: SocketAddr,
    data_dir: PathBuf,
    legacy: bool,
    mistral_key: Option<SecretString>,
}

fn parse_args(args: &[String]) -> Result<DemoArgs, String> {
    let mut parsed = DemoArgs {
        bind: SocketAddr::from(([127, 0, 0, 1], 8080)),
        admin_bind: SocketAddr::from(([127, 0, 0, 1], 9091)),
        data_dir: PathBuf::from("chronus-demo"),
        legacy: false,
        mistral_key: None,
    };
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        let mut value = || iter.next().cloned().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--bind" => parsed.bind = socket_addr(arg, &value()?)?,
            "--admin-bind" => parsed.admin_bind = socket_addr(arg, &value()?)?,
            "--data-dir" => parsed.data_dir = PathBuf::from(value()?),
            "--legacy" => parsed.legacy = true,
            "--mistral-key" => parsed.mistral_key = Some(SecretString::new(value()?)),
            other => {
                return Err(format!(
                    "unknown option {other:?} (demo takes --bind, --admin-bind, --data-dir, \
                     --legacy, --mistral-key)"
                ))
            }
        }
    }
    Ok(parsed)
}

/// `127.0.0.1:0`, `[::1]:8080` or `localhost:8080`: the first address it
/// names. Port 0 asks for a free port.
fn socket_addr(option: &str, raw: &str) -> Result<SocketAddr, String> {
    let invalid =
        |why: String| format!("{option} {raw:?}: {why} (expected HOST:PORT, e.g. 127.0.0.1:0)");
    raw.to_socket_addrs()
        .map_err(|err| invalid(err.to_string()))?
        .next()
        .ok_or_else(|| invalid("names no address".into()))
}

/// The origins a browser shows for a page served from `addr`: the dev thoth
/// accepts exactly these, so the demo page's legacy mode works and any other
/// page is still refused.
fn page_origins(addr: SocketAddr) -> Vec<String> {
    let port = addr.port();
    let ip = addr.ip();
    let mut origins = vec![match addr {
        SocketAddr::V4(_) => format!("http://{ip}:{port}"),
        SocketAddr::V6(_) => format!("http://[{ip}]:{port}"),
    }];
    if ip.is_loopback() || ip.is_unspecified() {
        origins.push(format!("http://localhost:{port}"));
    }
    if ip.is_unspecified() {
        origins.push(format!("http://127.0.0.1:{port}"));
    }
    origins
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
    crate::logging::init();
    std::fs::create_dir_all(&args.data_dir)?;
    let jwt_secret = persistent_secret(&args.data_dir.join("jwt-secret"), 32)?;
    let encryption_key = persistent_secret(&args.data_dir.join("api-key-encryption-key"), 32)?;

    let thoth = DevThoth::start(DevThothOptions::default())?;
    let mut env: HashMap<String, String> = HashMap::from([
        ("BIND_ADDR".into(), args.bind.to_string()),
        ("ADMIN_BIND_ADDR".into(), args.admin_bind.to_string()),
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
    let mut config = crate::config::Config::from_map(&env)?;
    config.demo = Some(DemoSettings {
        user: DEMO_USER.into(),
        token_ttl: Duration::from_secs(TOKEN_TTL_SECS),
        thoth_ws_url: format!("ws://{}", thoth.addr()),
    });
    let token = crate::auth::mint_hs256(
        jwt_secret.as_bytes(),
        DEMO_USER,
        TOKEN_TTL_SECS,
        config.jwt.issuer.as_deref(),
        config.jwt.audience.as_deref(),
    )?;

    let mistral_url = crate::store::redact::redact(&config.mistral_ws_url);
    actix_rt::System::new().block_on(async move {
        let gateway = crate::start(config).await?;
        let public = gateway.public_addr;
        let admin = gateway.admin_addr;
        // Only now is the page's origin known (the port may have been 0).
        thoth.allow_origins(page_origins(public));
        let mistral = match args.mistral_key {
            Some(key) => {
                gateway
                    .state
                    .keys
                    .put(DEMO_USER, Provider::Mistral, key)
                    .await?;
                format!(
                    "\nMistral ({mistral_url}): {DEMO_USER}'s key is stored; try it with\n\
                     \n  websocat -b 'ws://{public}/api/audio/transcribe?provider=mistral&token={token}'\n"
                )
            }
            None => String::new(),
        };
        println!(
            "gateway listening on http://{public}\n\
             admin listening on http://{admin}\n\
             dev thoth listening on {thoth_url} ({mode})\n\
             \nchronus-gateway demo is running\n\
             \n  demo page:      http://{public}/demo\
             \n  transcription:  ws://{public}/api/audio/transcribe?token=<TOKEN>\
             \n  pool monitor:   http://{admin}/api/transcription/pool\
             \n  metrics:        http://{admin}/metrics\
             \n\nA token for user {DEMO_USER}, valid 12 hours (the demo page can fetch one too):\n\n{token}\n\
             \nTry it (the dev thoth answers each {unit} of audio with a description of it):\n\
             \n  websocat -b 'ws://{public}/api/audio/transcribe?token={token}'\n\
             {mistral}\nPress Ctrl-C to stop.\n",
            thoth_url = thoth.url(),
            mode = if args.legacy { "gateway uses its legacy protocol" } else { "gateway uses mux protocol v1" },
            // Legacy thoth answers per 3 s window, like today's thoth.
            unit = if args.legacy { "3 s window" } else { "second" },
        );
        gateway.serve_until_signal().await?;
        thoth.stop();
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn binds_default_to_loopback_and_accept_port_zero() {
        let parsed = parse_args(&[]).unwrap();
        assert_eq!(parsed.bind.to_string(), "127.0.0.1:8080");
        assert_eq!(parsed.admin_bind.to_string(), "127.0.0.1:9091");
        let parsed =
            parse_args(&args(&["--bind", "127.0.0.1:0", "--admin-bind", "[::1]:0"])).unwrap();
        assert_eq!(parsed.bind.to_string(), "127.0.0.1:0");
        assert_eq!(parsed.admin_bind.to_string(), "[::1]:0");
        assert_eq!(
            parse_args(&args(&["--bind", "localhost:0"]))
                .unwrap()
                .bind
                .port(),
            0
        );
    }

    #[test]
    fn a_bad_bind_is_refused_with_the_option_named() {
        for bad in ["127.0.0.1", "nowhere", "127.0.0.1:99999"] {
            let err = parse_args(&args(&["--bind", bad])).err().unwrap();
            assert!(err.starts_with("--bind"), "{err}");
        }
        assert!(parse_args(&args(&["--bind"])).is_err());
    }

    #[test]
    fn the_page_origins_are_what_a_browser_sends() {
        assert_eq!(
            page_origins("127.0.0.1:8080".parse().unwrap()),
            ["http://127.0.0.1:8080", "http://localhost:8080"]
        );
        assert_eq!(
            page_origins("0.0.0.0:80".parse().unwrap()),
            [
                "http://0.0.0.0:80",
                "http://localhost:80",
                "http://127.0.0.1:80"
            ]
        );
        assert_eq!(
            page_origins("[::1]:8080".parse().unwrap()),
            ["http://[::1]:8080", "http://localhost:8080"]
        );
        assert_eq!(
            page_origins("192.0.2.7:8080".parse().unwrap()),
            ["http://192.0.2.7:8080"]
        );
    }
}
