// The two chronus frontends (REAL-PEERS.md 2a and 2b) in real headless
// Chromium against a real `chronus-gateway demo` (gateway + dev thoth, mux),
// each recording 90 s of a fake microphone with a chronus-style token: HS256
// over the gateway's JWT_SECRET, `sub` an integer, `username`, a ONE-MINUTE
// `exp`, never refreshed. Both pages run at once.
//
// The pages (chronus-pages/) behave as the chronus hooks do, written for this
// test, and are served by a small frontend server that proxies /api/
// WebSockets to the gateway, as chronus's own frontend server does (two
// origins, localhost and 127.0.0.1, so each page has its own localStorage).
// chronus-pages/probe.js records what went over the socket. The dev thoth's
// text is a checksum of the audio it got, so the test knows what every
// transcription must say. About 100 s (the two recordings overlap). Then the
// later frontend meets two refusals and must show its own message for each
// close code (4404, 4401).
//
// Environment: GATEWAY_BIN, CHROMIUM_BIN (see run.sh).

import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:http';
import { connect as tcpConnect } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const PAGES = fileURLToPath(new URL('./chronus-pages/', import.meta.url));
const GATEWAY_BIN = resolve(ROOT, process.env.GATEWAY_BIN || 'target/debug/chronus-gateway');
const CHROMIUM_BIN = process.env.CHROMIUM_BIN || '/usr/bin/chromium';

/** The JWT_SECRET the gateway runs with (the demo reads it from its data dir). */
const JWT_SECRET = 'chronus-browser-test-secret-0123456789abcdef';
/** chronus's default token lifetime when JWT_EXPIRES_IN is unset. */
const TOKEN_LIFETIME_SECS = 60;
const RECORD_MS = 90_000;
/** The fake microphone: a 440 Hz sine at half scale, longer than the recording. */
const TONE = { hz: 440, amplitude: 0.5, sampleRate: 16000, seconds: 100 };
/** Whole seconds whose result may still be on its way when the hook closes. */
const IN_FLIGHT_SECONDS = 2;
const STEP_TIMEOUT_MS = 20_000;

let work;
let gateway;
let port;
let frontend;
let frontendPort;
let context;

/** Writes a 16-bit PCM mono WAV file. */
async function writeToneWav(path, { hz, amplitude, sampleRate, seconds }) {
  const samples = Math.round(sampleRate * seconds);
  const wav = Buffer.alloc(44 + samples * 2);
  wav.write('RIFF', 0, 'ascii');
  wav.writeUInt32LE(36 + samples * 2, 4);
  wav.write('WAVEfmt ', 8, 'ascii');
  wav.writeUInt32LE(16, 16);
  wav.writeUInt16LE(1, 20); // PCM
  wav.writeUInt16LE(1, 22); // mono
  wav.writeUInt32LE(sampleRate, 24);
  wav.writeUInt32LE(sampleRate * 2, 28);
  wav.writeUInt16LE(2, 32);
  wav.writeUInt16LE(16, 34);
  wav.write('data', 36, 'ascii');
  wav.writeUInt32LE(samples * 2, 40);
  for (let i = 0; i < samples; i++) {
    const value = amplitude * Math.sin((2 * Math.PI * hz * i) / sampleRate);
    wav.writeInt16LE(Math.round(value * 32767), 44 + i * 2);
  }
  await writeFile(path, wav);
}

/** A token as chronus's backend signs it, issued at `iat` (default now). */
function chronusToken(userId, username, iat = Math.floor(Date.now() / 1000)) {
  const b64 = (value) => Buffer.from(JSON.stringify(value)).toString('base64url');
  const exp = iat + TOKEN_LIFETIME_SECS;
  const unsigned = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64({ username, sub: userId, iat, exp })}`;
  const signature = createHmac('sha256', JWT_SECRET).update(unsigned).digest('base64url');
  return { token: `${unsigned}.${signature}`, exp };
}

/** `chronus-gateway demo` on free ports (mux dev thoth, default settings). */
function startGateway(dataDir) {
  const child = spawn(
    GATEWAY_BIN,
    ['demo', '--bind', '127.0.0.1:0', '--admin-bind', '127.0.0.1:0', '--data-dir', dataDir],
    { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, RUST_LOG: process.env.RUST_LOG || 'info' } },
  );
  const log = [];
  const remember = (line) => {
    log.push(line);
    if (log.length > 400) log.shift();
  };
  createInterface({ input: child.stderr }).on('line', remember);
  const listening = new Promise((resolveUrl, reject) => {
    const timer = setTimeout(() => reject(new Error(`no address within 15 s:\n${log.join('\n')}`)), 15000);
    createInterface({ input: child.stdout }).on('line', (line) => {
      remember(line);
      const match = /^gateway listening on http:\/\/127\.0\.0\.1:(\d+)$/.exec(line);
      if (match) {
        clearTimeout(timer);
        resolveUrl(Number(match[1]));
      }
    });
    child.on('exit', (code, signal) => {
      clearTimeout(timer);
      reject(new Error(`the gateway exited (${code ?? signal}) before listening:\n${log.join('\n')}`));
    });
  });
  return { child, log, listening };
}

/**
 * The chronus frontend's own server (Vite preview or nginx in chronus): serves
 * the pages and proxies WebSocket upgrades under /api/ to the gateway, as
 * chronus's `ws: true` proxy does. The later hook derives its socket URL from
 * the page's origin, so it reaches the gateway only through this.
 */
function startFrontendServer(gatewayPort) {
  const server = createServer(async (request, response) => {
    const name = new URL(request.url, 'http://x').pathname.replace(/^\/chronus-pages\//, '');
    if (!/^[a-z0-9-]+\.(html|js)$/.test(name)) {
      response.writeHead(404).end();
      return;
    }
    try {
      const body = await readFile(join(PAGES, name));
      const type = name.endsWith('.js') ? 'text/javascript' : 'text/html; charset=utf-8';
      response.writeHead(200, { 'content-type': type }).end(body);
    } catch {
      response.writeHead(404).end();
    }
  });
  server.on('upgrade', (request, socket, head) => {
    if (!request.url.startsWith('/api/')) {
      socket.destroy();
      return;
    }
    const upstream = tcpConnect(gatewayPort, '127.0.0.1', () => {
      const lines = [`${request.method} ${request.url} HTTP/1.1`];
      for (let i = 0; i < request.rawHeaders.length; i += 2) {
        lines.push(`${request.rawHeaders[i]}: ${request.rawHeaders[i + 1]}`);
      }
      upstream.write(`${lines.join('\r\n')}\r\n\r\n`);
      if (head.length) upstream.write(head);
      upstream.pipe(socket);
      socket.pipe(upstream);
    });
    upstream.on('error', () => socket.destroy());
    socket.on('error', () => upstream.destroy());
  });
  return new Promise((done) => server.listen(0, '127.0.0.1', () => done(server)));
}

before(async () => {
  work = await mkdtemp(join(tmpdir(), 'chronus-frontends-'));
  const wav = join(work, 'tone.wav');
  await writeToneWav(wav, TONE);
  const dataDir = join(work, 'data');
  await mkdir(dataDir);
  await writeFile(join(dataDir, 'jwt-secret'), JWT_SECRET);

  gateway = startGateway(dataDir);
  process.once('exit', () => gateway.child.kill('SIGKILL'));
  port = await gateway.listening;
  frontend = await startFrontendServer(port);
  frontendPort = frontend.address().port;

  context = await chromium.launchPersistentContext(join(work, 'chromium-profile'), {
    executablePath: CHROMIUM_BIN,
    headless: true,
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--disable-background-timer-throttling',
      '--disable-renderer-backgrounding',
      '--autoplay-policy=no-user-gesture-required',
      '--use-fake-ui-for-media-stream',
      '--use-fake-device-for-media-stream',
      `--use-file-for-fake-audio-capture=${wav}`,
    ],
  });
  await context.addInitScript({ path: join(PAGES, 'probe.js') });
});

after(async () => {
  if (context) await context.close();
  if (frontend) {
    frontend.closeAllConnections();
    await new Promise((done) => frontend.close(done));
  }
  if (gateway && gateway.child.exitCode === null) {
    const exited = new Promise((done) => gateway.child.once('exit', done));
    gateway.child.kill('SIGTERM');
    const killer = setTimeout(() => gateway.child.kill('SIGKILL'), 5000);
    await exited;
    clearTimeout(killer);
  }
  if (work) await rm(work, { recursive: true, force: true });
});

/**
 * Opens a frontend page on `origin` (each its own origin, so each has its own
 * localStorage.jwt_token), logs in as `user`, records RECORD_MS, stops, and
 * returns what the page and its socket saw.
 */
async function recordWithFrontend({ origin, page: pageName, query, user }) {
  const page = await context.newPage();
  const consoleLines = [];
  page.on('console', (message) => consoleLines.push(`${message.type()}: ${message.text()}`));
  page.on('pageerror', (error) => consoleLines.push(`pageerror: ${error.message}`));
  try {
    await page.goto(`${origin}/chronus-pages/${pageName}?${new URLSearchParams(query)}`);
    await page.waitForSelector('body[data-ready=true]', { timeout: STEP_TIMEOUT_MS });
    const { token, exp } = chronusToken(user.id, user.name);
    await page.evaluate((jwt) => localStorage.setItem('jwt_token', jwt), token);

    await page.click('#record');
    await page.waitForFunction(() => window.chronusPage.recording, null, { timeout: STEP_TIMEOUT_MS });
    await page.waitForTimeout(RECORD_MS);
    const beforeStop = await page.evaluate(() => ({
      recording: window.chronusPage.recording,
      close: window.chronusProbe.close,
    }));
    await page.click('#record');
    await page.waitForFunction(() => window.chronusProbe.close !== null, null, { timeout: STEP_TIMEOUT_MS });
    await page.waitForTimeout(500); // a late error would show by now
    const seen = await page.evaluate(() => ({
      inserted: window.chronusPage.inserted,
      errors: window.chronusPage.errors,
      errorShown: document.getElementById('error').hidden ? '' : document.getElementById('error').textContent,
      textarea: document.getElementById('note-description').value,
      messages: window.chronusProbe.messages,
      protocol: window.chronusProbe.protocol,
      firstFrameAt: window.chronusProbe.firstFrameAt,
      textSent: window.chronusProbe.textSent,
      frameSizes: [...new Set(window.chronusProbe.frames.map((f) => f.byteLength))],
      close: window.chronusProbe.close,
      expected: window.chronusProbe.expectedTranscriptions(),
    }));
    return { ...seen, beforeStop, exp };
  } catch (error) {
    console.error(
      `--- ${pageName}: browser console ---\n${consoleLines.slice(-40).join('\n')}\n` +
        `--- gateway output (last lines) ---\n${gateway.log.slice(-40).join('\n')}`,
    );
    throw error;
  } finally {
    await page.close();
  }
}

/** What every chronus frontend must see: all it was sent inserted, no error, past exp. */
function checkRecording(result, { textField }) {
  const transcriptions = result.messages.filter(({ message }) => message.type === 'transcription');
  const sentTexts = transcriptions.map(({ message }) => message[textField].trim());

  assert.deepEqual(result.errors, [], 'no error was shown');
  assert.equal(result.errorShown, '');
  assert.equal(result.beforeStop.recording, true, 'still recording when the user pressed stop');
  assert.equal(result.beforeStop.close, null, 'the gateway never closed the session');
  assert.equal(result.close.wasClean, true, `a clean close when the user stopped (code ${result.close.code})`);
  assert.deepEqual(result.textSent, [], 'the frontend sends no text frames');
  assert.deepEqual(result.frameSizes, [16384], '4096-sample float32 frames');

  // Every transcription the gateway sent was inserted, in order.
  assert.deepEqual(result.inserted, sentTexts);
  assert.equal(result.textarea, sentTexts.join(' '));
  for (const { message } of transcriptions) {
    assert.equal(message.text, message.data, 'text and data carry the same text');
  }

  // …and they are the dev thoth's answers to exactly the audio sent: one per
  // whole second, none lost or repeated, but the last seconds in flight at the close.
  const { secondsSent, texts: expected } = result.expected;
  assert.ok(secondsSent > RECORD_MS / 1000 - 10, `${secondsSent} s of audio sent in ${RECORD_MS / 1000} s`);
  assert.deepEqual(sentTexts, expected.slice(0, sentTexts.length));
  assert.ok(
    sentTexts.length >= expected.length - IN_FLIGHT_SECONDS,
    `${sentTexts.length} transcriptions for ${expected.length} whole seconds`,
  );

  // The session outlived its one-minute token, with transcriptions still coming.
  const lastAt = transcriptions.at(-1).at;
  assert.ok(lastAt > result.exp * 1000 + 20_000, 'transcriptions kept arriving well after the token expired');
  return transcriptions.length;
}

describe('the chronus frontends record 90 s with a one-minute token', { concurrency: 2 }, () => {
  test('spec-005 hook: /api/audio/transcribe?token=, reads data', { timeout: RECORD_MS + 60_000 }, async () => {
    const result = await recordWithFrontend({
      origin: `http://localhost:${frontendPort}`,
      page: 'spec005.html',
      query: { scheme: 'ws', host: `127.0.0.1:${port}` },
      user: { id: 7, name: 'ada' },
    });
    assert.equal(result.protocol, '', 'no subprotocol');
    const count = checkRecording(result, { textField: 'data' });
    console.log(`spec-005 page: ${count} transcriptions inserted from ${result.expected.secondsSent.toFixed(1)} s of audio`);
  });

  test('later hook: /api/notes/transcribe-audio?noteId=, chronus.jwt subprotocol, reads text', { timeout: RECORD_MS + 60_000 }, async () => {
    const result = await recordWithFrontend({
      origin: `http://127.0.0.1:${frontendPort}`,
      page: 'notes.html',
      query: { noteId: '123' },
      user: { id: 8, name: 'grace' },
    });
    assert.equal(result.protocol, 'chronus.jwt', 'the gateway selected chronus.jwt');
    const readyAt = result.messages.find(({ message }) => message.type === 'ready')?.at;
    assert.equal(result.messages[0].message.type, 'ready', 'ready comes first');
    assert.ok(result.firstFrameAt >= readyAt, 'audio only after ready');
    const count = checkRecording(result, { textField: 'text' });
    console.log(`later page: ${count} transcriptions inserted from ${result.expected.secondsSent.toFixed(1)} s of audio`);
  });
});

/** Presses record on the later frontend and returns the error it shows and the close code. */
async function refusedOnNotesPage({ noteId, token }) {
  const page = await context.newPage();
  try {
    await page.goto(`http://127.0.0.1:${frontendPort}/chronus-pages/notes.html?noteId=${encodeURIComponent(noteId)}`);
    await page.waitForSelector('body[data-ready=true]', { timeout: STEP_TIMEOUT_MS });
    await page.evaluate((jwt) => localStorage.setItem('jwt_token', jwt), token);
    await page.click('#record');
    await page.waitForFunction(() => window.chronusProbe.close !== null, null, { timeout: STEP_TIMEOUT_MS });
    return await page.evaluate(() => ({
      shown: document.getElementById('error').textContent,
      code: window.chronusProbe.close.code,
      sent: window.chronusProbe.frames.length,
    }));
  } finally {
    await page.close();
  }
}

describe('the later frontend shows its own message for the gateway close codes', () => {
  test('a noteId that is not an integer: 4404, "Note not found"', { timeout: 60_000 }, async () => {
    const refused = await refusedOnNotesPage({ noteId: 'abc', token: chronusToken(9, 'linus').token });
    assert.deepEqual(refused, { shown: 'Note not found', code: 4404, sent: 0 });
  });

  test('an expired token: 4401, "Your session expired"', { timeout: 60_000 }, async () => {
    const { token } = chronusToken(9, 'linus', Math.floor(Date.now() / 1000) - 120);
    const refused = await refusedOnNotesPage({ noteId: '123', token });
    assert.deepEqual(refused, {
      shown: 'Your session expired — sign in again to keep recording',
      code: 4401,
      sent: 0,
    });
  });
});
