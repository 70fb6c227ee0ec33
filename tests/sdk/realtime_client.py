"""Mistral's official Python SDK (PyPI mistralai, pinned in requirements.txt)
used as a developer would, run by tests/mistral_sdk.rs against the gateway's
native proxy or straight against the fake Mistral.

The SDK is used unchanged. A spy on the `websockets` library (the transport
the SDK is built on, not the SDK) records every frame the SDK sends, so the
test can compare them with what the far end received.

Usage: realtime_client.py '<scenario JSON>'; prints one JSON object per line:
  {"event": <the SDK's parsed event, as JSON>, "class": <its SDK class>,
   "unknown_error": <why the SDK could not parse it, or null>}
  {"sdk_sent": [<every text frame the SDK sent>]}
  {"exception": <class>, "message": <text>}   (if the SDK raised)

Scenario fields: server_url, api_key, model, encoding, sample_rate,
audio_bytes (the audio is bytes i % 251), chunk_bytes, flow:
  "transcribe_stream"  the SDK's own flow: connect, stream, flush, end, events
                       until transcription.done or error
  "pause"              connect, send the audio, then wait without audio for
                       the server's events (until error or close)
  "update_after_audio" connect, send the audio, then update_session with
                       `late_update` fields, end, events until done
"""

import asyncio
import json
import sys

from websockets.asyncio.client import ClientConnection

from mistralai.client import Mistral
from mistralai.extra.realtime import AudioFormat, UnknownRealtimeEvent

SENT = []
_real_send = ClientConnection.send


async def _spy_send(self, message, *args, **kwargs):
    if isinstance(message, str):
        SENT.append(message)
    return await _real_send(self, message, *args, **kwargs)


ClientConnection.send = _spy_send


def emit(obj):
    print(json.dumps(obj), flush=True)


def emit_event(event):
    if isinstance(event, UnknownRealtimeEvent):
        emit({"event": event.content, "class": "UnknownRealtimeEvent",
              "unknown_error": event.error})
    else:
        emit({"event": event.model_dump(mode="json", by_alias=True),
              "class": type(event).__name__, "unknown_error": None})


def audio(scenario):
    data = bytes(i % 251 for i in range(scenario["audio_bytes"]))
    step = scenario.get("chunk_bytes", 4096)
    return [data[i:i + step] for i in range(0, len(data), step)]


async def chunks(scenario):
    for chunk in audio(scenario):
        yield chunk


async def run(scenario):
    client = Mistral(api_key=scenario["api_key"], server_url=scenario["server_url"])
    realtime = client.audio.realtime
    audio_format = AudioFormat(encoding=scenario["encoding"],
                               sample_rate=scenario["sample_rate"])
    common = dict(model=scenario["model"], audio_format=audio_format,
                  timeout_ms=10_000)
    flow = scenario.get("flow", "transcribe_stream")

    if flow == "transcribe_stream":
        async for event in realtime.transcribe_stream(chunks(scenario), **common):
            emit_event(event)
        return

    connection = await realtime.connect(**common)
    async with connection:
        for chunk in audio(scenario):
            await connection.send_audio(chunk)
        if flow == "update_after_audio":
            await connection.update_session(**scenario["late_update"])
            await connection.flush_audio()
            await connection.end_audio()
        async for event in connection:
            emit_event(event)
            if getattr(event, "type", None) == "transcription.done":
                break


def main():
    scenario = json.loads(sys.argv[1])
    try:
        asyncio.run(asyncio.wait_for(run(scenario), scenario.get("timeout_s", 30)))
    except Exception as exc:  # reported to the test, which decides
        emit({"exception": type(exc).__name__, "message": str(exc)})
    emit({"sdk_sent": SENT})


if __name__ == "__main__":
    main()
