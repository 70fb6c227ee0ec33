//! `--micro`: the CPU cost of the gateway's own per-frame library work, out of
//! any socket: what each relayed frame pays besides I/O and actor messaging.
//! Timed with the thread's CPU clock, so other processes' load does not
//! inflate it (cache effects still can).

use std::collections::HashMap;
use std::hint::black_box;
use std::time::Instant;

use chronus_gateway::metrics;
use chronus_gateway::wire::browser::{now_rfc3339, ServerEvent};
use chronus_gateway::wire::thoth_mux::{audio_frame, MuxEvent};
use uuid::Uuid;

use crate::audio::{ack_text, fill_frame, RunningChecksum, FRAME_BYTES};

const ITERATIONS: u32 = 200_000;

/// This thread's CPU time, in nanoseconds.
fn thread_cpu_ns() -> u128 {
    // SAFETY: clock_gettime writes into the struct we own.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u128 * 1_000_000_000 + ts.tv_nsec as u128
}

/// Nanoseconds of CPU per call of `f`, best of 3 rounds.
fn time(mut f: impl FnMut(u32)) -> f64 {
    (0..3)
        .map(|_| {
            let start = thread_cpu_ns();
            for i in 0..ITERATIONS {
                f(i);
            }
            (thread_cpu_ns() - start) as f64 / f64::from(ITERATIONS)
        })
        .fold(f64::INFINITY, f64::min)
}

/// Prints the table; returns it as (name, ns per call).
pub fn run() -> Vec<(&'static str, f64)> {
    let id = Uuid::new_v4();
    let mut audio = vec![0u8; FRAME_BYTES];
    fill_frame(1, 1, &mut audio);
    let mut sum = RunningChecksum::default();
    sum.update(&audio);
    let ack = format!(
        r#"{{"type":"transcription","session_id":"{id}","text":"{}","is_final":false}}"#,
        ack_text(1280, sum, (1, 1))
    );
    let sessions: HashMap<Uuid, u32> = (0..1000).map(|i| (Uuid::new_v4(), i)).collect();
    let keys: Vec<Uuid> = sessions.keys().copied().collect();
    metrics::init();

    let rows: Vec<(&'static str, f64)> = vec![
        (
            "MuxEvent::parse (thoth ack → event)",
            time(|_| {
                black_box(MuxEvent::parse(black_box(&ack)));
            }),
        ),
        (
            "mux_frame::audio_frame (uuid + 1280 B)",
            time(|_| {
                black_box(audio_frame(black_box(&id), black_box(&audio)));
            }),
        ),
        (
            "now_rfc3339 (chrono)",
            time(|_| {
                black_box(now_rfc3339());
            }),
        ),
        (
            "ServerEvent::Partial to_json (with timestamp)",
            time(|_| {
                black_box(
                    ServerEvent::Partial {
                        data: black_box("ack 1280 0123456789abcdef"),
                        text: black_box("ack 1280 0123456789abcdef"),
                        timestamp: now_rfc3339(),
                    }
                    .to_json(),
                );
            }),
        ),
        (
            "metrics per relayed frame (4 × record, 2 × observe)",
            time(|i| {
                metrics::CLIENT_TO_GATEWAY.record(1280);
                metrics::GATEWAY_TO_UPSTREAM.record(1296);
                metrics::UPSTREAM_TO_GATEWAY.record(100);
                metrics::GATEWAY_TO_CLIENT.record(100);
                metrics::LATENCY_UPSTREAM.observe(f64::from(i % 100) * 1e-6);
                metrics::LATENCY_DOWNSTREAM.observe(f64::from(i % 100) * 1e-6);
            }),
        ),
        (
            "Instant::now × 5 (client.rs per frame)",
            time(|_| {
                for _ in 0..5 {
                    black_box(Instant::now());
                }
            }),
        ),
        (
            "HashMap<Uuid> lookup, 1000 sessions (SipHash)",
            time(|i| {
                black_box(sessions.get(&keys[i as usize % keys.len()]));
            }),
        ),
    ];
    println!("per-frame library work, CPU ns per call (best of 3 × {ITERATIONS}):");
    for (name, ns) in &rows {
        println!("  {name:<55} {ns:>8.0} ns");
    }
    rows
}
