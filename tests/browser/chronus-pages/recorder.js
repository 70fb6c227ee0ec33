// The microphone side of both chronus frontends, as their useAudioRecorder
// hook does it: getUserMedia({audio: true}), an AudioContext at 16 kHz, a
// ScriptProcessorNode of 4096 samples, and every buffer's float32 samples
// handed on as an ArrayBuffer (chronus's silence threshold is 0: nothing is
// skipped). Written for this test from the hook's behaviour, not its code.

const AUDIO_SAMPLE_RATE = 16000;
const BUFFER_SIZE = 4096;
const SILENCE_THRESHOLD = 0.0;

export function createRecorder(onAudioChunk) {
  let context = null;
  let stream = null;
  let source = null;
  let processor = null;
  let recording = false;

  async function start() {
    stream = await navigator.mediaDevices.getUserMedia({ audio: true });
    try {
      context = new AudioContext({ sampleRate: AUDIO_SAMPLE_RATE });
    } catch {
      context = new AudioContext();
    }
    source = context.createMediaStreamSource(stream);
    processor = context.createScriptProcessor(BUFFER_SIZE, 1, 1);
    processor.onaudioprocess = (event) => {
      if (!recording) return;
      const input = event.inputBuffer.getChannelData(0);
      let sumSquares = 0;
      for (let i = 0; i < input.length; i++) sumSquares += input[i] * input[i];
      if (Math.sqrt(sumSquares / input.length) >= SILENCE_THRESHOLD) onAudioChunk(input.buffer);
    };
    source.connect(processor);
    processor.connect(context.destination);
    recording = true;
  }

  function stop() {
    recording = false;
    processor?.disconnect();
    source?.disconnect();
    context?.close();
    stream?.getTracks().forEach((track) => track.stop());
    processor = source = context = stream = null;
  }

  return { start, stop };
}

/** The note editor: inserts each transcription at the end, space-separated. */
export function createEditor() {
  const textarea = document.getElementById('note-description');
  const inserted = [];
  return {
    inserted,
    insert(text) {
      inserted.push(text);
      textarea.value = textarea.value ? `${textarea.value} ${text}` : text;
    },
  };
}

/** The snackbar: the last error the hook set, shown to the user. */
export function showError(message) {
  const element = document.getElementById('error');
  element.textContent = message ?? '';
  element.hidden = !message;
  if (message) window.chronusPage.errors.push(message);
}
