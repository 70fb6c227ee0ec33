//! Keeps `docker-compose.yml` honest: it sets nothing on the gateway the
//! gateway does not read, wires it to its neighbours, keeps the admin port
//! private, checks every service's health, and Prometheus and Grafana find
//! their rules and dashboards. Read with serde_yaml, not greps.

#[path = "common/deploy.rs"]
mod deploy;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use deploy::*;
use serde_yaml::Value;

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
