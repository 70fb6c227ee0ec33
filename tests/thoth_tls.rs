//! `wss://` to thoth (PROTOCOL.md 3: "verified against the system roots plus
//! `THOTH_CA_CERT` when given"): a private CA and a `localhost` leaf made at
//! test time, a TLS terminator in front of the dev thoth, a real gateway.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use chronus_gateway::config::Config;
use chronus_gateway::devthoth::{describe_audio, DevThoth, DevThothOptions, STREAM_PATH};
use common::harness::Harness;
use common::*;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use serde_json::{json, Value};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

const TRANSCRIBE: &str = "/api/audio/transcribe";

/// A private CA and a server certificate it signed.
struct TestPki {
    ca_pem: String,
    leaf_der: CertificateDer<'static>,
    leaf_key_der: Vec<u8>,
    leaf_key_pem: String,
}

impl TestPki {
    /// A CA (CA:TRUE, may sign certificates) and a leaf for `localhost` and
    /// `127.0.0.1` (CA:FALSE, serverAuth): rustls rejects a self-signed CA
    /// certificate used as the server's own.
    fn generate() -> TestPki {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "chronus-gateway test CA");
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();

        let leaf_key = KeyPair::generate().unwrap();
        let mut leaf_params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        leaf_params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        leaf_params.is_ca = IsCa::ExplicitNoCa;
        leaf_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        leaf_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let leaf = leaf_params.signed_by(&leaf_key, &ca).unwrap();

        TestPki {
            ca_pem: ca.pem(),
            leaf_der: leaf.der().clone(),
            leaf_key_der: leaf_key.serialize_der(),
            leaf_key_pem: leaf_key.serialize_pem(),
        }
    }

    fn server_config(&self) -> Arc<rustls::ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.leaf_key_der.clone()));
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![self.leaf_der.clone()], key)
            .unwrap();
        // A client offering no ALPN is still served; one offering only
        // something else (say h2) is refused, as an HTTP/1.1-only thoth would.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    }
}

/// Writes `contents` to `dir/name` (a folder of the test's [`Harness`],
/// removed with it even when the test panics).
fn write_file(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

/// What one completed TLS handshake showed.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Handshake {
    server_name: Option<String>,
    alpn: Option<String>,
}

/// Accepts TLS on 127.0.0.1:0 and pipes the plaintext both ways to a plain
/// backend (a dev thoth): a `wss://` thoth as the gateway sees one. Runs on
/// its own thread and tokio runtime, independent of the test's actix System.
struct TlsTerminator {
    addr: SocketAddr,
    handshakes: Arc<Mutex<Vec<Handshake>>>,
    failed_handshakes: Arc<AtomicU64>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl TlsTerminator {
    fn start(config: Arc<rustls::ServerConfig>, backend: SocketAddr) -> TlsTerminator {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let handshakes = Arc::new(Mutex::new(Vec::new()));
        let failed_handshakes = Arc::new(AtomicU64::new(0));
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let (seen, failed) = (handshakes.clone(), failed_handshakes.clone());
        let thread = std::thread::Builder::new()
            .name("tls-terminator".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                runtime.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                    loop {
                        let tcp = tokio::select! {
                            _ = &mut stopped => break,
                            accepted = listener.accept() => match accepted {
                                Ok((tcp, _)) => tcp,
                                Err(_) => continue,
                            },
                        };
                        let (acceptor, seen, failed) =
                            (acceptor.clone(), seen.clone(), failed.clone());
                        tokio::spawn(async move {
                            let mut tls = match acceptor.accept(tcp).await {
                                Ok(tls) => tls,
                                Err(_) => {
                                    failed.fetch_add(1, Ordering::SeqCst);
                                    return;
                                }
                            };
                            let (_, session) = tls.get_ref();
                            seen.lock()
                                .unwrap_or_else(PoisonError::into_inner)
                                .push(Handshake {
                                    server_name: session.server_name().map(str::to_owned),
                                    alpn: session
                                        .alpn_protocol()
                                        .map(|p| String::from_utf8_lossy(p).into_owned()),
                                });
                            let Ok(mut plain) = tokio::net::TcpStream::connect(backend).await
                            else {
                                return;
                            };
                            let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                        });
                    }
                });
                // Dropping the runtime drops every piped connection.
            })
            .unwrap();
        TlsTerminator {
            addr,
            handshakes,
            failed_handshakes,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// `wss://localhost:PORT/stream-audio`.
    fn url(&self) -> String {
        format!("wss://localhost:{}{STREAM_PATH}", self.addr.port())
    }

    fn handshakes(&self) -> Vec<Handshake> {
        self.handshakes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn failed_handshakes(&self) -> u64 {
        self.failed_handshakes.load(Ordering::SeqCst)
    }
}

impl Drop for TlsTerminator {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// What the dev thoth says for `seconds` whole seconds of constant `level`.
fn expected_finals(level: f32, whole_seconds: u64) -> Vec<String> {
    let second = vec![level; 16_000];
    (0..whole_seconds)
        .map(|i| describe_audio(i, &second))
        .collect()
}

fn texts_of(messages: &[Value], ty: &str) -> Vec<String> {
    messages
        .iter()
        .filter(|m| m["type"] == ty)
        .map(|m| m["data"].as_str().unwrap().to_string())
        .collect()
}

#[actix_rt::test]
async fn a_wss_thoth_signed_by_thoth_ca_cert_is_trusted() {
    let pki = TestPki::generate();
    let mut harness = Harness::new();
    let ca_file = write_file(&harness.temp_dir("tls"), "ca.pem", &pki.ca_pem);
    let thoth = DevThoth::start(DevThothOptions::default()).unwrap();
    let tls = TlsTerminator::start(pki.server_config(), thoth.addr());
    let mut env = base_env(&tls.url());
    env.insert("THOTH_CA_CERT".into(), ca_file.display().to_string());
    let gateway = start_gateway(&env).await;

    let token = token_for("over-tls");
    let mut client = connect(&ws_url(&gateway, TRANSCRIBE), Auth::Query(&token), None)
        .await
        .client;
    let ready = client.expect_type("ready").await;
    assert_eq!(ready["provider"], "thoth");
    for frame in f32_audio(0.25, 2.0).chunks(1280) {
        client.send_binary(frame.to_vec()).await;
    }
    client.send_json(json!({"type": "end"})).await;
    let (messages, close) = client.until_close(Duration::from_secs(10)).await;
    let expected = expected_finals(0.25, 2);
    assert_eq!(texts_of(&messages, "transcription"), expected);
    let done = messages.last().unwrap();
    assert_eq!(done["type"], "done");
    assert_eq!(done["data"], expected.join(" "));
    assert_eq!(close, Some(1000));

    // One TLS connection, carrying SNI `localhost` and ALPN http/1.1, and the
    // session really went through it to the dev thoth.
    assert_eq!(
        tls.handshakes(),
        vec![Handshake {
            server_name: Some("localhost".into()),
            alpn: Some("http/1.1".into()),
        }]
    );
    assert_eq!(tls.failed_handshakes(), 0);
    assert_eq!(thoth.stats().connections_accepted(), 1);
    assert_eq!(thoth.stats().mux_sessions_started(), 1);
    let report = pool_report(&gateway).await;
    assert_eq!(report["thoth"][0]["url"], tls.url());
    assert!(report["thoth"][0]["lastError"].is_null(), "{report}");

    gateway.stop().await;
    drop(tls);
    thoth.stop();
}

#[actix_rt::test]
async fn a_wss_thoth_with_an_unknown_ca_is_refused() {
    let pki = TestPki::generate();
    let thoth = DevThoth::start(DevThothOptions::default()).unwrap();
    let tls = TlsTerminator::start(pki.server_config(), thoth.addr());
    // Credentials in the URL must not reach monitoring.
    let url_with_credentials = format!(
        "wss://gw:hunter2@localhost:{}{STREAM_PATH}?token=s3cret",
        tls.addr.port()
    );
    let gateway = start_gateway(&base_env(&url_with_credentials)).await;

    let token = token_for("untrusting");
    let mut client = connect(&ws_url(&gateway, TRANSCRIBE), Auth::Query(&token), None)
        .await
        .client;
    let (messages, close) = client.until_close(Duration::from_secs(10)).await;
    assert_eq!(messages.len(), 1, "{messages:?}");
    assert_eq!(messages[0]["type"], "error");
    assert_eq!(messages[0]["code"], "THOTH_UNAVAILABLE");
    assert_eq!(close, Some(1011));

    // The gateway aborted every handshake; nothing reached the dev thoth.
    assert!(tls.handshakes().is_empty(), "{:?}", tls.handshakes());
    // A certificate problem is not retried: one handshake, not four. (The
    // terminator may record the failure just after the gateway gave up.)
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while tls.failed_handshakes() == 0 && std::time::Instant::now() < deadline {
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
    actix_rt::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(tls.failed_handshakes(), 1);
    assert_eq!(thoth.stats().connections_accepted(), 0);

    let report = pool_report(&gateway).await;
    let endpoint = &report["thoth"][0];
    assert_eq!(endpoint["refCount"], 0);
    let url = endpoint["url"].as_str().unwrap();
    // The one redactor masks the credentials (src/redact.rs).
    let masked = format!(
        "{}?token=***",
        tls.url().replacen("wss://", "wss://gw:***@", 1)
    );
    assert_eq!(url, masked, "credentials masked");
    assert!(!url.contains("hunter2") && !url.contains("s3cret"));
    let last_error = endpoint["lastError"].as_str().unwrap();
    assert!(
        last_error.contains("certificate") && last_error.contains("UnknownIssuer"),
        "lastError names the certificate problem: {last_error}"
    );
    assert!(!last_error.contains("hunter2") && !last_error.contains("s3cret"));

    gateway.stop().await;
    drop(tls);
    thoth.stop();
}

#[actix_rt::test]
async fn an_unreadable_thoth_ca_cert_stops_start_up_naming_the_variable() {
    let pki = TestPki::generate();
    let missing = std::env::temp_dir().join(format!(
        "chronus-test-{}-missing-ca.pem",
        uuid::Uuid::new_v4().simple()
    ));
    let mut harness = Harness::new();
    let dir = harness.temp_dir("tls");
    let empty = write_file(&dir, "empty.pem", "");
    let key_only = write_file(&dir, "key-only.pem", &pki.leaf_key_pem);
    let not_pem = write_file(&dir, "not-pem.pem", "this is not a certificate\n");

    for path in [
        missing.as_path(),
        empty.as_path(),
        key_only.as_path(),
        not_pem.as_path(),
    ] {
        let mut env = base_env("wss://localhost:1/stream-audio");
        env.insert("THOTH_CA_CERT".into(), path.display().to_string());
        let config = Config::from_map(&env).expect("the path itself is not checked here");
        let error = match chronus_gateway::start(config).await {
            Ok(gateway) => {
                gateway.stop().await;
                panic!("start-up succeeded with THOTH_CA_CERT={}", path.display());
            }
            Err(error) => error.to_string(),
        };
        assert!(
            error.contains("THOTH_CA_CERT"),
            "{}: the error names the variable: {error}",
            path.display()
        );
        assert!(
            error.contains(&path.display().to_string()),
            "{}: the error names the file: {error}",
            path.display()
        );
    }
}
