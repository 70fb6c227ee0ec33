//! `chronus-gateway` command line: `serve` (default), `demo`, `dev-thoth`,
//! `token`, `reencrypt-keys`.

use std::process::ExitCode;

/// Audio buffers are allocated on one thread and freed on another many
/// thousand times a second; mimalloc handles that far better than glibc.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Turns transparent huge pages off for this process. mimalloc asks for
/// them on its arenas, and then every page the gateway's buffers first touch
/// is a 2 MiB one the kernel zeroes: when sessions fall behind and their
/// buffers grow, that zeroing took 58–72% of the gateway's CPU and it never
/// caught up again (5,000 chronus sessions: 28 µs per frame with 4 KiB
/// pages, 55–79 µs and seconds of latency with huge pages, on the same
/// machine). A relay's memory is many small buffers, not a large working set.
fn no_transparent_huge_pages() {
    // SAFETY: PR_SET_THP_DISABLE takes plain integers and changes nothing
    // but this process's page policy; a kernel without it returns an error,
    // which leaves things as they were.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

const USAGE: &str = "\
chronus-gateway — authenticated WebSocket gateway for chronus transcription

USAGE:
    chronus-gateway [serve]        run the gateway (configuration from the environment / .env)
    chronus-gateway demo [--mistral-key KEY]
                                   run a self-contained demo: gateway + dev thoth + SQLite, prints a token;
                                   with --mistral-key, KEY is stored as the demo user's Mistral key
    chronus-gateway dev-thoth [--bind ADDR] [--legacy-only] [--token TOKEN] [--allow-origin ORIGIN]
                                   run the dev thoth alone (mux v1 + legacy on /stream-audio)
    chronus-gateway token --sub USER [--ttl SECS]
                                   mint an HS256 token with JWT_SECRET (for development)
    chronus-gateway reencrypt-keys re-encrypt every stored API key with the current API_KEY_ENCRYPTION_KEY
                                   (after a rotation; see docs/mistral.md)
";

fn main() -> ExitCode {
    no_transparent_huge_pages();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command = args.first().map(String::as_str).unwrap_or("serve");
    let rest = args.get(1..).unwrap_or_default();
    let result = match command {
        "serve" => serve(),
        "demo" => chronus_gateway::demo::run(rest),
        "dev-thoth" => chronus_gateway::devthoth::run_cli(rest).map_err(Into::into),
        "token" => mint_token(rest),
        "reencrypt-keys" => reencrypt_keys(),
        "-h" | "--help" | "help" => {
            print!("{USAGE}");
            Ok(())
        }
        other => Err(format!("unknown command {other:?}\n\n{USAGE}").into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Outside the logger, escaped the same way: a driver's or an
            // upstream's message may carry line breaks.
            let message = chronus_gateway::logging::escape_for_log(&e.to_string());
            eprintln!("chronus-gateway: {message}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging() {
    chronus_gateway::logging::init();
}

fn serve() -> Result<(), Box<dyn std::error::Error>> {
    // A missing .env is fine: the environment may hold everything.
    let _ = dotenvy::dotenv();
    init_logging();
    let config = chronus_gateway::config::Config::from_env()?;
    log::info!("starting with {config:?}");
    actix_rt::System::new().block_on(async move {
        let gateway = chronus_gateway::start(config).await?;
        gateway.serve_until_signal().await?;
        Ok(())
    })
}

fn reencrypt_keys() -> Result<(), Box<dyn std::error::Error>> {
    let _ = dotenvy::dotenv();
    init_logging();
    let config = chronus_gateway::config::Config::from_env()?;
    let version = config.api_key_encryption_key_version;
    actix_rt::System::new().block_on(async move {
        let moved = chronus_gateway::reencrypt_keys(&config).await?;
        println!("re-encrypted {moved} API key(s) to key version {version}");
        Ok(())
    })
}

fn mint_token(args: &[String]) -> Result<(), Box<dyn std::error::Error>> {
    let _ = dotenvy::dotenv();
    let mut sub = None;
    let mut ttl: u64 = 3600;
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        match arg.as_str() {
            "--sub" => sub = iter.next().cloned(),
            "--ttl" => ttl = iter.next().ok_or("--ttl needs a value")?.parse()?,
            other => return Err(format!("unknown option {other:?}").into()),
        }
    }
    let sub = sub.ok_or("--sub USER is required")?;
    let secret = std::env::var("JWT_SECRET").map_err(|_| "JWT_SECRET is not set")?;
    let token = chronus_gateway::auth::mint_hs256(
        secret.as_bytes(),
        &sub,
        ttl,
        std::env::var("JWT_ISSUER").ok().as_deref(),
        std::env::var("JWT_AUDIENCE").ok().as_deref(),
    )?;
    println!("{token}");
    Ok(())
}
