// chronus-transcription.js — the chronus browser transcription client.
//
// One small, dependency-free ES module for both ways the chronus web app can
// transcribe (docs/browser-client.md, /work/shared/PROTOCOL.md):
//
//   proxy  (VITE_USE_TRANSCRIPTION_PROXY === 'true'): the chronus gateway,
//          GET /api/audio/transcribe, authenticated with the user's JWT;
//   legacy (anything else): straight to thoth's /stream-audio at
//          VITE_THOTH_WS_URL, as the frontend did before the gateway.
//
// Both modes capture the microphone the same way (mono float32 little-endian,
// 16 kHz, 20 ms frames, from an AudioWorklet: pcm-worklet.js) and report
// through the same callbacks, so flipping the flag changes nothing else in the
// app:
//
//   const transcriber = createTranscriber({
//     useProxy: import.meta.env.VITE_USE_TRANSCRIPTION_PROXY === 'true',
//     thothWsUrl: import.meta.env.VITE_THOTH_WS_URL,   // legacy
//     gatewayUrl: import.meta.env.VITE_GATEWAY_URL,    // proxy; default: this page's origin
//     getToken: () => auth.currentToken(),             // proxy
//     provider: 'thoth',                               // proxy: 'thoth' | 'mistral'
//     onPartial: (text) => showInterim(text),
//     onFinal: (text) => editor.insertAtCursor(text + ' '),
//     onDone: (text) => save(text),
//     onError: (error) => toast(error.message),        // error.kind: see ErrorKind
//     onStateChange: (state) => setRecordButton(state),
//   });
//   await transcriber.start();   // asks for the microphone, connects
//   const text = await transcriber.stop();   // the session's final text
//
// start() and stop() never throw for session failures: those arrive once, in
// onError, and the state becomes 'error'. Only invalid options throw (from
// createTranscriber).
//
// Authentication (proxy): the token is offered as the WebSocket subprotocol
// pair `chronus.jwt, <token>` (PROTOCOL.md 2.2). The gateway selects
// `chronus.jwt` and never echoes the token; unlike `?token=`, the token does not
// end up in URLs, browser history or proxy logs. Without getToken (or when it
// returns nothing) no subprotocol is offered and the gateway falls back to its
// cookie.

/** The rate every chronus upstream takes, in Hz. */
export const TARGET_SAMPLE_RATE = 16000;
/** 20 ms of audio at 16 kHz. */
const FRAME_SAMPLES = 320;
/** Gateway: how long `ready` may take after the socket opens. */
const READY_TIMEOUT_MS = 10000;
/** How long stop() waits for the last results (gateway `done`, legacy socket open). */
const DONE_TIMEOUT_MS = 15000;
/** Legacy: thoth has no end-of-audio message; wait this long for a last result. */
const LEGACY_FLUSH_GRACE_MS = 1500;
/** Gateway: an application-level ping keeps idle intermediaries from closing. */
const PING_INTERVAL_MS = 20000;
/** A fresh token is sent this long before the current one expires. */
const TOKEN_REFRESH_MARGIN_MS = 60000;
/** Audio waiting for `ready`: at most 10 s (the gateway buffers as much). */
const MAX_PENDING_FRAMES = (10 * TARGET_SAMPLE_RATE) / FRAME_SAMPLES;
/** Bytes queued in the socket (about 30 s of audio) before giving up on the network. */
const MAX_BUFFERED_BYTES = 2 * 1024 * 1024;
/** The worklet must answer a flush this fast, or stop() goes on without the last 20 ms. */
const WORKLET_FLUSH_TIMEOUT_MS = 300;

const TRANSCRIBE_PATH = '/api/audio/transcribe';
const LEGACY_PATH = '/stream-audio';
const JWT_SUBPROTOCOL = 'chronus.jwt';
const PROCESSOR_NAME = 'chronus-pcm-capture';
const DEFAULT_WORKLET_URL = new URL('./pcm-worklet.js', import.meta.url).href;

/** A session's life: idle → starting → recording → stopping → idle, or → error. */
export const State = Object.freeze({
  IDLE: 'idle',
  /** Asking for the microphone and connecting. */
  STARTING: 'starting',
  /** Audio flows (proxy: after the gateway's `ready`). */
  RECORDING: 'recording',
  /** Microphone off, waiting for the last results. */
  STOPPING: 'stopping',
  /** The session failed; `onError` said why. start() tries again. */
  ERROR: 'error',
});

/**
 * Every way a session can fail, as the app shows it. The one place where
 * gateway codes, close codes and browser exceptions become readable states.
 */
export const ErrorKind = Object.freeze({
  UNAUTHORIZED: 'unauthorized',
  FORBIDDEN: 'forbidden',
  NO_API_KEY: 'no-api-key',
  BUSY: 'busy',
  RATE_LIMITED: 'rate-limited',
  UNAVAILABLE: 'unavailable',
  RECONNECTING: 'reconnecting',
  UPSTREAM_ERROR: 'upstream-error',
  BAD_REQUEST: 'bad-request',
  TIMEOUT: 'timeout',
  CONNECTION_LOST: 'connection-lost',
  MICROPHONE_DENIED: 'microphone-denied',
  MICROPHONE_UNAVAILABLE: 'microphone-unavailable',
  UNSUPPORTED: 'unsupported',
  INTERNAL: 'internal',
});

const K = ErrorKind;

/** What people read when the server gave no message. */
const DEFAULT_MESSAGES = Object.freeze({
  [K.UNAUTHORIZED]: 'Sign in again: the transcription service did not accept your session.',
  [K.FORBIDDEN]: 'This page is not allowed to use the transcription service.',
  [K.NO_API_KEY]: 'Add your Mistral API key in the settings to use Mistral.',
  [K.BUSY]: 'The transcription service is busy. Try again in a moment.',
  [K.RATE_LIMITED]: 'Audio arrived faster than the transcription service allows.',
  [K.UNAVAILABLE]: 'The transcription service is unavailable. Try again in a moment.',
  [K.RECONNECTING]: 'Connection to the transcription service lost; reconnecting.',
  [K.UPSTREAM_ERROR]: 'The transcription service could not process this recording.',
  [K.BAD_REQUEST]: 'The transcription service did not understand this client.',
  [K.TIMEOUT]: 'The transcription service did not answer in time.',
  [K.CONNECTION_LOST]: 'The connection to the transcription service was lost.',
  [K.MICROPHONE_DENIED]: 'Microphone access was denied. Allow it in the browser to record.',
  [K.MICROPHONE_UNAVAILABLE]: 'No usable microphone was found.',
  [K.UNSUPPORTED]: 'This browser cannot record here (it needs https or localhost and AudioWorklet).',
  [K.INTERNAL]: 'Something went wrong in the transcription client.',
});

/** Gateway error codes (PROTOCOL.md 2.5) → kind. */
const KIND_OF_CODE = Object.freeze({
  UNAUTHORIZED: K.UNAUTHORIZED,
  TOKEN_EXPIRED: K.UNAUTHORIZED,
  FORBIDDEN: K.FORBIDDEN,
  NO_API_KEY: K.NO_API_KEY,
  BAD_MESSAGE: K.BAD_REQUEST,
  INVALID_AUDIO_FORMAT: K.BAD_REQUEST,
  MESSAGE_TOO_LARGE: K.BAD_REQUEST,
  RATE_LIMITED: K.RATE_LIMITED,
  TOO_MANY_SESSIONS: K.BUSY,
  THOTH_BUSY: K.BUSY,
  THOTH_UNAVAILABLE: K.UNAVAILABLE,
  MISTRAL_UNAVAILABLE: K.UNAVAILABLE,
  SERVER_SHUTTING_DOWN: K.UNAVAILABLE,
  THOTH_RECONNECTING: K.RECONNECTING,
  AUTH_FAILED: K.UPSTREAM_ERROR,
  THOTH_ERROR: K.UPSTREAM_ERROR,
  MISTRAL_ERROR: K.UPSTREAM_ERROR,
  IDLE_TIMEOUT: K.TIMEOUT,
  SESSION_EXPIRED: K.TIMEOUT,
  NOTE_NOT_FOUND: K.FORBIDDEN,
  UNAVAILABLE: K.UNAVAILABLE,
  INTERNAL: K.INTERNAL,
});

/** Gateway codes after which the session goes on (no close follows). */
const NON_FATAL_CODES = new Set(['BAD_MESSAGE', 'INVALID_AUDIO_FORMAT', 'THOTH_RECONNECTING']);

/**
 * Close codes that arrive without an error message → kind. Covers the legacy
 * thoth (4401 bad stream token, 4403 browser origin refused, 1013 busy) and a
 * gateway whose error message was lost.
 */
const KIND_OF_CLOSE = Object.freeze({
  1006: K.CONNECTION_LOST,
  1008: K.BAD_REQUEST,
  1009: K.BAD_REQUEST,
  1011: K.UNAVAILABLE,
  1012: K.UNAVAILABLE,
  1013: K.BUSY,
  4400: K.BAD_REQUEST,
  4401: K.UNAUTHORIZED,
  4403: K.FORBIDDEN,
  4404: K.FORBIDDEN,
  4408: K.TIMEOUT,
  4409: K.BUSY,
  4429: K.RATE_LIMITED,
});

/** A failure, as onError receives it. */
export class TranscriptionError extends Error {
  /**
   * @param {string} kind one of ErrorKind
   * @param {string} [message] for people; the kind's default when empty
   * @param {object} [details]
   * @param {string|null} [details.code] the gateway's code (UNAUTHORIZED, THOTH_BUSY…), if any
   * @param {boolean} [details.retryable] whether the same request may succeed later
   * @param {boolean} [details.fatal] false: a notice, the session goes on
   * @param {number|null} [details.closeCode] the WebSocket close code, if the socket closed
   * @param {unknown} [details.cause]
   */
  constructor(kind, message, { code = null, retryable = false, fatal = true, closeCode = null, cause } = {}) {
    super(message || DEFAULT_MESSAGES[kind] || DEFAULT_MESSAGES[K.INTERNAL], cause === undefined ? undefined : { cause });
    this.name = 'TranscriptionError';
    this.kind = kind;
    this.code = code;
    this.retryable = retryable;
    this.fatal = fatal;
    this.closeCode = closeCode;
  }
}

/** The gateway's error envelope → TranscriptionError. */
export function errorFromEnvelope(envelope) {
  const code = typeof envelope.code === 'string' ? envelope.code : 'INTERNAL';
  const kind = KIND_OF_CODE[code] || K.INTERNAL;
  return new TranscriptionError(kind, envelope.message, {
    code,
    retryable: Boolean(envelope.retryable),
    fatal: !NON_FATAL_CODES.has(code),
  });
}

/**
 * The text of a `transcription`, `transcription.partial` or `done` event: the
 * gateway sends it as both `text` and `data` (older gateways only `data`).
 */
export function textOf(message) {
  if (typeof message.text === 'string') return message.text;
  return typeof message.data === 'string' ? message.data : null;
}

/**
 * A `status` event → what `onStatus` receives: a non-fatal notice
 * (THOTH_RECONNECTING, THOTH_RESUMED) to show quietly, never as an error.
 */
export function statusFromMessage(message) {
  return {
    code: typeof message.code === 'string' ? message.code : 'STATUS',
    message: typeof message.message === 'string' ? message.message : '',
    reconnecting: message.code === 'THOTH_RECONNECTING',
  };
}

/** A close nobody explained → TranscriptionError. */
export function errorFromClose(closeCode, reason = '') {
  const kind = KIND_OF_CLOSE[closeCode] || K.CONNECTION_LOST;
  const retryable = [K.BUSY, K.UNAVAILABLE, K.CONNECTION_LOST, K.TIMEOUT, K.RATE_LIMITED].includes(kind);
  const error = new TranscriptionError(kind, DEFAULT_MESSAGES[kind], { retryable, closeCode });
  if (reason) {
    error.reason = reason;
  }
  return error;
}

/** A getUserMedia / AudioContext exception → TranscriptionError. */
function microphoneError(exception) {
  const name = exception && exception.name;
  let kind = K.MICROPHONE_UNAVAILABLE;
  if (name === 'NotAllowedError' || name === 'SecurityError' || name === 'PermissionDeniedError') {
    kind = K.MICROPHONE_DENIED;
  } else if (name === 'TypeError' || name === 'NotSupportedError') {
    kind = K.UNSUPPORTED;
  }
  return new TranscriptionError(kind, DEFAULT_MESSAGES[kind], { cause: exception });
}

/** `ws(s)://` for an `http(s)://` or `ws(s)://` URL; relative ones resolve against the page. */
function toWebSocketUrl(raw, base) {
  const url = new URL(raw, base);
  if (url.protocol === 'http:') url.protocol = 'ws:';
  if (url.protocol === 'https:') url.protocol = 'wss:';
  if (url.protocol !== 'ws:' && url.protocol !== 'wss:') {
    throw new TypeError(`not a WebSocket or HTTP URL: ${raw}`);
  }
  return url;
}

/**
 * The gateway URL of a session: `gatewayUrl` (default: the page's origin) +
 * `/api/audio/transcribe` + query. The token is not in it.
 */
export function transcribeUrl({ gatewayUrl, provider = 'thoth', language, noteId } = {}, page = globalThis.location) {
  const base = (gatewayUrl || (page && page.origin) || '').replace(/\/+$/, '');
  const url = toWebSocketUrl(base + TRANSCRIBE_PATH, page && page.href);
  url.searchParams.set('provider', provider);
  url.searchParams.set('encoding', 'f32le');
  url.searchParams.set('sampleRate', String(TARGET_SAMPLE_RATE));
  if (language) url.searchParams.set('language', language);
  if (noteId !== undefined && noteId !== null && noteId !== '') url.searchParams.set('noteId', String(noteId));
  return url.href;
}

/** thoth's legacy URL: `${thothWsUrl}/stream-audio`, as the legacy frontend builds it. */
export function legacyUrl(thothWsUrl, page = globalThis.location) {
  let base = String(thothWsUrl || '').replace(/\/+$/, '');
  if (!base.endsWith(LEGACY_PATH)) base += LEGACY_PATH;
  return toWebSocketUrl(base, page && page.href).href;
}

/** A JWT's `exp` in milliseconds, or null (the token is opaque to the client otherwise). */
function tokenExpiryMs(token) {
  try {
    const payload = token.split('.')[1];
    const json = atob(payload.replace(/-/g, '+').replace(/_/g, '/').padEnd(Math.ceil(payload.length / 4) * 4, '='));
    const exp = JSON.parse(json).exp;
    return typeof exp === 'number' ? exp * 1000 : null;
  } catch {
    return null;
  }
}

const LITTLE_ENDIAN = new Uint8Array(new Float32Array([1]).buffer)[3] === 0x3f;

/** The frame's bytes as float32 little-endian (what both upstreams take). */
function f32le(frame) {
  if (LITTLE_ENDIAN) return frame;
  const bytes = new DataView(new ArrayBuffer(frame.length * 4));
  frame.forEach((sample, i) => bytes.setFloat32(i * 4, sample, true));
  return bytes.buffer;
}

/** Calls an app callback; an app bug must not break the session. */
function notify(callback, ...args) {
  if (typeof callback !== 'function') return;
  try {
    callback(...args);
  } catch (error) {
    console.error('chronus-transcription: a callback threw', error);
  }
}

/**
 * Creates a transcriber. Options:
 * - `useProxy` (boolean): true → gateway, false → legacy thoth.
 * - `thothWsUrl` (legacy, required): `ws(s)://host[:port]`; `/stream-audio` is appended.
 * - `gatewayUrl` (proxy): the gateway's base URL (`https://…`, `wss://…` or a
 *   path); default the page's origin. `/api/audio/transcribe` is appended.
 * - `getToken` (proxy): `() => string | Promise<string>`, the chronus JWT; called
 *   at each start and again shortly before the token expires.
 * - `provider` (proxy): `'thoth'` (default) or `'mistral'`. `language`, `noteId`: passed on.
 * - `onPartial(text, event)`: interim text, replaced by the next partial or final (proxy only).
 * - `onFinal(text, event)`: final text, in order; event has `start`/`end` seconds when known.
 * - `onDone(text, event)`: the session's final texts joined with spaces, after stop().
 * - `onError(error)`: a TranscriptionError; `error.fatal === false` is a notice.
 * - `onStatus(status, event)`: a quiet notice that needs no action
 *   (`status.code` THOTH_RECONNECTING, then THOTH_RESUMED; proxy only).
 * - `onStateChange(state, {previous, error})`: see State.
 * - `workletUrl`: where pcm-worklet.js is served; default next to this module.
 * - `resampling`: `'browser'` (default: ask the AudioContext for 16 kHz, fall
 *   back to the worklet where the browser refuses) or `'worklet'` (run at the
 *   device's rate and resample in the worklet).
 * - `audioConstraints`: getUserMedia audio constraints (default: mono, echo
 *   cancellation on, noise suppression and gain control off — speech models
 *   want the real signal).
 */
export function createTranscriber(options = {}) {
  const useProxy = options.useProxy === true || options.useProxy === 'true';
  if (!useProxy && !options.thothWsUrl) {
    throw new TypeError('createTranscriber: legacy mode (useProxy false) needs thothWsUrl');
  }
  if (options.getToken !== undefined && typeof options.getToken !== 'function') {
    throw new TypeError('createTranscriber: getToken must be a function');
  }
  const provider = options.provider || 'thoth';
  if (provider !== 'thoth' && provider !== 'mistral') {
    throw new TypeError(`createTranscriber: unknown provider ${provider}`);
  }
  const resampling = options.resampling || 'browser';
  if (resampling !== 'browser' && resampling !== 'worklet') {
    throw new TypeError(`createTranscriber: resampling must be 'browser' or 'worklet'`);
  }
  return new Transcriber({
    ...options,
    useProxy,
    provider,
    resampling,
    workletUrl: options.workletUrl || DEFAULT_WORKLET_URL,
    audioConstraints: options.audioConstraints || {
      channelCount: 1,
      echoCancellation: true,
      noiseSuppression: false,
      autoGainControl: false,
    },
  });
}

/** One transcriber per recording widget; each start() runs a new session. */
export class Transcriber {
  #options;
  #state = State.IDLE;
  #session = null;
  #lastStats = null;

  constructor(options) {
    this.#options = options;
  }

  /** `'proxy'` or `'legacy'`. */
  get mode() {
    return this.#options.useProxy ? 'proxy' : 'legacy';
  }

  /** One of State. */
  get state() {
    return this.#state;
  }

  /**
   * What the current (or last) session did: sample rates (device, AudioContext,
   * sent), who resampled, frames and seconds of audio sent.
   */
  get stats() {
    return this.#session ? this.#session.stats() : this.#lastStats;
  }

  /** Starts a session; resolves once audio flows, or once it failed (see onError). */
  start() {
    if (this.#session) {
      return this.#session.started;
    }
    const session = new Session(this.#options, this.mode, {
      state: (state, error) => this.#setState(state, error),
      ended: () => {
        if (this.#session === session) {
          this.#lastStats = session.stats();
          this.#session = null;
        }
      },
    });
    this.#session = session;
    session.run();
    return session.started;
  }

  /** Ends the session: no more audio, last results, then onDone. Resolves with the final text. */
  stop() {
    return this.#session ? this.#session.stop() : Promise.resolve('');
  }

  /** Drops the session at once: no onDone, no waiting (what closing the page does). */
  cancel() {
    if (this.#session) this.#session.cancel();
  }

  #setState(state, error) {
    if (state === this.#state && !error) return;
    const previous = this.#state;
    this.#state = state;
    notify(this.#options.onStateChange, state, { previous, error: error || null });
  }
}

/** One recording: microphone → socket → callbacks, and its cleanup. */
class Session {
  #o;
  #mode;
  #host;
  #socket = null;
  #capture = null;
  /** Audio may go to the socket (legacy: open; proxy: after `ready`). */
  #streaming = false;
  /** After stop() flushed the worklet: later frames are after `end`, dropped. */
  #audioClosed = false;
  #pending = [];
  #endRequested = false;
  #finished = false;
  #finals = [];
  #timers = new Set();
  #pingSentAt = 0;
  #pingMs = null;
  #format = null;
  #framesSent = 0;
  #samplesSent = 0;
  #sessionId = null;
  #startedAt = 0;
  #resolveStarted;
  #stopPromise = null;
  #resolveStop = null;

  constructor(options, mode, host) {
    this.#o = options;
    this.#mode = mode;
    this.#host = host;
    this.started = new Promise((resolve) => {
      this.#resolveStarted = resolve;
    });
  }

  stats() {
    const capture = this.#capture;
    return {
      mode: this.#mode,
      sessionId: this.#sessionId,
      deviceSampleRate: capture ? capture.deviceSampleRate : null,
      contextSampleRate: this.#format ? this.#format.inputRate : null,
      sentSampleRate: this.#format ? this.#format.outputRate : null,
      resampledBy: !this.#format || !capture
        ? null
        : this.#format.inputRate !== this.#format.outputRate
          ? 'worklet'
          : capture.deviceSampleRate && capture.deviceSampleRate !== this.#format.outputRate
            ? 'browser'
            : 'none',
      framesSent: this.#framesSent,
      secondsSent: this.#samplesSent / TARGET_SAMPLE_RATE,
      pingMs: this.#pingMs,
    };
  }

  async run() {
    this.#host.state(State.STARTING);
    this.#startedAt = Date.now();
    if (!globalThis.WebSocket || !globalThis.AudioWorkletNode || !(navigator.mediaDevices && navigator.mediaDevices.getUserMedia)) {
      return this.#fail(new TranscriptionError(K.UNSUPPORTED));
    }
    // The microphone first: its permission prompt may take the user a while,
    // and a socket opened before would idle (the legacy thoth serves one
    // stream at a time).
    try {
      this.#capture = await openMicrophone(this.#o, {
        onFrame: (frame) => this.#onAudio(frame),
        onFormat: (format) => {
          // The worklet says what it converts before its first frame: never
          // send audio at a rate the upstream does not expect.
          this.#format = format;
          if (format.outputRate !== TARGET_SAMPLE_RATE) {
            this.#fail(new TranscriptionError(K.INTERNAL, `The audio worklet produces ${format.outputRate} Hz, not ${TARGET_SAMPLE_RATE} Hz.`));
          }
        },
        onEnded: () => this.#fail(new TranscriptionError(K.MICROPHONE_UNAVAILABLE, 'The microphone stopped.')),
      });
    } catch (error) {
      return this.#fail(error instanceof TranscriptionError ? error : microphoneError(error));
    }
    if (this.#finished) {
      this.#capture.close();
      return;
    }
    try {
      await this.#connect();
    } catch (error) {
      this.#fail(error instanceof TranscriptionError ? error : new TranscriptionError(K.INTERNAL, undefined, { cause: error }));
    }
  }

  async #connect() {
    let url;
    let protocols;
    try {
      url = this.#mode === 'proxy' ? transcribeUrl(this.#o) : legacyUrl(this.#o.thothWsUrl);
    } catch (error) {
      throw new TranscriptionError(K.BAD_REQUEST, 'The transcription service address is not a valid URL.', { cause: error });
    }
    if (this.#mode === 'proxy' && this.#o.getToken) {
      let token;
      try {
        token = await this.#o.getToken();
      } catch (error) {
        throw new TranscriptionError(K.UNAUTHORIZED, 'Could not get a sign-in token for transcription.', { cause: error });
      }
      if (this.#finished) return;
      if (token) {
        protocols = [JWT_SUBPROTOCOL, String(token).trim()];
        this.#scheduleTokenRefresh(String(token));
      }
    }
    let socket;
    try {
      socket = protocols ? new WebSocket(url, protocols) : new WebSocket(url);
    } catch (error) {
      // A token with characters a subprotocol cannot carry is not a JWT.
      const kind = protocols ? K.UNAUTHORIZED : K.BAD_REQUEST;
      throw new TranscriptionError(kind, protocols ? 'The sign-in token is malformed.' : undefined, { cause: error });
    }
    socket.binaryType = 'arraybuffer';
    this.#socket = socket;
    socket.onopen = () => this.#onOpen();
    socket.onmessage = (event) => this.#onMessage(event);
    socket.onclose = (event) => this.#onClose(event);
    // An error is always followed by close, which says more.
    socket.onerror = () => {};
  }

  #onOpen() {
    if (this.#finished) return;
    if (this.#mode === 'legacy') {
      this.#beginStreaming();
      return;
    }
    this.#after(READY_TIMEOUT_MS, () => {
      if (!this.#streaming) this.#fail(new TranscriptionError(K.TIMEOUT, 'The transcription service did not get ready in time.', { retryable: true }));
    });
  }

  #beginStreaming() {
    this.#streaming = true;
    for (const frame of this.#pending) this.#send(frame);
    this.#pending = [];
    if (this.#endRequested) {
      this.#sendEnd();
    } else {
      this.#host.state(State.RECORDING);
    }
    this.#resolveStarted();
    if (this.#mode === 'proxy') {
      this.#every(PING_INTERVAL_MS, () => {
        this.#pingSentAt = Date.now();
        this.#sendJson({ type: 'ping' });
      });
    }
  }

  #onMessage(event) {
    if (this.#finished || typeof event.data !== 'string') return;
    let message;
    try {
      message = JSON.parse(event.data);
    } catch {
      return;
    }
    if (this.#mode === 'legacy') {
      this.#onLegacyMessage(message);
    } else {
      this.#onGatewayMessage(message);
    }
  }

  #onGatewayMessage(message) {
    switch (message.type) {
      case 'ready':
        this.#sessionId = message.sessionId || null;
        if (!this.#streaming) this.#beginStreaming();
        break;
      case 'transcription.partial':
        notify(this.#o.onPartial, textOf(message) ?? '', message);
        break;
      case 'transcription':
        this.#final(textOf(message) ?? '', message);
        break;
      case 'done':
        this.#finish(textOf(message) ?? this.#finals.join(' '), message);
        break;
      case 'status':
        notify(this.#o.onStatus, statusFromMessage(message), message);
        break;
      case 'error': {
        const error = errorFromEnvelope(message);
        // Before `ready`, any error is the gateway refusing the session.
        if (error.fatal || !this.#streaming) {
          error.fatal = true;
          this.#fail(error);
        } else {
          notify(this.#o.onError, error);
        }
        break;
      }
      case 'pong':
        if (this.#pingSentAt) this.#pingMs = Date.now() - this.#pingSentAt;
        break;
      default:
        // Newer gateways may add events; ignoring them is the contract.
        break;
    }
  }

  #onLegacyMessage(message) {
    if (typeof message.transcription === 'string') {
      this.#final(message.transcription, { type: 'transcription', data: message.transcription, timestamp: new Date().toISOString() });
    } else if (typeof message.error === 'string') {
      notify(this.#o.onError, new TranscriptionError(K.UPSTREAM_ERROR, undefined, { fatal: false }));
    }
  }

  #final(text, event) {
    this.#finals.push(text);
    notify(this.#o.onFinal, text, event);
  }

  #onClose(event) {
    this.#socket = null;
    if (this.#finished) return;
    // Legacy: thoth closing after our stop is the end of the session.
    if (this.#mode === 'legacy' && this.#endRequested && event.code === 1000) {
      this.#finish(this.#finals.join(' '));
      return;
    }
    this.#fail(errorFromClose(event.code, event.reason));
  }

  #onAudio(frame) {
    if (this.#finished || this.#audioClosed || !this.#format) return;
    if (this.#streaming) {
      this.#send(frame);
    } else if (this.#pending.length < MAX_PENDING_FRAMES) {
      this.#pending.push(frame);
    } else {
      this.#fail(new TranscriptionError(K.TIMEOUT, 'The transcription service did not get ready in time.', { retryable: true }));
    }
  }

  #send(frame) {
    const socket = this.#socket;
    if (!socket || socket.readyState !== WebSocket.OPEN) return;
    if (socket.bufferedAmount > MAX_BUFFERED_BYTES) {
      this.#fail(new TranscriptionError(K.CONNECTION_LOST, 'The network is too slow to send the audio.', { retryable: true }));
      return;
    }
    socket.send(f32le(frame));
    this.#framesSent += 1;
    this.#samplesSent += frame.length;
  }

  #sendJson(message) {
    const socket = this.#socket;
    if (socket && socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify(message));
  }

  #sendEnd() {
    if (this.#mode === 'proxy') {
      this.#sendJson({ type: 'end' });
      return;
    }
    // thoth has no end-of-audio message: give it a moment for the last
    // window, then close (which resets its buffer for the next stream).
    this.#after(LEGACY_FLUSH_GRACE_MS, () => this.#finish(this.#finals.join(' ')));
  }

  #scheduleTokenRefresh(token) {
    const expiresAt = tokenExpiryMs(token);
    if (!expiresAt) return;
    const delay = Math.max(5000, expiresAt - Date.now() - TOKEN_REFRESH_MARGIN_MS);
    this.#after(delay, async () => {
      try {
        const fresh = await this.#o.getToken();
        if (fresh && fresh !== token && !this.#finished) {
          this.#sendJson({ type: 'auth', token: String(fresh) });
          this.#scheduleTokenRefresh(String(fresh));
        }
      } catch {
        // The gateway answers TOKEN_EXPIRED in time; that is reported then.
      }
    });
  }

  stop() {
    if (this.#stopPromise) return this.#stopPromise;
    this.#stopPromise = new Promise((resolve) => {
      this.#resolveStop = resolve;
    });
    if (this.#finished) {
      this.#resolveStop(this.#finals.join(' '));
      return this.#stopPromise;
    }
    this.#endRequested = true;
    if (!this.#capture) {
      // Stopped while the microphone was still being opened: nothing was
      // recorded, so there is nothing to wait for.
      this.#finish('');
      return this.#stopPromise;
    }
    this.#host.state(State.STOPPING);
    this.#after(DONE_TIMEOUT_MS, () => this.#fail(new TranscriptionError(K.TIMEOUT, 'The last results did not arrive in time.', { retryable: true })));
    const capture = this.#capture;
    capture.flush().then(() => {
      this.#audioClosed = true;
      capture.close();
      if (this.#finished) return;
      if (this.#streaming) {
        this.#sendEnd();
      }
      // Otherwise `end` goes out right after `ready` / open (#beginStreaming).
    });
    return this.#stopPromise;
  }

  cancel() {
    if (this.#finished) return;
    this.#cleanup();
    this.#host.state(State.IDLE);
    this.#settle('');
  }

  #finish(text, event = { type: 'done', data: text, timestamp: new Date().toISOString() }) {
    if (this.#finished) return;
    this.#cleanup();
    notify(this.#o.onDone, text, event);
    this.#host.state(State.IDLE);
    this.#settle(text);
  }

  #fail(error) {
    if (this.#finished) return;
    this.#cleanup();
    this.#host.state(State.ERROR, error);
    notify(this.#o.onError, error);
    this.#settle(this.#finals.join(' '));
  }

  #settle(text) {
    this.#resolveStarted();
    if (this.#resolveStop) this.#resolveStop(text);
    this.#host.ended();
  }

  #cleanup() {
    this.#finished = true;
    for (const timer of this.#timers) {
      clearTimeout(timer);
      clearInterval(timer);
    }
    this.#timers.clear();
    if (this.#capture) this.#capture.close();
    const socket = this.#socket;
    this.#socket = null;
    if (socket) {
      socket.onopen = socket.onmessage = socket.onclose = null;
      if (socket.readyState === WebSocket.CONNECTING || socket.readyState === WebSocket.OPEN) {
        socket.close(1000, 'client done');
      }
    }
  }

  #after(ms, callback) {
    const timer = setTimeout(() => {
      this.#timers.delete(timer);
      callback();
    }, ms);
    this.#timers.add(timer);
  }

  #every(ms, callback) {
    this.#timers.add(setInterval(callback, ms));
  }
}

/**
 * Opens the microphone and the worklet. Resolves with a capture handle:
 * `{deviceSampleRate, flush(): Promise, close()}`. Frames reach `onFrame`.
 */
async function openMicrophone(options, { onFrame, onFormat, onEnded }) {
  const stream = await navigator.mediaDevices.getUserMedia({ audio: options.audioConstraints, video: false });
  const track = stream.getAudioTracks()[0];
  let context = null;
  let closed = false;
  let node = null;
  const close = () => {
    if (closed) return;
    closed = true;
    if (node) node.port.onmessage = null;
    if (track) track.onended = null;
    stream.getTracks().forEach((t) => t.stop());
    if (context && context.state !== 'closed') context.close().catch(() => {});
  };
  try {
    const created = createAudioContext(stream, options.resampling);
    context = created.context;
    await context.audioWorklet.addModule(options.workletUrl);
    node = new AudioWorkletNode(context, PROCESSOR_NAME, {
      numberOfInputs: 1,
      numberOfOutputs: 0,
      channelCount: 1,
      channelCountMode: 'explicit',
      channelInterpretation: 'speakers',
      processorOptions: { targetSampleRate: TARGET_SAMPLE_RATE, frameSamples: FRAME_SAMPLES },
    });
    let flushWaiters = [];
    node.port.onmessage = (event) => {
      const data = event.data;
      if (data instanceof Float32Array) {
        onFrame(data);
      } else if (data && data.type === 'format') {
        onFormat({ inputRate: data.inputRate, outputRate: data.outputRate });
      } else if (data && data.type === 'flushed') {
        flushWaiters.forEach((resolve) => resolve());
        flushWaiters = [];
      }
    };
    created.source.connect(node);
    if (context.state === 'suspended') await context.resume();
    if (track) track.onended = onEnded;
    const settings = track && track.getSettings ? track.getSettings() : {};
    return {
      deviceSampleRate: settings.sampleRate || null,
      flush() {
        if (closed) return Promise.resolve();
        return new Promise((resolve) => {
          flushWaiters.push(resolve);
          node.port.postMessage({ type: 'flush' });
          setTimeout(resolve, WORKLET_FLUSH_TIMEOUT_MS);
        });
      },
      close,
    };
  } catch (error) {
    close();
    throw new TranscriptionError(K.UNSUPPORTED, 'Could not start audio capture in this browser.', { cause: error });
  }
}

/**
 * An AudioContext fed by the microphone. 'browser': ask for 16 kHz so the
 * browser's own resampler does the work; Firefox refuses to connect a
 * microphone to a context of another rate, so fall back to the device's rate
 * (the worklet then resamples: it always converts from the context's real rate).
 */
function createAudioContext(stream, resampling) {
  if (resampling === 'browser') {
    let context = null;
    try {
      context = new AudioContext({ sampleRate: TARGET_SAMPLE_RATE, latencyHint: 'interactive' });
      return { context, source: context.createMediaStreamSource(stream) };
    } catch {
      if (context) context.close().catch(() => {});
    }
  }
  const context = new AudioContext({ latencyHint: 'interactive' });
  return { context, source: context.createMediaStreamSource(stream) };
}
