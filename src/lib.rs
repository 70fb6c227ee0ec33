//! chronus-gateway: the authenticated WebSocket gateway between the chronus
//! web app and its speech-to-text backends (thoth, Mistral Voxtral realtime).
//!
//! `lib.rs` only wires modules together so that tests, the demo and `main.rs`
//! start the very same server.

pub mod audio;
pub mod auth;
pub mod config;
pub mod crypto;
pub mod db;
pub mod demo;
pub mod devthoth;
pub mod error;
pub mod gateway;
pub mod http;
pub mod keys;
pub mod metrics;
pub mod protocol;
pub mod redact;
pub mod state;
pub mod upstream;

use std::net::SocketAddr;
use std::sync::Arc;

use actix::Arbiter;
use actix_web::dev::ServerHandle;
use actix_web::middleware::Logger;
use actix_web::{web, App, HttpServer};

use crate::auth::JwtValidator;
use crate::config::Config;
use crate::gateway::limits::SessionLimiter;
use crate::state::AppState;
use crate::upstream::pool::ThothPool;

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
    servers: Vec<actix_rt::task::JoinHandle<std::io::Result<()>>>,
}

impl RunningGateway {
    /// Stops both listeners and the upstream actors.
    pub async fn stop(self) {
        self.public.stop(true).await;
        self.admin.stop(true).await;
        self.upstream_arbiter.stop();
    }

    /// Resolves when both servers have stopped (e.g. after SIGTERM).
    pub async fn wait(self) -> std::io::Result<()> {
        for server in self.servers {
            server.await.map_err(std::io::Error::other)??;
        }
        self.upstream_arbiter.stop();
        Ok(())
    }
}

fn access_log() -> Logger {
    Logger::new(ACCESS_LOG_FORMAT).custom_request_replace("method", |req| req.method().to_string())
}

/// Starts the public and admin listeners on the current actix system.
pub async fn start(config: Config) -> Result<RunningGateway, Box<dyn std::error::Error>> {
    upstream::connect::install_crypto_provider();
    metrics::init();
    let config = Arc::new(config);
    let upstream_arbiter = Arbiter::new();
    let thoth = ThothPool::start(&config, &upstream_arbiter.handle())?;
    let cipher = crypto::KeyCipher::from_base64(&config.api_key_encryption_key)?;
    // Connecting blocks (and may wait for PostgreSQL): keep it off this thread.
    let database_url = config.database_url.clone();
    let database = web::block(move || db::Database::connect(&database_url)).await??;
    log::info!(
        "database: {} ({})",
        database.backend(),
        database.redacted_url()
    );
    let keys = keys::ApiKeyStore::new(database, Arc::new(cipher));
    let state = web::Data::new(AppState {
        jwt: JwtValidator::new(&config.jwt)?,
        sessions: SessionLimiter::new(config.max_sessions, config.max_sessions_per_user),
        thoth,
        keys,
        config: config.clone(),
    });

    let public_state = state.clone();
    let public = HttpServer::new(move || {
        App::new()
            .app_data(public_state.clone())
            .wrap(access_log())
            .route(
                "/api/audio/transcribe",
                web::get().to(gateway::routes::transcribe),
            )
    })
    .shutdown_timeout(config.shutdown_grace.as_secs().max(1))
    .bind(config.bind_addr)?;
    let public_addr = public.addrs()[0];
    let public = public.run();

    let admin_state = state.clone();
    let admin = HttpServer::new(move || {
        App::new()
            .app_data(admin_state.clone())
            .configure(http::admin::routes)
    })
    .workers(1)
    .bind(config.admin_bind_addr)?;
    let admin_addr = admin.addrs()[0];
    let admin = admin.run();

    log::info!("public listener on {public_addr}, admin listener on {admin_addr}");
    Ok(RunningGateway {
        public_addr,
        admin_addr,
        state,
        public: public.handle(),
        admin: admin.handle(),
        upstream_arbiter,
        servers: vec![actix_rt::spawn(public), actix_rt::spawn(admin)],
    })
}
