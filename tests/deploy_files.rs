//! Keeps the deployment files honest: `.env.example` lists exactly what the
//! gateway reads, `docker-compose.yml` sets nothing else on the gateway, keeps
//! the admin port private, checks every service's health, and Prometheus
//! scrapes the admin port. Read with real parsers (serde_yaml), not greps.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use chronus_gateway::config::Config;
use serde_yaml::Value;

/// The compose service running the gateway.
const GATEWAY_SERVICE: &str = "gateway";
/// The compose service running the dev thoth.
const DEV_THOTH_SERVICE: &str = "dev-thoth";
/// Container port of the public listener (published).
const PUBLIC_PORT: u16 = 8080;
/// Container port of the admin listener (never published).
const ADMIN_PORT: u16 = 9091;

/// Variables the gateway reads outside `src/config/`: (name, file, the code
/// that reads it). The test checks the code is still there.
const READ_OUTSIDE_CONFIG: &[(&str, &str, &str)] =
    &[("RUST_LOG", "src/logging.rs", "env_logger::Env::default()")];

fn repo_file(path: &str) -> String {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("cannot read {path}: {e}"))
}

fn yaml_file(path: &str) -> Value {
    serde_yaml::from_str(&repo_file(path)).unwrap_or_else(|e| panic!("{path} is not YAML: {e}"))
}

// ---- reading Rust source ---------------------------------------------------

/// A string literal of a Rust source file and the code just before it.
struct Literal<'a> {
    value: String,
    code_before: &'a str,
}

/// The string literals of `source`, skipping comments and char literals.
/// Enough of a Rust lexer for this crate's own sources: plain, byte and raw
/// strings, line and (nested) block comments, chars vs lifetimes.
fn string_literals(source: &str) -> Vec<Literal<'_>> {
    let bytes = source.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'/' if bytes.get(i + 1) == Some(&b'/') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                let mut depth = 0;
                while i < bytes.len() {
                    if bytes[i..].starts_with(b"/*") {
                        depth += 1;
                        i += 2;
                    } else if bytes[i..].starts_with(b"*/") {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
            }
            b'r' if matches!(bytes.get(i + 1), Some(b'"' | b'#')) && starts_token(bytes, i) => {
                let start = i;
                let mut j = i + 1;
                let mut hashes = 0;
                while bytes.get(j) == Some(&b'#') {
                    hashes += 1;
                    j += 1;
                }
                if bytes.get(j) != Some(&b'"') {
                    i = j; // `r#ident`, a raw identifier
                    continue;
                }
                let body_start = j + 1;
                let closing = format!("\"{}", "#".repeat(hashes));
                let body_len = source[body_start..]
                    .find(&closing)
                    .expect("raw string is closed");
                out.push(Literal {
                    value: source[body_start..body_start + body_len].to_string(),
                    code_before: &source[..start],
                });
                i = body_start + body_len + closing.len();
            }
            b'"' => {
                let start = i;
                let mut value = String::new();
                i += 1;
                while bytes[i] != b'"' {
                    if bytes[i] == b'\\' {
                        value.push(bytes[i + 1] as char);
                        i += 2;
                    } else {
                        let ch = source[i..].chars().next().expect("in bounds");
                        value.push(ch);
                        i += ch.len_utf8();
                    }
                }
                i += 1;
                // A byte string's `b` prefix is part of the code before.
                out.push(Literal {
                    value,
                    code_before: &source[..start],
                });
            }
            b'\'' => {
                // 'x' or '\n' is a char literal; 'a (no closing quote) a lifetime.
                if bytes.get(i + 1) == Some(&b'\\') {
                    i += 3; // past the quote, the backslash and the escaped char
                    while bytes[i] != b'\'' {
                        i += 1;
                    }
                    i += 1;
                } else {
                    let ch_len = source[i + 1..].chars().next().map_or(1, char::len_utf8);
                    if bytes.get(i + 1 + ch_len) == Some(&b'\'') {
                        i += ch_len + 2;
                    } else {
                        i += 1;
                    }
                }
            }
            _ => i += 1,
        }
    }
    out
}

/// Whether the `r` at `i` starts a raw string (`r"`, `br"`), not the end of
/// an identifier.
fn starts_token(bytes: &[u8], i: usize) -> bool {
    let before = |k: usize| i.checked_sub(k).map(|j| bytes[j]);
    match before(1) {
        None => true,
        Some(b'b') => before(2).is_none_or(|b| !is_ident_byte(b)),
        Some(b) => !is_ident_byte(b),
    }
}

fn is_ident_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// `UPPER_CASE` with at least one underscore: the shape of every variable.
fn looks_like_env_var(s: &str) -> bool {
    let mut parts = s.split('_');
    let first = parts.next().unwrap_or_default();
    let rest: Vec<&str> = parts.collect();
    first.starts_with(|c: char| c.is_ascii_uppercase())
        && !rest.is_empty()
        && std::iter::once(first).chain(rest).all(|p| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
        })
}

/// Whether the code before a literal ends in `vars.<method>(`.
fn is_vars_call_argument(code_before: &str) -> bool {
    let Some(call) = code_before.trim_end().strip_suffix('(') else {
        return false;
    };
    let call = call.trim_end();
    let method = call.trim_end_matches(|c: char| c.is_ascii_alphanumeric() || c == '_');
    method.len() < call.len()
        && method
            .trim_end()
            .strip_suffix('.')
            .is_some_and(|receiver| receiver.trim_end().ends_with("vars"))
}

/// The configuration's sources: every file of `src/config/` except its unit
/// tests (`tests.rs`), each cut at its first `#[cfg(test)]`.
fn config_sources() -> Vec<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/config");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list src/config: {e}"))
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|path| {
            path.extension().is_some_and(|ext| ext == "rs")
                && path.file_name().is_some_and(|name| name != "tests.rs")
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "src/config/ holds no source file");
    files
        .iter()
        .map(|path| {
            let source = std::fs::read_to_string(path)
                .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
            let code = source
                .split("#[cfg(test)]")
                .next()
                .expect("split yields at least one part");
            code.to_string()
        })
        .collect()
}

/// The variables `src/config/` reads: every `"UPPER_CASE"` literal passed
/// to a `vars.…(` lookup, outside its unit tests.
fn variables_read_by_config() -> BTreeSet<String> {
    let mut read = BTreeSet::new();
    let mut named = BTreeSet::new();
    for code in config_sources() {
        let literals = string_literals(&code);
        read.extend(
            literals
                .iter()
                .filter(|l| looks_like_env_var(&l.value) && is_vars_call_argument(l.code_before))
                .map(|l| l.value.clone()),
        );
        named.extend(
            literals
                .iter()
                .filter(|l| looks_like_env_var(&l.value))
                .map(|l| l.value.clone()),
        );
    }
    // A variable named anywhere else in src/config/ (an error message, a
    // direct std::env::var) must also be read through `vars`, or this test
    // would not see how it is read.
    let stray: Vec<_> = named.difference(&read).collect();
    assert!(
        stray.is_empty(),
        "src/config/ names {stray:?} but never reads them through `vars.…(\"NAME\")`"
    );
    read
}

/// Everything the gateway reads: src/config/ plus the few read elsewhere.
fn variables_read_by_gateway() -> BTreeSet<String> {
    let mut names = variables_read_by_config();
    for (name, file, code) in READ_OUTSIDE_CONFIG {
        assert!(
            repo_file(file).contains(code),
            "{file} no longer contains `{code}`, which reads {name}: update READ_OUTSIDE_CONFIG"
        );
        names.insert(name.to_string());
    }
    names
}

// ---- .env.example ------------------------------------------------------------

/// One variable line of `.env.example`.
#[derive(Debug)]
struct ExampleVar {
    name: String,
    value: String,
    /// `# NAME=value`: optional, shown with its default or an example.
    commented_out: bool,
    /// The line just above, which must be its one-line comment.
    comment: Option<String>,
}

/// A variable line of `.env.example`: `NAME=value` or `# NAME=value`.
fn variable_line(line: &str) -> Option<(&str, &str, bool)> {
    let trimmed = line.trim();
    let (body, commented_out) = match trimmed.strip_prefix('#') {
        Some(rest) => (rest.trim_start(), true),
        None => (trimmed, false),
    };
    let (name, value) = body.split_once('=')?;
    looks_like_env_var(name).then_some((name, value, commented_out))
}

/// Parses `.env.example`; `#` lines that are not variable lines are prose.
fn env_example() -> Vec<ExampleVar> {
    let text = repo_file(".env.example");
    let mut vars = Vec::new();
    let mut previous: Option<&str> = None;
    for line in text.lines() {
        if let Some((name, value, commented_out)) = variable_line(line) {
            let comment = previous
                .filter(|p| variable_line(p).is_none())
                .and_then(|p| p.trim().strip_prefix('#'))
                .map(|c| c.trim().to_string())
                .filter(|c| !c.is_empty());
            vars.push(ExampleVar {
                name: name.to_string(),
                value: value.to_string(),
                commented_out,
                comment,
            });
        }
        previous = Some(line);
    }
    vars
}

#[test]
fn env_example_lists_exactly_the_variables_the_gateway_reads() {
    let read = variables_read_by_gateway();
    for anchor in [
        "BIND_ADDR",
        "ADMIN_BIND_ADDR",
        "JWT_SECRET",
        "THOTH_RETRY_BASE_MS",
        "SHUTDOWN_GRACE_SECS",
    ] {
        assert!(
            read.contains(anchor),
            "the source reader missed {anchor}: {read:?}"
        );
    }
    let listed: Vec<String> = env_example().into_iter().map(|v| v.name).collect();
    let unique: BTreeSet<String> = listed.iter().cloned().collect();
    assert_eq!(unique.len(), listed.len(), "a variable is listed twice");
    let missing: Vec<_> = read.difference(&unique).collect();
    let unknown: Vec<_> = unique.difference(&read).collect();
    assert!(missing.is_empty(), ".env.example lacks {missing:?}");
    assert!(unknown.is_empty(), ".env.example lists unread {unknown:?}");
}

#[test]
fn env_example_comments_every_variable_and_uses_placeholders_and_loopback() {
    let vars = env_example();
    for var in &vars {
        assert!(
            var.comment.is_some(),
            "{} has no one-line comment above it",
            var.name
        );
    }
    let by_name: BTreeMap<&str, &ExampleVar> = vars.iter().map(|v| (v.name.as_str(), v)).collect();
    for secret in ["JWT_SECRET", "API_KEY_ENCRYPTION_KEY", "THOTH_STREAM_TOKEN"] {
        assert!(
            by_name[secret].value.starts_with("REPLACE"),
            "{secret} must be an obvious placeholder"
        );
    }
    // Required settings are set (uncommented); listeners stay on loopback.
    for required in ["JWT_SECRET", "API_KEY_ENCRYPTION_KEY"] {
        assert!(!by_name[required].commented_out, "{required} is required");
    }
    for listener in ["BIND_ADDR", "ADMIN_BIND_ADDR"] {
        assert!(
            by_name[listener].value.starts_with("127.0.0.1:"),
            "{listener} defaults to loopback"
        );
    }
}

#[test]
fn env_example_values_including_commented_ones_are_a_valid_configuration() {
    let all: std::collections::HashMap<String, String> = env_example()
        .into_iter()
        .map(|v| (v.name, v.value))
        .collect();
    let config = Config::from_map(&all).unwrap_or_else(|e| panic!(".env.example: {e}"));
    assert_eq!(config.bind_addr.port(), PUBLIC_PORT);
    assert_eq!(config.admin_bind_addr.port(), ADMIN_PORT);
}

// ---- docker-compose.yml ----------------------------------------------------------

fn compose_services() -> serde_yaml::Mapping {
    yaml_file("docker-compose.yml")["services"]
        .as_mapping()
        .expect("docker-compose.yml has services")
        .clone()
}

fn service<'a>(services: &'a serde_yaml::Mapping, name: &str) -> &'a Value {
    services
        .get(name)
        .unwrap_or_else(|| panic!("docker-compose.yml has no service {name}"))
}

fn scalar(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Null => String::new(),
        other => panic!("not a scalar: {other:?}"),
    }
}

/// A service's `environment:`, in either of compose's forms (map or list of
/// `NAME=value`).
fn environment(service: &Value) -> BTreeMap<String, String> {
    match &service["environment"] {
        Value::Mapping(map) => map.iter().map(|(k, v)| (scalar(k), scalar(v))).collect(),
        Value::Sequence(list) => list
            .iter()
            .map(|entry| {
                let entry = scalar(entry);
                let (name, value) = entry.split_once('=').unwrap_or((&entry, ""));
                (name.to_string(), value.to_string())
            })
            .collect(),
        Value::Null => BTreeMap::new(),
        other => panic!("environment is neither a map nor a list: {other:?}"),
    }
}

/// Container ports a service publishes to the host, from `ports:` in its
/// short (`[ip:][host:]container[/proto]`, ranges allowed) or long form.
fn published_container_ports(service: &Value) -> Vec<std::ops::RangeInclusive<u16>> {
    let Some(ports) = service["ports"].as_sequence() else {
        return Vec::new();
    };
    ports
        .iter()
        .map(|entry| {
            let container = match entry {
                Value::Mapping(_) => scalar(&entry["target"]),
                short => {
                    let short = scalar(short);
                    short.rsplit(':').next().unwrap_or_default().to_string()
                }
            };
            let container = container.split('/').next().unwrap_or_default();
            let (low, high) = container.split_once('-').unwrap_or((container, container));
            let parse = |p: &str| -> u16 {
                p.parse()
                    .unwrap_or_else(|e| panic!("port {p:?} of {entry:?}: {e}"))
            };
            parse(low)..=parse(high)
        })
        .collect()
}

/// `host:port` of a `ws://` URL or `host:port` of a listen address.
fn port_of(addr: &str) -> u16 {
    let authority = addr.split("://").last().unwrap_or(addr);
    let authority = authority.split('/').next().unwrap_or_default();
    authority
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {addr:?}"))
}

fn host_of(url: &str) -> &str {
    let rest = url.split("://").nth(1).unwrap_or(url);
    let authority = rest.split('/').next().unwrap_or_default();
    let host_port = authority.rsplit('@').next().unwrap_or_default();
    host_port.split(':').next().unwrap_or_default()
}

#[test]
fn compose_sets_only_variables_the_gateway_reads() {
    let read: BTreeSet<String> = env_example().into_iter().map(|v| v.name).collect();
    let services = compose_services();
    let gateway = service(&services, GATEWAY_SERVICE);
    assert!(
        gateway.get("env_file").is_none(),
        "the gateway's variables are listed under `environment:` so this test sees them"
    );
    let env = environment(gateway);
    assert!(!env.is_empty());
    let unknown: Vec<_> = env.keys().filter(|name| !read.contains(*name)).collect();
    assert!(
        unknown.is_empty(),
        "compose sets {unknown:?} on the gateway, which it never reads"
    );
}

#[test]
fn compose_wires_the_gateway_to_its_neighbours() {
    let services = compose_services();
    let env = environment(service(&services, GATEWAY_SERVICE));
    assert_eq!(port_of(&env["BIND_ADDR"]), PUBLIC_PORT);
    // 0.0.0.0 so Prometheus reaches it on the compose network.
    assert_eq!(env["ADMIN_BIND_ADDR"], format!("0.0.0.0:{ADMIN_PORT}"));

    let thoth_url = &env["THOTH_WS_URL"];
    assert_eq!(host_of(thoth_url), DEV_THOTH_SERVICE);
    let dev_thoth = service(&services, DEV_THOTH_SERVICE);
    let command: Vec<String> = dev_thoth["command"]
        .as_sequence()
        .expect("dev-thoth command is a list")
        .iter()
        .map(scalar)
        .collect();
    let bind = command
        .iter()
        .skip_while(|arg| *arg != "--bind")
        .nth(1)
        .expect("dev-thoth --bind ADDR");
    assert_eq!(
        &command[..2],
        ["chronus-gateway", "dev-thoth"],
        "same image, dev-thoth subcommand"
    );
    assert!(bind.starts_with("0.0.0.0:"));
    assert_eq!(port_of(bind), port_of(thoth_url));

    let database_url = &env["DATABASE_URL"];
    assert!(database_url.starts_with("postgres://"));
    let postgres = service(&services, host_of(database_url));
    assert!(scalar(&postgres["image"]).starts_with("postgres:15"));
}

#[test]
fn compose_publishes_the_public_port_but_never_the_admin_port() {
    let services = compose_services();
    for (name, svc) in &services {
        for ports in published_container_ports(svc) {
            assert!(
                !ports.contains(&ADMIN_PORT),
                "service {name:?} publishes the admin port {ADMIN_PORT}"
            );
        }
    }
    let gateway_ports = published_container_ports(service(&services, GATEWAY_SERVICE));
    assert!(
        gateway_ports.iter().any(|p| p.contains(&PUBLIC_PORT)),
        "the public port {PUBLIC_PORT} is published"
    );
}

#[test]
fn every_compose_service_has_a_healthcheck() {
    let services = compose_services();
    assert!(
        services.len() >= 5,
        "gateway, postgres, dev thoth, prometheus, grafana"
    );
    for (name, svc) in &services {
        let check = &svc["healthcheck"];
        assert!(
            check["disable"].as_bool() != Some(true),
            "{name:?} disables its healthcheck"
        );
        let test = check["test"]
            .as_sequence()
            .unwrap_or_else(|| panic!("service {name:?} has no healthcheck test"));
        assert!(
            test.len() >= 2,
            "service {name:?}: healthcheck test {test:?}"
        );
    }
    let gateway_check = format!(
        "{:?}",
        service(&services, GATEWAY_SERVICE)["healthcheck"]["test"]
    );
    assert!(gateway_check.contains(&format!(":{ADMIN_PORT}/healthz")));
}

#[test]
fn prometheus_scrapes_the_gateway_admin_port() {
    let services = compose_services();
    let (name, prometheus) = services
        .iter()
        .find(|(_, svc)| {
            svc["image"]
                .as_str()
                .is_some_and(|image| image.starts_with("prom/prometheus"))
        })
        .expect("a Prometheus service");
    let mounts_config = prometheus["volumes"]
        .as_sequence()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .any(|v| v.starts_with("./deploy/prometheus.yml:"));
    assert!(mounts_config, "{name:?} mounts deploy/prometheus.yml");

    let config = yaml_file("deploy/prometheus.yml");
    let wanted = format!("{GATEWAY_SERVICE}:{ADMIN_PORT}");
    let scrapes_admin = config["scrape_configs"]
        .as_sequence()
        .expect("scrape_configs")
        .iter()
        .filter(|job| {
            job["metrics_path"]
                .as_str()
                .is_none_or(|path| path == "/metrics")
        })
        .flat_map(|job| {
            job["static_configs"]
                .as_sequence()
                .cloned()
                .unwrap_or_default()
        })
        .flat_map(|sc| sc["targets"].as_sequence().cloned().unwrap_or_default())
        .any(|target| target.as_str() == Some(wanted.as_str()));
    assert!(
        scrapes_admin,
        "deploy/prometheus.yml scrapes {wanted}/metrics"
    );
}

// ---- alert rules and Grafana in compose -----------------------------------

/// `(host path, container path)` of a service's bind mounts (`./x:/y[:ro]`).
fn bind_mounts(service: &Value) -> Vec<(String, String)> {
    service["volumes"]
        .as_sequence()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .filter(|v| v.starts_with("./"))
        .map(|v| {
            let mut parts = v.split(':');
            let host = parts.next().unwrap_or_default().trim_start_matches("./");
            (
                host.to_string(),
                parts.next().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// The repository file a container path maps to through `mounts`, if any.
fn host_file(mounts: &[(String, String)], container_path: &str) -> Option<String> {
    mounts.iter().find_map(|(host, target)| {
        let rest = container_path.strip_prefix(target.as_str())?;
        (rest.is_empty() || rest.starts_with('/')).then(|| format!("{host}{rest}"))
    })
}

/// The compose service whose image starts with `image`.
fn service_with_image<'a>(services: &'a serde_yaml::Mapping, image: &str) -> (String, &'a Value) {
    services
        .iter()
        .find(|(_, svc)| svc["image"].as_str().is_some_and(|i| i.starts_with(image)))
        .map(|(name, svc)| (scalar(name), svc))
        .unwrap_or_else(|| panic!("no service runs {image}"))
}

#[test]
fn compose_prometheus_finds_every_rule_file_its_config_names() {
    let services = compose_services();
    let (_, prometheus) = service_with_image(&services, "prom/prometheus");
    let mounts = bind_mounts(prometheus);
    let config_in_container = "/etc/prometheus/prometheus.yml";
    assert_eq!(
        host_file(&mounts, config_in_container).as_deref(),
        Some("deploy/prometheus.yml")
    );
    let rule_files = yaml_file("deploy/prometheus.yml")["rule_files"]
        .as_sequence()
        .cloned()
        .unwrap_or_default();
    assert!(
        !rule_files.is_empty(),
        "deploy/prometheus.yml loads alert rules"
    );
    for rule_file in rule_files {
        let relative = scalar(&rule_file);
        // Prometheus resolves rule files relative to its config file.
        let in_container = format!("/etc/prometheus/{relative}");
        let host = host_file(&mounts, &in_container)
            .unwrap_or_else(|| panic!("{in_container} is not mounted into Prometheus"));
        assert_eq!(
            host,
            format!("deploy/{relative}"),
            "same path on both sides"
        );
        yaml_file(&host);
    }
}

#[test]
fn compose_grafana_is_provisioned_with_prometheus_and_the_dashboards() {
    let services = compose_services();
    let (prometheus_name, _) = service_with_image(&services, "prom/prometheus");
    let (name, grafana) = service_with_image(&services, "grafana/");
    let mounts = bind_mounts(grafana);
    let provisioning = host_file(&mounts, "/etc/grafana/provisioning")
        .unwrap_or_else(|| panic!("{name:?} mounts its provisioning directory"));
    assert_eq!(provisioning, "deploy/grafana/provisioning");

    // The datasource points at the compose Prometheus service.
    let datasources =
        yaml_file(&format!("{provisioning}/datasources/prometheus.yml"))["datasources"].clone();
    let prometheus_ds = datasources
        .as_sequence()
        .into_iter()
        .flatten()
        .find(|ds| ds["type"].as_str() == Some("prometheus"))
        .expect("a prometheus datasource");
    assert_eq!(
        scalar(&prometheus_ds["url"]),
        format!("http://{prometheus_name}:9090")
    );

    // The dashboard provider reads the directory the dashboards are mounted on.
    let providers =
        yaml_file(&format!("{provisioning}/dashboards/chronus.yml"))["providers"].clone();
    let dashboards_in_container = scalar(&providers[0]["options"]["path"]);
    let dashboards = host_file(&mounts, &dashboards_in_container)
        .unwrap_or_else(|| panic!("{dashboards_in_container} is not mounted into {name:?}"));
    let mut found = 0;
    for entry in std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(&dashboards))
        .expect("dashboards directory")
    {
        let path = entry.expect("dir entry").path();
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).expect("dashboard"))
                .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));
        assert!(json["panels"].as_array().is_some_and(|p| !p.is_empty()));
        found += 1;
    }
    assert!(found >= 1, "{dashboards} holds a dashboard");

    // Published on the host's loopback only, with a password from .env.
    let ports: Vec<String> = grafana["ports"]
        .as_sequence()
        .into_iter()
        .flatten()
        .map(scalar)
        .collect();
    assert!(
        !ports.is_empty() && ports.iter().all(|p| p.starts_with("127.0.0.1:")),
        "{ports:?}"
    );
    let password = &environment(grafana)["GF_SECURITY_ADMIN_PASSWORD"];
    assert!(
        password.starts_with("${") && password.contains(":?"),
        "{password}"
    );
}

// ---- Dockerfile, .dockerignore, docs -------------------------------------

#[test]
fn dockerfile_is_multi_stage_non_root_and_checks_health_on_the_admin_port() {
    let dockerfile = repo_file("Dockerfile");
    let instructions: Vec<&str> = dockerfile
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .collect();
    let starting = |keyword: &str| -> Vec<&str> {
        instructions
            .iter()
            .copied()
            .filter(|l| l.split_whitespace().next() == Some(keyword))
            .collect()
    };
    assert!(starting("FROM").len() >= 2, "multi-stage build");
    assert_eq!(starting("EXPOSE"), [format!("EXPOSE {PUBLIC_PORT}")]);
    let user = starting("USER");
    assert!(
        user.len() == 1 && !user[0].contains("root") && user[0] != "USER 0",
        "runs as a non-root user: {user:?}"
    );
    let healthcheck = dockerfile
        .split("HEALTHCHECK")
        .nth(1)
        .expect("a HEALTHCHECK")
        .split("\n\n")
        .next()
        .unwrap_or_default();
    assert!(healthcheck.contains(&format!(":{ADMIN_PORT}/healthz")));

    let dockerignore = repo_file(".dockerignore");
    let ignored: Vec<&str> = dockerignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .collect();
    for must in ["target/", ".git/", ".env"] {
        assert!(ignored.contains(&must), ".dockerignore lacks {must}");
    }
}

#[test]
fn deployment_doc_describes_every_metric() {
    let doc = repo_file("docs/deployment.md");
    let metrics: BTreeSet<String> = string_literals(&repo_file("src/metrics.rs"))
        .into_iter()
        .map(|l| l.value)
        .filter(|v| v.starts_with("chronus_") && !v.contains(' '))
        .collect();
    assert!(metrics.len() >= 10, "found {metrics:?}");
    let undocumented: Vec<_> = metrics
        .iter()
        .filter(|m| !doc.contains(&format!("| `{m}")))
        .collect();
    assert!(
        undocumented.is_empty(),
        "docs/deployment.md has no table row for {undocumented:?}"
    );
}

#[test]
fn the_literal_reader_understands_this_crates_syntax() {
    let source = r##"
        // "NOT_A_VAR" in a comment
        /* "NOR_THIS" /* nested */ */
        let c = '"'; let q = '\''; fn f<'a>(x: &'a str) {}
        vars.get("FIRST_VAR"); vars
            .parsed( "SECOND_VAR", 1);
        ConfigError::new("THIRD_VAR", r#"raw "quoted""#);
        let b = br"\";
        other.get("NOT_VARS_CALL");
    "##;
    let literals = string_literals(source);
    let values: Vec<&str> = literals.iter().map(|l| l.value.as_str()).collect();
    assert_eq!(
        values,
        [
            "FIRST_VAR",
            "SECOND_VAR",
            "THIRD_VAR",
            r#"raw "quoted""#,
            "\\",
            "NOT_VARS_CALL"
        ]
    );
    let via_vars: Vec<&str> = literals
        .iter()
        .filter(|l| is_vars_call_argument(l.code_before))
        .map(|l| l.value.as_str())
        .collect();
    assert_eq!(via_vars, ["FIRST_VAR", "SECOND_VAR"]);
    assert!(looks_like_env_var("THOTH_RETRY_BASE_MS"));
    assert!(!looks_like_env_var("HS256"));
    assert!(!looks_like_env_var("Not_A_VAR"));
}
