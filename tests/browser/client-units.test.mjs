// Unit tests of the browser client's pure parts, in Node (no browser): the
// worklet's resampler and the client's error and URL helpers.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { copyFile, mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';

// web/ has no package.json saying its .js files are ES modules (it holds only
// what the gateway serves): import copies from a folder that says so.
const modules = await mkdtemp(join(tmpdir(), 'chronus-web-'));
await writeFile(join(modules, 'package.json'), '{"type": "module"}');
for (const name of ['pcm-worklet.js', 'chronus-transcription.js']) {
  await copyFile(new URL(`../../web/${name}`, import.meta.url), join(modules, name));
}
const importWeb = (name) => import(pathToFileURL(join(modules, name)).href);

const { StreamingResampler, TARGET_SAMPLE_RATE } = await importWeb('pcm-worklet.js');
const client = await importWeb('chronus-transcription.js');

function sine(rate, hz, seconds, amplitude = 0.5) {
  const samples = new Float32Array(Math.round(rate * seconds));
  for (let i = 0; i < samples.length; i++) samples[i] = amplitude * Math.sin((2 * Math.PI * hz * i) / rate);
  return samples;
}

/** Root mean square over the middle of the signal (away from the edges). */
function rms(samples) {
  const from = Math.floor(samples.length * 0.1);
  const to = Math.floor(samples.length * 0.9);
  let sum = 0;
  for (let i = from; i < to; i++) sum += samples[i] * samples[i];
  return Math.sqrt(sum / (to - from));
}

/** Upward zero crossings per second. */
function frequency(samples, rate) {
  let crossings = 0;
  for (let i = 1; i < samples.length; i++) if (samples[i - 1] < 0 && samples[i] >= 0) crossings++;
  return crossings / (samples.length / rate);
}

/** Feeds the input in blocks of `block` samples, as the audio thread does (128). */
function resample(input, from, to, block = 128) {
  const resampler = new StreamingResampler(from, to);
  const parts = [];
  for (let i = 0; i < input.length; i += block) parts.push(resampler.process(input.subarray(i, i + block)));
  const out = new Float32Array(parts.reduce((n, p) => n + p.length, 0));
  let offset = 0;
  for (const part of parts) {
    out.set(part, offset);
    offset += part.length;
  }
  return out;
}

for (const rate of [48000, 44100, 22050, 8000]) {
  test(`a 440 Hz tone at ${rate} Hz becomes the same tone at 16 kHz`, () => {
    const out = resample(sine(rate, 440, 2), rate, TARGET_SAMPLE_RATE);
    // Every second of input gives a second of output (less the kernel's look-ahead).
    assert.ok(Math.abs(out.length - 2 * TARGET_SAMPLE_RATE) <= 64, `got ${out.length} samples`);
    assert.ok(Math.abs(rms(out) - 0.5 / Math.SQRT2) < 0.005, `rms ${rms(out)}`);
    assert.ok(Math.abs(frequency(out, TARGET_SAMPLE_RATE) - 440) < 2, `frequency ${frequency(out, TARGET_SAMPLE_RATE)}`);
  });
}

test('what 16 kHz cannot hold is filtered out, not aliased', () => {
  // 12 kHz at 48 kHz would alias to 4 kHz at full level without the low-pass.
  const out = resample(sine(48000, 12000, 1), 48000, TARGET_SAMPLE_RATE);
  assert.ok(rms(out) < 0.01, `rms ${rms(out)}`);
});

test('the result does not depend on how the input is cut', () => {
  const input = sine(44100, 1000, 0.5);
  const whole = resample(input, 44100, TARGET_SAMPLE_RATE, input.length);
  const pieces = resample(input, 44100, TARGET_SAMPLE_RATE, 37);
  assert.equal(pieces.length, whole.length);
  for (let i = 0; i < whole.length; i++) assert.ok(Math.abs(whole[i] - pieces[i]) < 1e-6, `sample ${i}`);
});

test('16 kHz input passes through untouched', () => {
  const input = sine(16000, 440, 0.1);
  assert.deepEqual(resample(input, 16000, 16000), input);
});

test('a constant signal stays exactly constant', () => {
  const out = resample(new Float32Array(48000).fill(0.25), 48000, TARGET_SAMPLE_RATE);
  for (let i = 100; i < out.length; i++) assert.ok(Math.abs(out[i] - 0.25) < 1e-6, `sample ${i}: ${out[i]}`);
});

test('gateway error codes map to readable kinds, fatal unless the session goes on', () => {
  const unauthorized = client.errorFromEnvelope({ type: 'error', code: 'UNAUTHORIZED', message: 'no', retryable: false });
  assert.equal(unauthorized.kind, client.ErrorKind.UNAUTHORIZED);
  assert.equal(unauthorized.code, 'UNAUTHORIZED');
  assert.equal(unauthorized.message, 'no');
  assert.equal(unauthorized.fatal, true);
  assert.equal(client.errorFromEnvelope({ code: 'THOTH_BUSY', retryable: true }).kind, 'busy');
  assert.equal(client.errorFromEnvelope({ code: 'THOTH_BUSY', retryable: true }).retryable, true);
  assert.equal(client.errorFromEnvelope({ code: 'TOKEN_EXPIRED' }).kind, 'unauthorized');
  assert.equal(client.errorFromEnvelope({ code: 'THOTH_RECONNECTING' }).fatal, false);
  assert.equal(client.errorFromEnvelope({ code: 'SOMETHING_NEW' }).kind, 'internal');
  assert.ok(client.errorFromEnvelope({ code: 'THOTH_UNAVAILABLE' }).message.length > 0);
});

test('transcription text is read from `text`, else `data`', () => {
  assert.equal(client.textOf({ type: 'transcription', data: 'a', text: 'a' }), 'a');
  assert.equal(client.textOf({ type: 'transcription', data: 'old gateway' }), 'old gateway');
  assert.equal(client.textOf({ type: 'done', text: '' }), '');
  assert.equal(client.textOf({ type: 'done' }), null);
});

test('status notices are quiet notices, not errors', () => {
  const status = client.statusFromMessage({ type: 'status', code: 'THOTH_RECONNECTING', message: 'm', sessionId: 's' });
  assert.deepEqual(status, { code: 'THOTH_RECONNECTING', message: 'm', reconnecting: true });
  assert.equal(client.statusFromMessage({ type: 'status', code: 'THOTH_RESUMED' }).reconnecting, false);
  assert.equal(client.errorFromEnvelope({ code: 'SESSION_EXPIRED' }).kind, 'timeout');
  assert.equal(client.errorFromClose(4404).kind, 'forbidden');
});

test('close codes without a message map to kinds (legacy thoth sends no envelope)', () => {
  assert.equal(client.errorFromClose(4403).kind, 'forbidden');
  assert.equal(client.errorFromClose(1013).kind, 'busy');
  assert.equal(client.errorFromClose(1013).retryable, true);
  assert.equal(client.errorFromClose(4401).kind, 'unauthorized');
  assert.equal(client.errorFromClose(1006).kind, 'connection-lost');
  assert.equal(client.errorFromClose(4403).closeCode, 4403);
});

test('session URLs carry the format but never the token', () => {
  const page = { origin: 'https://chronus.example', href: 'https://chronus.example/notes/7' };
  assert.equal(
    client.transcribeUrl({ provider: 'mistral', noteId: 7 }, page),
    'wss://chronus.example/api/audio/transcribe?provider=mistral&encoding=f32le&sampleRate=16000&noteId=7',
  );
  assert.equal(
    client.transcribeUrl({ gatewayUrl: 'http://127.0.0.1:8080/' }, page),
    'ws://127.0.0.1:8080/api/audio/transcribe?provider=thoth&encoding=f32le&sampleRate=16000',
  );
  assert.equal(
    client.transcribeUrl({ gatewayUrl: '/gateway' }, page),
    'wss://chronus.example/gateway/api/audio/transcribe?provider=thoth&encoding=f32le&sampleRate=16000',
  );
  assert.equal(client.legacyUrl('ws://thoth.internal:8765', page), 'ws://thoth.internal:8765/stream-audio');
  assert.equal(client.legacyUrl('wss://thoth.example/', page), 'wss://thoth.example/stream-audio');
  assert.equal(client.legacyUrl('wss://thoth.example/stream-audio', page), 'wss://thoth.example/stream-audio');
});

test('options are checked when the transcriber is created', () => {
  assert.throws(() => client.createTranscriber({ useProxy: false }), /thothWsUrl/);
  assert.throws(() => client.createTranscriber({ useProxy: true, provider: 'whisper' }), /provider/);
  assert.throws(() => client.createTranscriber({ useProxy: true, getToken: 'abc' }), /getToken/);
  const transcriber = client.createTranscriber({ useProxy: 'true', getToken: () => 't' });
  assert.equal(transcriber.mode, 'proxy');
  assert.equal(transcriber.state, 'idle');
  assert.equal(client.createTranscriber({ useProxy: false, thothWsUrl: 'ws://x' }).mode, 'legacy');
});
