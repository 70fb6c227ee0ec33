//! Opening an upstream WebSocket: TLS roots, headers, handshake checks and the
//! retry policy shared by thoth and Mistral.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use actix_codec::Framed;
use awc::error::{ConnectError, SendRequestError, WsClientError};
use awc::http::header::{HeaderName, HeaderValue, SEC_WEBSOCKET_PROTOCOL};
use awc::{ws, BoxedSocket};
use rand::Rng;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

use crate::config::ConfigError;

/// A connected upstream socket.
pub type WsFramed = Framed<BoxedSocket, ws::Codec>;

/// How long one connection attempt (TCP + TLS + upgrade) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Attempts after the first one before giving up (PROTOCOL.md 3).
pub const CONNECT_RETRIES: u32 = 3;

/// Installs the process-wide rustls crypto provider awc expects; harmless when
/// already installed.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// TLS settings for `wss://` upstreams: the system roots plus an optional
/// private CA (PEM file).
pub fn tls_config(extra_ca: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, ConfigError> {
    let mut roots = rustls::RootCertStore::empty();
    // Unreadable system certificates are skipped: the private CA may be all we need.
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    if let Some(path) = extra_ca {
        let certs = CertificateDer::pem_file_iter(path)
            .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
            .map_err(|e| ConfigError {
                var: "THOTH_CA_CERT",
                problem: format!("cannot read PEM certificates from {}: {e}", path.display()),
            })?;
        if certs.is_empty() {
            return Err(ConfigError {
                var: "THOTH_CA_CERT",
                problem: format!("{} holds no certificate", path.display()),
            });
        }
        for cert in certs {
            roots.add(cert).map_err(|e| ConfigError {
                var: "THOTH_CA_CERT",
                problem: format!("unusable CA certificate: {e}"),
            })?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ConfigError {
            var: "THOTH_CA_CERT",
            problem: format!("TLS setup failed: {e}"),
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Where and how to connect.
#[derive(Clone)]
pub struct WsTarget {
    pub url: String,
    pub subprotocol: Option<&'static str>,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub max_frame_bytes: usize,
    pub tls: Arc<rustls::ClientConfig>,
}

/// Why a connection attempt failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectFailure {
    /// Network error, timeout, or a 5xx: worth retrying.
    Unreachable(String),
    /// The upstream refused the handshake (HTTP 401/403): our credentials,
    /// or (today's thoth, whose every refusal is a 403) it is busy.
    Refused(u16),
    /// Any other answer that retrying will not change.
    Rejected(String),
}

impl ConnectFailure {
    fn retryable(&self) -> bool {
        matches!(self, ConnectFailure::Unreachable(_))
    }
}

impl std::fmt::Display for ConnectFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectFailure::Unreachable(why) => write!(f, "unreachable: {why}"),
            ConnectFailure::Refused(status) => write!(f, "refused (HTTP {status})"),
            ConnectFailure::Rejected(why) => write!(f, "rejected: {why}"),
        }
    }
}

/// An open socket and the subprotocol the server selected.
pub struct Connected {
    pub framed: WsFramed,
    pub subprotocol: Option<String>,
}

/// One attempt. Never sends an `Origin` header (thoth refuses browsers by it).
pub async fn open(target: &WsTarget) -> Result<Connected, ConnectFailure> {
    // awc clients are bound to the current thread; building one per attempt is
    // cheap next to a TCP + TLS handshake.
    let client = awc::Client::builder()
        .connector(
            awc::Connector::new()
                .rustls_0_23(target.tls.clone())
                .timeout(CONNECT_TIMEOUT),
        )
        .timeout(CONNECT_TIMEOUT)
        .finish();
    let mut request = client
        .ws(target.url.as_str())
        .max_frame_size(target.max_frame_bytes);
    if let Some(protocol) = target.subprotocol {
        request = request.protocols([protocol]);
    }
    for (name, value) in &target.headers {
        request = request.set_header(name.clone(), value.clone());
    }
    let (response, framed) = request.connect().await.map_err(classify)?;
    let subprotocol = response
        .headers()
        .get(SEC_WEBSOCKET_PROTOCOL)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_string());
    let framed = framed.into_map_codec(|codec| codec.max_size(target.max_frame_bytes));
    Ok(Connected {
        framed,
        subprotocol,
    })
}

fn classify(err: WsClientError) -> ConnectFailure {
    match err {
        WsClientError::InvalidResponseStatus(status)
            if status.as_u16() == 401 || status.as_u16() == 403 =>
        {
            ConnectFailure::Refused(status.as_u16())
        }
        WsClientError::InvalidResponseStatus(status) if status.is_server_error() => {
            ConnectFailure::Unreachable(format!("HTTP {status}"))
        }
        WsClientError::InvalidResponseStatus(status) => {
            ConnectFailure::Rejected(format!("HTTP {status}"))
        }
        WsClientError::SendRequest(e) if is_untrusted_certificate(&e) => {
            ConnectFailure::Rejected(e.to_string())
        }
        WsClientError::SendRequest(e) => ConnectFailure::Unreachable(e.to_string()),
        other => ConnectFailure::Rejected(other.to_string()),
    }
}

/// Whether the TLS handshake failed on thoth's certificate: retrying cannot
/// make an untrusted certificate trusted, so the session hears at once.
/// (awc's errors do not chain `source()`, hence the explicit match.)
fn is_untrusted_certificate(err: &SendRequestError) -> bool {
    let SendRequestError::Connect(ConnectError::Io(io)) = err else {
        return false;
    };
    matches!(
        io.get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>()),
        Some(rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented)
    )
}

/// Tries once, then retries `CONNECT_RETRIES` times with exponential backoff
/// (base, 2×base, 4×base, each plus up to 50 % jitter so that many gateways do
/// not reconnect in lockstep). `on_retry` hears of every failed attempt.
pub async fn open_with_retries(
    target: &WsTarget,
    backoff_base: Duration,
    mut on_failure: impl FnMut(u32, &ConnectFailure),
) -> Result<Connected, ConnectFailure> {
    let mut attempt = 0;
    loop {
        match open(target).await {
            Ok(connected) => return Ok(connected),
            Err(failure) => {
                on_failure(attempt, &failure);
                if !failure.retryable() || attempt >= CONNECT_RETRIES {
                    return Err(failure);
                }
                let delay = backoff_base * 2u32.pow(attempt);
                let jitter = rand::rng().random_range(0.0..0.5);
                actix_rt::time::sleep(delay.mul_f64(1.0 + jitter)).await;
                attempt += 1;
            }
        }
    }
}
