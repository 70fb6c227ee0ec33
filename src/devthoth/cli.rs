//! `chronus-gateway dev-thoth`: the command line that runs a dev thoth until
//! Ctrl-C.

use super::{DevThoth, DevThothOptions, DEFAULT_CLI_BIND};

/// `chronus-gateway dev-thoth [--bind ADDR] [--legacy-only] [--token TOKEN]
/// [--window-secs SECS] [--no-interim] [--allow-origin ORIGIN]…`: runs a dev
/// thoth until Ctrl-C.
/// `args` are the arguments after `dev-thoth`.
pub fn run_cli(args: &[String]) -> std::io::Result<()> {
    let Some(opts) = parse_cli_args(args)? else {
        println!("{CLI_USAGE}");
        return Ok(());
    };
    let thoth = DevThoth::start(opts)?;
    let mode = if thoth.options().mux {
        "mux v1 and legacy"
    } else {
        "legacy only"
    };
    println!("dev thoth listening on {} ({mode})", thoth.url());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(tokio::signal::ctrl_c())?;
    println!("dev thoth stopping");
    thoth.stop();
    Ok(())
}

const CLI_USAGE: &str = "usage: chronus-gateway dev-thoth [--bind ADDR] [--legacy-only] \
[--token TOKEN] [--window-secs SECS] [--no-interim] [--allow-origin ORIGIN]...\n\
  --bind ADDR         listen address (default 127.0.0.1:8765)\n\
  --legacy-only       never select thoth.mux.v1 (today's thoth)\n\
  --token TOKEN       require header x-thoth-token: TOKEN (else mux: close\n\
                      4401; legacy: HTTP 403)\n\
  --window-secs SECS  legacy: seconds of audio per transcription (default 3)\n\
  --no-interim        mux: send no interim results\n\
  --allow-origin ORIGIN\n\
                      serve browsers from ORIGIN (e.g. http://localhost:5173)\n\
                      instead of refusing them; repeatable";

/// Parses the `dev-thoth` arguments; `Ok(None)` for `--help`.
fn parse_cli_args(args: &[String]) -> std::io::Result<Option<DevThothOptions>> {
    let invalid = |message: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, message);
    let mut opts = DevThothOptions {
        bind: DEFAULT_CLI_BIND
            .parse()
            .expect("DEFAULT_CLI_BIND is a valid socket address"),
        ..DevThothOptions::default()
    };
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .cloned()
                .ok_or_else(|| invalid(format!("{name} needs a value\n{CLI_USAGE}")))
        };
        match arg.as_str() {
            "--bind" => {
                let addr = value("--bind")?;
                opts.bind = addr
                    .parse()
                    .map_err(|err| invalid(format!("--bind {addr}: {err}")))?;
            }
            "--legacy-only" => opts.mux = false,
            "--token" => opts.stream_token = Some(value("--token")?),
            "--window-secs" => {
                let secs = value("--window-secs")?;
                opts.legacy_window_secs = secs
                    .parse::<f64>()
                    .ok()
                    .filter(|s| s.is_finite() && *s > 0.0)
                    .ok_or_else(|| {
                        invalid(format!("--window-secs {secs}: not a positive number"))
                    })?;
            }
            "--no-interim" => opts.interim_results = false,
            "--allow-origin" => opts.allowed_origins.push(value("--allow-origin")?),
            "-h" | "--help" => return Ok(None),
            other => return Err(invalid(format!("unknown argument {other:?}\n{CLI_USAGE}"))),
        }
    }
    Ok(Some(opts))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn cli_defaults_to_mux_on_the_fixed_port() {
        let opts = parse_cli_args(&[]).unwrap().unwrap();
        assert_eq!(opts.bind, DEFAULT_CLI_BIND.parse().unwrap());
        assert!(opts.mux);
        assert!(opts.stream_token.is_none());
        assert!(opts.interim_results);
    }

    #[test]
    fn cli_reads_every_flag() {
        let opts = parse_cli_args(&args(&[
            "--bind",
            "0.0.0.0:9000",
            "--legacy-only",
            "--token",
            "s3cret",
            "--window-secs",
            "3",
            "--no-interim",
            "--allow-origin",
            "http://localhost:5173",
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(opts.bind, "0.0.0.0:9000".parse().unwrap());
        assert!(!opts.mux);
        assert_eq!(opts.stream_token.as_deref(), Some("s3cret"));
        assert_eq!(opts.legacy_window_samples(), 48_000);
        assert!(!opts.interim_results);
        assert_eq!(opts.allowed_origins, vec!["http://localhost:5173"]);
    }

    #[test]
    fn cli_refuses_bad_input() {
        assert!(parse_cli_args(&args(&["--bind"])).is_err());
        assert!(parse_cli_args(&args(&["--bind", "nowhere"])).is_err());
        assert!(parse_cli_args(&args(&["--window-secs", "0"])).is_err());
        assert!(parse_cli_args(&args(&["--frobnicate"])).is_err());
        assert!(parse_cli_args(&args(&["--help"])).unwrap().is_none());
    }
}
