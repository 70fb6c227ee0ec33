//! chronus-gateway: the authenticated WebSocket gateway between the chronus
//! web app and its speech-to-text backends (thoth, Mistral Voxtral realtime).
//!
//! `lib.rs` only wires modules together so that tests, the demo and `main.rs`
//! start the very same server.

pub mod audio;
pub mod auth;
pub mod config;
pub mod cpu_load;
pub mod demo;
pub mod devthoth;
pub mod error;
pub mod http;
pub mod logging;
pub mod metrics;
pub mod session;
pub mod state;
pub mod store;
pub mod upstream;
pub mod wire;

use std::net::SocketAddr;
use std::sync::Arc;

use actix::Arbiter;
use actix_web::dev::ServerHandle;
use actix_web::middleware::Logger;
use actix_web::{web, App, HttpServer};

use crate::auth::JwtValidator;
use crate::config::Config;
use crate::session::limits::SessionLimiter;
use crate::state::AppState;
use crate::upstream::thoth::ThothPool;

/// A browser connection whose sent data stays unacknowledged this long (it
/// stopped reading, or vanished) is aborted by the kernel: without it a
/// non-reading peer could hold its session forever.
const TCP_USER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Sets `TCP_NODELAY` and `TCP_USER_TIMEOUT` on each accepted browser connection.
fn on_browser_connect(connection: &dyn std::any::Any, _: &mut actix_web::dev::Extensions) {
    if let Some(tcp) = connection.downcast_ref::<actix_web::rt::net::TcpStream>() {
        // Results are small frames: Nagle would hold one back until the
        // browser's delayed ACK, up to its next audio frame (measured: p99
        // 21.5 ms → 6.2 ms at 100 sessions, docs/performance.md).
        if let Err(e) = tcp.set_nodelay(true) {
            log::debug!("cannot set TCP_NODELAY: {e}");
        }
        if let Err(e) = socket2::SockRef::from(tcp).set_tcp_user_timeout(Some(TCP_USER_TIMEOUT)) {
            log::debug!("cannot set TCP_USER_TIMEOUT: {e}");
        }
    }
}

/// Access log without query strings: they may carry tokens.
const ACCESS_LOG_FORMAT: &str = "%{r}a %{method}xi %U %s %b %Dms";

/// A started gateway: its bound addresses and the handles to stop it.
pub struct RunningGateway {
    pub public_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub state: web::Data<AppState>,
    public: ServerHandle,
    admin: ServerHandle,
    upstream_arbiter: Arbiter,
    shutdown: tokio::sync::watch::Sender<bool>,
}

impl RunningGateway {
    /// Stops both listeners and the upstream actors at once.
    pub async fn stop(self) {
        self.public.stop(false).await;
        self.admin.stop(false).await;
        self.upstream_arbiter.stop();
    }

    /// Graceful drain: stop accepting, tell every session
    /// `SERVER_SHUTTING_DOWN` (1012) — except those that sent `end`, which get
    /// up to `SHUTDOWN_GRACE_SECS` for their `done` — then close the upstreams.
    pub async fn drain(self) {
        log::info!(
            "draining: {} session(s) open, grace {:?}",
            self.state.sessions.total(),
            self.state.config.shutdown_grace
        );
        let _ = self.shutdown.send(true);
        // Stops accepting now; waits for open connections up to the server's
        // shutdown timeout (the grace plus a moment for the last close frames).
        self.public.stop(true).await;
        self.admin.stop(true).await;
        self.upstream_arbiter.stop();
        log::info!("drained");
    }

    /// Serves until SIGTERM or SIGINT, then drains.
    pub async fn serve_until_signal(self) -> std::io::Result<()> {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = terminate.recv() => log::info!("SIGTERM received"),
            _ = tokio::signal::ctrl_c() => log::info!("SIGINT received"),
        }
        self.drain().await;
        Ok(())
    }
}

fn access_log() -> Logger {
    Logger::new(ACCESS_LOG_FORMAT).custom_request_replace("method", |req| req.method().to_string())
}

/// `chronus-gateway reencrypt-keys`: moves every stored API key to the
/// current encryption key version (see `keys` on rotation). Returns how many
/// rows were re-encrypted. Runs on the current actix system.
pub async fn reencrypt_keys(config: &Config) -> Result<usize, Box<dyn std::error::Error>> {
    let cipher = store::key_rotation::cipher_from_config(config)?;
    let database_url = config.database_url.clone();
    // Exposed only to the driver, on the blocking thread.
    let database =
        web::block(move || store::db::Database::connect(database_url.expose())).await??;
    let store = store::keys::ApiKeyStore::new(database, Arc::new(cipher));
    Ok(store.reencrypt_all().await?)
}

/// Starts the public and admin listeners on the current actix system.
pub async fn start(config: Config) -> Result<RunningGateway, Box<dyn std::error::Error>> {
    upstream::connect::install_crypto_provider();
    metrics::init();
    let config = Arc::new(config);
    // Everything that can fail comes first, so a refused start leaves nothing running.
    let thoth_tls = upstream::connect::tls_config(config.thoth_ca_cert.as_deref())?;
    let jwt = JwtValidator::new(&config.jwt)?;
    let mistral = upstream::mistral::MistralEndpoint::from_config(&config)?;
    let cipher = store::key_rotation::cipher_from_config(&config)?;
    // Connecting blocks (and may wait for PostgreSQL): keep it off this thread.
    let database_url = config.database_url.clone();
    let database =
        web::block(move || store::db::Database::connect(database_url.expose())).await??;
    log::info!(
        "database: {} ({})",
        database.backend(),
        database.redacted_url()
    );
    let keys = store::keys::ApiKeyStore::new(database, Arc::new(cipher));
    // CPU utilisation, a capacity signal for admission.
    actix_rt::spawn(cpu_load::sample());
    let upstream_arbiter = Arbiter::new();
    let thoth = ThothPool::start(&config, thoth_tls, &upstream_arbiter.handle());
    let (shutdown, shutdown_signal) = tokio::sync::watch::channel(false);
    let state = web::Data::new(AppState {
        shutdown: shutdown_signal,
        jwt,
        sessions: SessionLimiter::new(config.max_sessions, config.max_sessions_per_user),
        thoth,
        keys,
        mistral,
        mistral_sessions: upstream::mistral::sessions::MistralSessions::new(),
        note_sessions: Default::default(),
        config: config.clone(),
    });

    let public_state = state.clone();
    let public = HttpServer::new(move || {
        App::new()
            .app_data(public_state.clone())
            .wrap(access_log())
            .route(
                "/api/audio/transcribe",
                web::get().to(session::routes::transcribe),
            )
            .route(
                "/api/notes/transcribe-audio",
                web::get().to(session::routes::transcribe_note),
            )
            .configure(http::web::routes)
            .configure(http::settings::routes)
            .configure(http::mistral::routes)
    })
    .on_connect(on_browser_connect)
    .shutdown_timeout(config.shutdown_grace.as_secs() + 2)
    .disable_signals()
    .bind(config.bind_addr)?;
    let public_addr = public.addrs()[0];
    let public_server = public.run();

    let admin_state = state.clone();
    let admin = HttpServer::new(move || {
        App::new()
            .app_data(admin_state.clone())
            .configure(http::admin::routes)
    })
    .workers(1)
    .disable_signals()
    .shutdown_timeout(1)
    .bind(config.admin_bind_addr)?;
    let admin_addr = admin.addrs()[0];
    let admin_server = admin.run();

    let (public, admin) = (public_server.handle(), admin_server.handle());
    // The servers run until their handles stop them.
    actix_rt::spawn(public_server);
    actix_rt::spawn(admin_server);
    log::info!("public listener on {public_addr}, admin listener on {admin_addr}");
    Ok(RunningGateway {
        public_addr,
        admin_addr,
        state,
        public,
        admin,
        upstream_arbiter,
        shutdown,
    })
}
