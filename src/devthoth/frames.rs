//! What every dev thoth socket does with WebSocket frames before its protocol
//! sees them: answer pings, honour close, report protocol errors.

use actix::ActorContext;
use actix_web_actors::ws::{self, CloseCode, CloseReason, ProtocolError};
use bytes::Bytes;

/// A complete data message.
#[derive(Debug)]
pub(crate) enum DataMessage {
    Text(String),
    Binary(Bytes),
}

/// Handles the control side of one received frame and returns its data
/// message, if any. Closes the socket (and stops the actor) on a protocol
/// error or a client close.
pub(crate) fn receive<A>(
    received: Result<ws::Message, ProtocolError>,
    ctx: &mut ws::WebsocketContext<A>,
) -> Option<DataMessage>
where
    A: actix::Actor<Context = ws::WebsocketContext<A>>,
{
    let message = match received {
        Ok(message) => message,
        Err(err) => {
            log::debug!("dev thoth: websocket protocol error: {err}");
            let code = match err {
                ProtocolError::Overflow => CloseCode::Size,
                _ => CloseCode::Protocol,
            };
            close_and_stop(ctx, code, "protocol error");
            return None;
        }
    };
    match message {
        ws::Message::Text(text) => Some(DataMessage::Text(text.to_string())),
        ws::Message::Binary(bytes) => Some(DataMessage::Binary(bytes)),
        ws::Message::Continuation(_) => {
            // Neither awc (the gateway) nor browsers fragment messages, and
            // actix-web-actors does not expose the continuation item type to
            // reassemble them: refuse rather than misread audio.
            close_and_stop(
                ctx,
                CloseCode::Unsupported,
                "fragmented messages are not supported",
            );
            None
        }
        ws::Message::Ping(payload) => {
            ctx.pong(&payload);
            None
        }
        ws::Message::Pong(_) | ws::Message::Nop => None,
        ws::Message::Close(reason) => {
            // Echo the client's close, as RFC 6455 asks, then end the socket.
            ctx.close(reason);
            ctx.stop();
            None
        }
    }
}

/// Sends a close frame with `code` and stops the actor (which ends the TCP
/// connection once the frame is written).
pub(crate) fn close_and_stop<A>(
    ctx: &mut ws::WebsocketContext<A>,
    code: impl Into<CloseCode>,
    description: &str,
) where
    A: actix::Actor<Context = ws::WebsocketContext<A>>,
{
    ctx.close(Some(CloseReason {
        code: code.into(),
        description: Some(description.to_owned()),
    }));
    ctx.stop();
}
