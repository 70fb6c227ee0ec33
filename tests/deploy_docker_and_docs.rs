//! Keeps the Dockerfile, `.dockerignore` and the deployment doc honest.

#[path = "common/deploy.rs"]
mod deploy;

use std::collections::BTreeSet;

use deploy::*;

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
