//! The same load straight to the fake thoth over one mux socket ("direct"):
//! what the gateway does upstream, minus the gateway.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::time::{sleep_until, timeout, timeout_at, Instant};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

use crate::audio::find_ack;
use crate::load::{client_config, LoadPlan, Mode, Timeline, Ws, CONNECT_TIMEOUT, DRAIN_TIMEOUT};
use crate::thoth::MUX_SUBPROTOCOL;
use crate::track::{micros, LoadResult, Track};

/// Session `i`'s uuid in direct mode: a fixed prefix, then the index.
fn direct_session_id(i: usize) -> Uuid {
    Uuid::from_u128(0x6265_6e63_6800_4000_8000_0000_0000_0000 | i as u128)
}

fn direct_session_index(id: &str) -> Option<usize> {
    let id = Uuid::parse_str(id).ok()?.as_u128();
    let i = (id & 0xffff_ffff) as usize;
    (direct_session_id(i).as_u128() == id).then_some(i)
}

/// The text between `"<key>":"` and the next quote.
fn json_str<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let start = text.find(key)? + key.len();
    let rest = &text[start..];
    Some(&rest[..rest.find('"')?])
}

/// What the gateway does upstream, minus the gateway: every session's audio
/// on one mux socket, the same schedule, the same checks.
pub async fn direct(
    addr: SocketAddr,
    plan: &LoadPlan,
    tl: Timeline,
    result: Rc<RefCell<LoadResult>>,
) {
    let ws = match timeout(CONNECT_TIMEOUT, open_mux_socket(addr)).await {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => {
            let mut r = result.borrow_mut();
            r.failures.connect += plan.sessions as u64;
            return r.error(e);
        }
        Err(_) => {
            let mut r = result.borrow_mut();
            r.failures.connect += plan.sessions as u64;
            return r.error("mux connect timed out".into());
        }
    };
    let (mut sink, mut stream) = ws.split();
    let tracks: RefCell<Vec<Track>> = RefCell::new(
        (0..plan.sessions)
            .map(|i| Track::new(i as u32, plan.profile))
            .collect(),
    );
    let ids: Vec<Uuid> = (0..plan.sessions).map(direct_session_id).collect();
    let acked = tokio::sync::Notify::new();
    let ended = std::cell::Cell::new(0usize);

    let writer = async {
        let outcome: Result<(), String> = async {
            for id in &ids {
                let start = format!(
                    r#"{{"type":"session.start","session_id":"{id}","encoding":"f32le","sample_rate":16000,"offset_ms":0}}"#
                );
                sink.feed(Message::text(start)).await.map_err(|e| e.to_string())?;
            }
            sink.flush().await.map_err(|e| e.to_string())?;
            result.borrow_mut().sessions_ready += plan.sessions as u64;
            match plan.mode {
                Mode::Flood => direct_flood_writer(&mut sink, &tracks, &ids, plan, tl, &result, &acked).await?,
                _ => direct_paced_writer(&mut sink, &tracks, &ids, plan, tl, &result).await?,
            }
            for track in tracks.borrow_mut().iter_mut() {
                track.ended = true;
            }
            for id in &ids {
                let end = format!(r#"{{"type":"session.end","session_id":"{id}"}}"#);
                sink.feed(Message::text(end)).await.map_err(|e| e.to_string())?;
            }
            sink.flush().await.map_err(|e| e.to_string())
        }
        .await;
        if let Err(e) = outcome {
            result.borrow_mut().error(format!("direct writer: {e}"));
        }
    };

    let reader = async {
        let deadline = tl.window_end() + DRAIN_TIMEOUT;
        while ended.get() < plan.sessions {
            let message = match timeout_at(deadline, stream.next()).await {
                Err(_) => break,
                Ok(Some(Ok(m))) => m,
                Ok(_) => {
                    result.borrow_mut().error("the mux socket closed".into());
                    break;
                }
            };
            let Message::Text(text) = message else {
                continue;
            };
            let text = text.as_str();
            let Some(index) = json_str(text, r#""session_id":""#).and_then(direct_session_index)
            else {
                result
                    .borrow_mut()
                    .error(format!("unroutable: {text:.120}"));
                continue;
            };
            let mut tracks = tracks.borrow_mut();
            let track = &mut tracks[index];
            if let Some(ack) = find_ack(text, r#""text":""#) {
                track.on_ack(ack, &tl, &mut result.borrow_mut());
                acked.notify_one();
            } else if text.contains(r#""type":"session.done""#) {
                track.done = true;
                ended.set(ended.get() + 1);
            } else if text.contains(r#""type":"error""#) {
                let mut r = result.borrow_mut();
                r.failures.error_event += 1;
                r.error(format!("thoth error: {text:.160}"));
                track.done = true;
                ended.set(ended.get() + 1);
            }
        }
    };
    futures_util::future::join(writer, reader).await;
    {
        let mut r = result.borrow_mut();
        for track in tracks.borrow_mut().iter_mut() {
            track.finish(&mut r);
        }
    }
    if let Ok(mut ws) = sink.reunite(stream) {
        let _ = timeout(Duration::from_secs(1), ws.close(None)).await;
    }
}

async fn open_mux_socket(addr: SocketAddr) -> Result<Ws, String> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let mut request = format!("ws://{addr}/mux")
        .into_client_request()
        .map_err(|e| e.to_string())?;
    request.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_static(MUX_SUBPROTOCOL),
    );
    let (ws, _) =
        tokio_tungstenite::client_async_with_config(request, stream, Some(client_config()))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
    Ok(ws)
}

type MuxSink = futures_util::stream::SplitSink<Ws, Message>;

/// Sends each session's frames on its schedule: sessions are bucketed by
/// the millisecond of their phase, and each millisecond's bucket goes out
/// with one flush, as the gateway's writer batches what is queued.
async fn direct_paced_writer(
    sink: &mut MuxSink,
    tracks: &RefCell<Vec<Track>>,
    ids: &[Uuid],
    plan: &LoadPlan,
    tl: Timeline,
    result: &RefCell<LoadResult>,
) -> Result<(), String> {
    let interval = plan.interval();
    let slots = interval.as_millis().max(1) as usize;
    let mut due: Vec<Instant> = (0..plan.sessions).map(|i| tl.start_of(plan, i)).collect();
    let mut buckets: Vec<Vec<usize>> = vec![Vec::new(); slots];
    for (i, d) in due.iter().enumerate() {
        let phase = (d.into_std() - tl.t0).as_millis() as usize % slots;
        buckets[phase].push(i);
    }
    let mut tick = Instant::from_std(tl.t0);
    let mut slot = 0usize;
    while tick < tl.window_end() {
        sleep_until(tick).await;
        let now = Instant::now();
        let mut fed = false;
        for &i in &buckets[slot] {
            while due[i] <= now && due[i] < tl.window_end() {
                let frame = {
                    let mut r = result.borrow_mut();
                    if now >= tl.window_start() {
                        let _ = r.send_lag.record(micros(now - due[i]));
                    }
                    tracks.borrow_mut()[i].next_frame(ids[i].as_bytes(), &tl, &mut r)
                };
                sink.feed(Message::Binary(frame))
                    .await
                    .map_err(|e| e.to_string())?;
                fed = true;
                due[i] += interval;
            }
        }
        if fed {
            sink.flush().await.map_err(|e| e.to_string())?;
        }
        tick += Duration::from_millis(1);
        slot = (slot + 1) % slots;
    }
    Ok(())
}

/// Keeps `plan.window` frames in flight for every session on the one socket.
async fn direct_flood_writer(
    sink: &mut MuxSink,
    tracks: &RefCell<Vec<Track>>,
    ids: &[Uuid],
    plan: &LoadPlan,
    tl: Timeline,
    result: &RefCell<LoadResult>,
    acked: &tokio::sync::Notify,
) -> Result<(), String> {
    let window = plan.window.max(1);
    sleep_until(Instant::from_std(tl.t0)).await;
    while Instant::now() < tl.window_end() {
        let mut frames = Vec::new();
        {
            let mut tracks = tracks.borrow_mut();
            let mut r = result.borrow_mut();
            for (i, track) in tracks.iter_mut().enumerate() {
                while track.pending.len() < window {
                    frames.push(track.next_frame(ids[i].as_bytes(), &tl, &mut r));
                }
            }
        }
        for frame in frames {
            sink.feed(Message::Binary(frame))
                .await
                .map_err(|e| e.to_string())?;
        }
        sink.flush().await.map_err(|e| e.to_string())?;
        let _ = timeout_at(tl.window_end(), acked.notified()).await;
    }
    Ok(())
}
