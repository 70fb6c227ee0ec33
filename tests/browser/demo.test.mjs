// End-to-end: the /demo page and web/chronus-transcription.js in real headless
// Chromium, against a real `chronus-gateway demo` (gateway + dev thoth), with
// a fake microphone playing a generated 440 Hz tone.
//
// Builds nothing: it runs $GATEWAY_BIN (default target/debug/chronus-gateway);
// tests/browser/run.sh installs Chromium and the npm packages and builds first.
//
// Environment: GATEWAY_BIN, CHROMIUM_BIN (default /usr/bin/chromium),
// DEMO_SCREENSHOT (default target/demo-screenshot.png).

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const GATEWAY_BIN = resolve(ROOT, process.env.GATEWAY_BIN || 'target/debug/chronus-gateway');
const CHROMIUM_BIN = process.env.CHROMIUM_BIN || '/usr/bin/chromium';
const SCREENSHOT = resolve(ROOT, process.env.DEMO_SCREENSHOT || 'target/demo-screenshot.png');

/** The fake microphone: a 440 Hz sine at half scale, 48 kHz (so the client has to resample). */
const TONE = { hz: 440, amplitude: 0.5, sampleRate: 48000, seconds: 10 };
const TONE_RMS = TONE.amplitude / Math.SQRT2;
/** How long each session records. */
const RECORD_MS = 3500;
/** Legacy thoth answers per 3 s window: record long enough for two of them. */
const LEGACY_RECORD_MS = 8000;
/** What the dev thoth says for a second (a legacy window) of audio. */
const DEV_THOTH_LINE = /^second (\d+): rms (\d+\.\d{4}) checksum ([0-9a-f]{8})$/;
const STEP_TIMEOUT_MS = 20000;

let work;
let gateway;
let baseUrl;
let context;

/** Writes a 16-bit PCM mono WAV file. */
async function writeToneWav(path, { hz, amplitude, sampleRate, seconds }) {
  const samples = Math.round(sampleRate * seconds);
  const wav = Buffer.alloc(44 + samples * 2);
  wav.write('RIFF', 0, 'ascii');
  wav.writeUInt32LE(36 + samples * 2, 4);
  wav.write('WAVE', 8, 'ascii');
  wav.write('fmt ', 12, 'ascii');
  wav.writeUInt32LE(16, 16); // fmt chunk size
  wav.writeUInt16LE(1, 20); // PCM
  wav.writeUInt16LE(1, 22); // mono
  wav.writeUInt32LE(sampleRate, 24);
  wav.writeUInt32LE(sampleRate * 2, 28); // bytes per second
  wav.writeUInt16LE(2, 32); // bytes per frame
  wav.writeUInt16LE(16, 34); // bits per sample
  wav.write('data', 36, 'ascii');
  wav.writeUInt32LE(samples * 2, 40);
  for (let i = 0; i < samples; i++) {
    const value = amplitude * Math.sin((2 * Math.PI * hz * i) / sampleRate);
    wav.writeInt16LE(Math.round(value * 32767), 44 + i * 2);
  }
  await writeFile(path, wav);
}

/** Starts `chronus-gateway demo` on free ports; resolves with its base URL once it listens. */
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
    const timer = setTimeout(() => reject(new Error(`the gateway did not print its address within 15 s:\n${log.join('\n')}`)), 15000);
    createInterface({ input: child.stdout }).on('line', (line) => {
      remember(line);
      const match = /^gateway listening on (http:\/\/\S+)$/.exec(line);
      if (match) {
        clearTimeout(timer);
        resolveUrl(match[1]);
      }
    });
    child.on('error', (error) => {
      clearTimeout(timer);
      reject(new Error(`cannot run ${GATEWAY_BIN}: ${error.message} (build it, or set GATEWAY_BIN)`));
    });
    child.on('exit', (code, signal) => {
      clearTimeout(timer);
      reject(new Error(`the gateway exited (${code ?? signal}) before listening:\n${log.join('\n')}`));
    });
  });
  return { child, log, listening };
}

async function stopGateway() {
  if (!gateway || gateway.child.exitCode !== null) return;
  const exited = new Promise((done) => gateway.child.once('exit', done));
  gateway.child.kill('SIGTERM');
  const killer = setTimeout(() => gateway.child.kill('SIGKILL'), 5000);
  await exited;
  clearTimeout(killer);
}

before(async () => {
  work = await mkdtemp(join(tmpdir(), 'chronus-browser-'));
  const wav = join(work, 'tone-440hz-48k.wav');
  await writeToneWav(wav, TONE);

  gateway = startGateway(join(work, 'data'));
  // Never leave a gateway behind, even when the test process dies.
  process.once('exit', () => gateway.child.kill('SIGKILL'));
  baseUrl = await gateway.listening;

  context = await chromium.launchPersistentContext(join(work, 'chromium-profile'), {
    executablePath: CHROMIUM_BIN,
    headless: true,
    viewport: { width: 1280, height: 900 },
    deviceScaleFactor: 1,
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--autoplay-policy=no-user-gesture-required',
      '--use-fake-ui-for-media-stream',
      '--use-fake-device-for-media-stream',
      `--use-file-for-fake-audio-capture=${wav}`,
    ],
  });
  await context.grantPermissions(['microphone'], { origin: baseUrl });
});

after(async () => {
  if (context) await context.close();
  await stopGateway();
  if (work) await rm(work, { recursive: true, force: true });
});

/** Opens /demo; on failure prints what the page and the gateway said. */
async function withDemoPage(query, body) {
  const page = await context.newPage();
  const consoleLines = [];
  page.on('console', (message) => consoleLines.push(`${message.type()}: ${message.text()}`));
  page.on('pageerror', (error) => consoleLines.push(`pageerror: ${error.message}`));
  try {
    await page.goto(`${baseUrl}/demo?${new URLSearchParams(query)}`);
    await page.waitForSelector('body[data-ready=true]', { timeout: STEP_TIMEOUT_MS });
    return await body(page);
  } catch (error) {
    const events = await page.locator('#events').innerText().catch(() => '(page gone)');
    console.error(
      `--- page events (newest first) ---\n${events}\n--- browser console ---\n${consoleLines.join('\n')}\n` +
        `--- gateway output (last lines) ---\n${gateway.log.slice(-40).join('\n')}`,
    );
    throw error;
  } finally {
    await page.close();
  }
}

/** Records RECORD_MS of the fake microphone, stops, and returns what the page showed. */
async function recordAndStop(page, recordMs = RECORD_MS) {
  await page.click('#record');
  await page.waitForSelector('#status[data-state=recording]', { timeout: STEP_TIMEOUT_MS });
  const recordingFrom = Date.now();
  await page.waitForTimeout(recordMs);
  const recordedMs = Date.now() - recordingFrom;
  await page.click('#record');
  await page.waitForSelector('#status[data-state=idle][data-done=true]', { timeout: STEP_TIMEOUT_MS });
  return {
    recordedSecs: recordedMs / 1000,
    finals: await page.locator('#finals li .text').allInnerTexts(),
    done: await page.locator('#done').innerText(),
    sent: await page.locator('#fact-sent').innerText(),
    audio: await page.locator('#fact-audio').innerText(),
    status: await page.locator('#status').innerText(),
  };
}

/** The dev thoth's lines: consecutive seconds from 0, the tone's level in every full second. */
function checkTranscript(result, { lastIsPartial }) {
  const parsed = result.finals.map((line) => {
    const match = DEV_THOTH_LINE.exec(line);
    assert.ok(match, `not a dev thoth transcription: ${JSON.stringify(line)}`);
    return { index: Number(match[1]), rms: Number(match[2]) };
  });
  assert.deepEqual(parsed.map((p) => p.index), parsed.map((_, i) => i), 'seconds are numbered 0, 1, 2… in order');

  // 16 kHz audio, not the device's 48 kHz passed off as 16 kHz (that would be
  // three "seconds" per second recorded).
  const secondsSent = Number(/^([\d.]+) s in \d+ frames$/.exec(result.sent)?.[1]);
  assert.ok(
    secondsSent > result.recordedSecs * 0.75 && secondsSent < result.recordedSecs + 1.5,
    `sent ${secondsSent} s of 16 kHz audio while recording ${result.recordedSecs} s`,
  );
  assert.ok(parsed.length >= 2, `at least two seconds transcribed, got ${parsed.length}`);
  assert.ok(parsed.length <= Math.ceil(secondsSent) + 1, `${parsed.length} results for ${secondsSent} s of audio`);

  // Every full second but the first (the microphone starts mid-second) carries the tone.
  const full = parsed.slice(1, lastIsPartial ? -1 : undefined);
  for (const { index, rms } of full) {
    assert.ok(Math.abs(rms - TONE_RMS) < 0.05, `second ${index}: rms ${rms}, expected about ${TONE_RMS.toFixed(4)}`);
  }
  assert.match(result.audio, /→ 16 kHz f32/);
  return parsed;
}

test('proxy mode: the gateway relays the microphone to thoth and the transcript appears', { timeout: 90000 }, async () => {
  await withDemoPage({ mode: 'proxy', provider: 'thoth' }, async (page) => {
    await page.click('#get-token');
    await page.waitForFunction(() => document.querySelector('#token').value.split('.').length === 3, null, {
      timeout: STEP_TIMEOUT_MS,
    });
    const result = await recordAndStop(page);
    // The gateway flushes the last partial second on `end` (mux), so the last line is short.
    checkTranscript(result, { lastIsPartial: true });
    assert.match(await page.locator('#fact-session').innerText(), /^[0-9a-f-]{36}$/, 'the gateway gave a session id');
    assert.match(result.done, /^Done · \d+ final results? · \d+ characters$/);
    assert.equal(result.status, 'Done');
    assert.equal(await page.locator('#error').isHidden(), true, 'no error shown');

    await mkdir(dirname(SCREENSHOT), { recursive: true });
    await page.screenshot({ path: SCREENSHOT, fullPage: true });
  });
});

test('legacy mode: the browser streams straight to thoth and the transcript appears', { timeout: 90000 }, async () => {
  // This time the AudioContext runs at the device's rate and the worklet resamples.
  await withDemoPage({ mode: 'legacy', resampling: 'worklet' }, async (page) => {
    assert.match(await page.locator('#thoth-url').inputValue(), /^ws:\/\/127\.0\.0\.1:\d+$/, '/demo/config filled in thoth');
    assert.equal(await page.locator('#token-field').isHidden(), true, 'legacy mode needs no token');
    const result = await recordAndStop(page, LEGACY_RECORD_MS);
    // Legacy thoth answers whole windows only; the rest is lost (its limit).
    checkTranscript(result, { lastIsPartial: false });
    assert.match(result.audio, /resampled by the worklet/);
    assert.equal(await page.locator('#fact-session').innerText(), 'legacy stream (no id)');
  });
});

test('an invalid token shows the UNAUTHORIZED state', { timeout: 60000 }, async () => {
  await withDemoPage({ mode: 'proxy', provider: 'thoth' }, async (page) => {
    await page.fill('#token', 'not.a-valid.token');
    await page.click('#record');
    await page.waitForSelector('#status[data-state=error]', { timeout: STEP_TIMEOUT_MS });
    assert.equal(await page.locator('#status').getAttribute('data-error'), 'unauthorized');
    assert.equal(await page.locator('#status').innerText(), 'Unauthorized');
    assert.equal(await page.locator('#error-code').innerText(), 'UNAUTHORIZED');
    assert.match(await page.locator('#error-message').innerText(), /token/i);
    assert.equal(await page.locator('#finals li').count(), 0);
    assert.equal(await page.locator('#record-label').innerText(), 'Record', 'ready to try again');
  });
});
