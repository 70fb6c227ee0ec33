// Test instrumentation, installed before the page's own scripts: wraps
// WebSocket to record what the page sent and received (with arrival times),
// so the test can compare the transcriptions the gateway sent with what the
// page inserted, and check the audio against the dev thoth's answers. The
// page's code is not changed by it.
(() => {
  const probe = {
    frames: [], // every binary frame sent, as a copy of its float32 samples
    firstFrameAt: null,
    textSent: [],
    messages: [], // { at, message } for every text frame received
    openedAt: null,
    protocol: null,
    close: null, // { at, code, wasClean }
  };
  window.chronusProbe = probe;
  const NativeWebSocket = window.WebSocket;
  window.WebSocket = class ProbedWebSocket extends NativeWebSocket {
    constructor(url, protocols) {
      super(url, protocols);
      this.addEventListener('open', () => {
        probe.openedAt = Date.now();
        probe.protocol = this.protocol;
      });
      this.addEventListener('message', (event) => {
        probe.messages.push({ at: Date.now(), message: JSON.parse(event.data) });
      });
      this.addEventListener('close', (event) => {
        probe.close = { at: Date.now(), code: event.code, wasClean: event.wasClean };
      });
    }

    send(data) {
      if (typeof data === 'string') {
        probe.textSent.push(data);
      } else {
        probe.firstFrameAt ??= Date.now();
        probe.frames.push(new Float32Array(data.slice(0)));
      }
      super.send(data);
    }
  };

  /** What the dev thoth (mux) answers for each whole second of the audio sent:
   *  `second N: rms R checksum C`, FNV-1a over the samples' f32 LE bytes. */
  probe.expectedTranscriptions = () => {
    const total = probe.frames.reduce((n, frame) => n + frame.length, 0);
    const samples = new Float32Array(total);
    let offset = 0;
    for (const frame of probe.frames) {
      samples.set(frame, offset);
      offset += frame.length;
    }
    const texts = [];
    for (let second = 0; (second + 1) * 16000 <= total; second++) {
      const window = samples.subarray(second * 16000, (second + 1) * 16000);
      const bytes = new Uint8Array(window.buffer, window.byteOffset, window.byteLength);
      let hash = 0x811c9dc5;
      for (const byte of bytes) hash = Math.imul(hash ^ byte, 0x01000193) >>> 0;
      let sumSquares = 0;
      for (const sample of window) sumSquares += sample * sample;
      const rms = Math.sqrt(sumSquares / window.length);
      texts.push(`second ${second}: rms ${rms.toFixed(4)} checksum ${hash.toString(16).padStart(8, '0')}`);
    }
    return { secondsSent: total / 16000, texts };
  };
})();
