//! A mux connection the dev thoth refuses right after the handshake (4403
//! for a browser `Origin`, 4401 for a bad token): the mux protocol upgrades
//! then closes, so the refusal's reason can be read. (Legacy refusals are
//! HTTP 403s before the upgrade, like today's thoth: see `legacy.rs`.)

use std::sync::Arc;

use actix::{Actor, StreamHandler};
use actix_web_actors::ws::{self, CloseCode};

use super::{frames, DevThothStats, Shared};

/// Closes with its code as soon as it starts.
pub(super) struct RefusedSocket {
    shared: Arc<Shared>,
    close_code: u16,
    description: &'static str,
}

impl RefusedSocket {
    pub(super) fn new(shared: Arc<Shared>, close_code: u16, description: &'static str) -> Self {
        RefusedSocket {
            shared,
            close_code,
            description,
        }
    }
}

impl Actor for RefusedSocket {
    type Context = ws::WebsocketContext<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.shared.connection_opened();
        DevThothStats::add(&self.shared.stats.connections_refused, 1);
        log::info!(
            "dev thoth: refusing a connection with {} ({})",
            self.close_code,
            self.description
        );
        frames::close_and_stop(ctx, CloseCode::Other(self.close_code), self.description);
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        self.shared.connection_closed();
    }
}

impl StreamHandler<Result<ws::Message, ws::ProtocolError>> for RefusedSocket {
    fn handle(&mut self, _msg: Result<ws::Message, ws::ProtocolError>, _ctx: &mut Self::Context) {
        // Already closing: whatever the client sends is ignored.
    }
}
