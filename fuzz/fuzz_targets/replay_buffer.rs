//! `ReplayBuffer` under any sequence of pushes and confirmations: bounded, and
//! it keeps exactly the pushed audio from its start position on.
#![no_main]

use bytes::Bytes;
use chronus_gateway::audio::{AudioFormat, Encoding};
use chronus_gateway::upstream::thoth::resume::ReplayBuffer;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&setup, ops)) = data.split_first() else {
        return;
    };
    let format = AudioFormat {
        encoding: if setup & 1 == 0 {
            Encoding::S16le
        } else {
            Encoding::F32le
        },
        sample_rate: 8_000,
    };
    let bps = format.encoding.bytes_per_sample() as u64;
    let max_secs = u64::from(setup >> 1) % 3;
    let mut buffer = ReplayBuffer::new(format, max_secs);
    let mut pushed = 0u64;
    for op in ops.chunks_exact(3) {
        let arg = u16::from_le_bytes([op[1], op[2]]);
        if op[0] & 1 == 0 {
            let chunk = vec![op[0]; usize::from(arg) * bps as usize];
            pushed += chunk.len() as u64;
            buffer.push(Bytes::from(chunk));
        } else {
            buffer.confirm(f64::from(arg) / 1000.0 * f64::from(op[0]));
        }
        let kept: u64 = buffer.chunks().map(|c| c.len() as u64).sum();
        assert_eq!(kept, buffer.kept_bytes());
        assert!(kept <= max_secs * 8_000 * bps);
        assert!(kept <= pushed);
    }
});
