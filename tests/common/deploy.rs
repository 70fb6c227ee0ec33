//! What the deployment-file tests share: the repository's files, read as
//! text or YAML, and the environment variables the gateway reads, found in
//! its source by a small Rust string-literal reader.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::path::Path;

use serde_yaml::Value;

/// The compose service running the gateway.
pub const GATEWAY_SERVICE: &str = "gateway";
/// The compose service running the dev thoth.
pub const DEV_THOTH_SERVICE: &str = "dev-thoth";
/// Container port of the public listener (published).
pub const PUBLIC_PORT: u16 = 8080;
/// Container port of the admin listener (never published).
pub const ADMIN_PORT: u16 = 9091;

/// Variables the gateway reads outside `src/config/`: (name, file, the code
/// that reads it). The test checks the code is still there.
pub const READ_OUTSIDE_CONFIG: &[(&str, &str, &str)] =
    &[("RUST_LOG", "src/logging.rs", "env_logger::Env::default()")];

pub fn repo_file(path: &str) -> String {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("cannot read {path}: {e}"))
}

pub fn yaml_file(path: &str) -> Value {
    serde_yaml::from_str(&repo_file(path)).unwrap_or_else(|e| panic!("{path} is not YAML: {e}"))
}

// ---- reading Rust source ---------------------------------------------------

/// A string literal of a Rust source file and the code just before it.
pub struct Literal<'a> {
    pub value: String,
    pub code_before: &'a str,
}

/// The string literals of `source`, skipping comments and char literals.
/// Enough of a Rust lexer for this crate's own sources: plain, byte and raw
/// strings, line and (nested) block comments, chars vs lifetimes.
pub fn string_literals(source: &str) -> Vec<Literal<'_>> {
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
pub fn starts_token(bytes: &[u8], i: usize) -> bool {
    let before = |k: usize| i.checked_sub(k).map(|j| bytes[j]);
    match before(1) {
        None => true,
        Some(b'b') => before(2).is_none_or(|b| !is_ident_byte(b)),
        Some(b) => !is_ident_byte(b),
    }
}

pub fn is_ident_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// `UPPER_CASE` with at least one underscore: the shape of every variable.
pub fn looks_like_env_var(s: &str) -> bool {
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
pub fn is_vars_call_argument(code_before: &str) -> bool {
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
pub fn config_sources() -> Vec<String> {
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
pub fn variables_read_by_config() -> BTreeSet<String> {
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
pub fn variables_read_by_gateway() -> BTreeSet<String> {
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
pub struct ExampleVar {
    pub name: String,
    pub value: String,
    /// `# NAME=value`: optional, shown with its default or an example.
    pub commented_out: bool,
    /// The line just above, which must be its one-line comment.
    pub comment: Option<String>,
}

/// A variable line of `.env.example`: `NAME=value` or `# NAME=value`.
pub fn variable_line(line: &str) -> Option<(&str, &str, bool)> {
    let trimmed = line.trim();
    let (body, commented_out) = match trimmed.strip_prefix('#') {
        Some(rest) => (rest.trim_start(), true),
        None => (trimmed, false),
    };
    let (name, value) = body.split_once('=')?;
    looks_like_env_var(name).then_some((name, value, commented_out))
}

/// Parses `.env.example`; `#` lines that are not variable lines are prose.
pub fn env_example() -> Vec<ExampleVar> {
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
