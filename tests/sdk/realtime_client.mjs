// Mistral's official npm SDK (@mistralai/mistralai, pinned in
// package-lock.json) used as a developer would, run by tests/mistral_sdk.rs.
// The twin of realtime_client.py: same scenario JSON, same output lines.
//
// The SDK is used unchanged. A spy on the `ws` library (the transport the SDK
// is built on, not the SDK) records every text frame the SDK sends.
//
// Flows: "transcribe_stream" (the SDK's own flow), "pause", "update_after_audio"
// (see realtime_client.py). The npm SDK's updateSession takes an audio format
// only, so `late_update` must be {"audio_format": {...}} here.

import WebSocket from "ws";
import { RealtimeTranscription } from "@mistralai/mistralai/extra/realtime";

const sent = [];
const realSend = WebSocket.prototype.send;
WebSocket.prototype.send = function (data, ...rest) {
  if (typeof data === "string") sent.push(data);
  return realSend.call(this, data, ...rest);
};

const emit = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");

function emitEvent(event) {
  if ("raw" in event) {
    emit({ event: event.raw, class: "UnknownRealtimeEvent", unknown_error: String(event.error ?? "unknown event type") });
  } else {
    emit({ event, class: "Known", unknown_error: null });
  }
}

function audioChunks(scenario) {
  const data = Uint8Array.from({ length: scenario.audio_bytes }, (_, i) => i % 251);
  const step = scenario.chunk_bytes ?? 4096;
  const chunks = [];
  for (let i = 0; i < data.length; i += step) chunks.push(data.subarray(i, i + step));
  return chunks;
}

async function* stream(scenario) {
  for (const chunk of audioChunks(scenario)) yield chunk;
}

async function run(scenario) {
  const realtime = new RealtimeTranscription({ apiKey: scenario.api_key, serverURL: scenario.server_url });
  const options = {
    audioFormat: { encoding: scenario.encoding, sampleRate: scenario.sample_rate },
    timeoutMs: 10_000,
  };
  const flow = scenario.flow ?? "transcribe_stream";

  if (flow === "transcribe_stream") {
    for await (const event of realtime.transcribeStream(stream(scenario), scenario.model, options)) {
      emitEvent(event);
    }
    return;
  }

  const connection = await realtime.connect(scenario.model, options);
  try {
    for (const chunk of audioChunks(scenario)) await connection.sendAudio(chunk);
    if (flow === "update_after_audio") {
      const format = scenario.late_update.audio_format;
      await connection.updateSession({ encoding: format.encoding, sampleRate: format.sample_rate });
      await connection.flushAudio();
      await connection.endAudio();
    }
    for await (const event of connection) {
      emitEvent(event);
      if (event.type === "transcription.done") break;
    }
  } finally {
    await connection.close();
  }
}

const scenario = JSON.parse(process.argv[2]);
const timeout = setTimeout(() => {
  emit({ exception: "Timeout", message: "scenario did not finish" });
  emit({ sdk_sent: sent });
  process.exit(0);
}, (scenario.timeout_s ?? 30) * 1000);
try {
  await run(scenario);
} catch (err) {
  emit({ exception: err?.name ?? "Error", message: String(err?.message ?? err) });
}
clearTimeout(timeout);
emit({ sdk_sent: sent });
// The SDK may leave sockets closing; the test has what it needs.
process.exit(0);
