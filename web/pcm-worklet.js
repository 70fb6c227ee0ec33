// pcm-worklet.js — the AudioWorklet half of chronus-transcription.js.
//
// Runs on the browser's audio thread: takes the microphone's samples at the
// AudioContext's rate (whatever the device gave), mixes them to mono,
// resamples them to 16 kHz when the context runs at another rate, and posts
// frames of 320 samples (20 ms) as Float32Array to the main thread.
//
// Messages to the main thread (node.port):
//   {type: 'format', inputRate, outputRate}  once, first: what is converted
//   Float32Array                              one frame of mono audio at outputRate
//   {type: 'flushed'}                         after a 'flush': the last, shorter frame was sent
// Messages from the main thread:
//   {type: 'flush'}                           send what is pending now (on stop)
//
// Dependency-free; the resampler is exported so it can be tested outside a
// browser (tests/browser/resampler.test.mjs).

/** The rate every chronus upstream takes. */
export const TARGET_SAMPLE_RATE = 16000;
/** 20 ms at 16 kHz. */
export const DEFAULT_FRAME_SAMPLES = 320;
/** The name the processor is registered under. */
export const PROCESSOR_NAME = 'chronus-pcm-capture';

/** Zero crossings of the sinc kernel on each side of the centre. */
const KERNEL_ZERO_CROSSINGS = 16;
/** Kernel table entries per input sample (linear interpolation between them). */
const KERNEL_TABLE_RESOLUTION = 512;
/** The pass band ends this far below the output's Nyquist frequency. */
const CUTOFF_MARGIN = 0.92;

/**
 * A streaming windowed-sinc resampler: feed it blocks of any size, get the
 * resampled blocks back; the result does not depend on how the input was cut.
 * When downsampling, the kernel is widened so it also low-passes below the
 * output's Nyquist frequency (no aliasing of what a 16 kHz stream cannot hold).
 */
export class StreamingResampler {
  /**
   * @param {number} inputRate  samples per second coming in
   * @param {number} outputRate samples per second going out
   */
  constructor(inputRate, outputRate) {
    if (!(inputRate > 0 && outputRate > 0)) {
      throw new RangeError(`sample rates must be positive (got ${inputRate} → ${outputRate})`);
    }
    this.inputRate = inputRate;
    this.outputRate = outputRate;
    this.passthrough = inputRate === outputRate;
    /** Input samples advanced per output sample. */
    this.step = inputRate / outputRate;
    const scale = Math.min(1, outputRate / inputRate);
    /** Cut-off in cycles per input sample. */
    this.cutoff = 0.5 * scale * CUTOFF_MARGIN;
    /** Input samples used on each side of an output sample. */
    this.halfWidth = Math.ceil(KERNEL_ZERO_CROSSINGS / scale);
    this.table = buildKernelTable(this.cutoff, this.halfWidth);
    /** Normalized weights per rounded fraction, computed when first needed. */
    this.phases = new Array(KERNEL_TABLE_RESOLUTION + 1);
    // Pending input; the first output sits at input index 0, so start with
    // `halfWidth` samples of silence before it.
    this.buffer = new Float32Array(this.halfWidth);
    this.position = this.halfWidth;
  }

  /**
   * Resamples the next block.
   * @param {Float32Array} input
   * @returns {Float32Array} the output samples that are now complete
   */
  process(input) {
    if (this.passthrough) {
      return Float32Array.from(input);
    }
    const buffer = new Float32Array(this.buffer.length + input.length);
    buffer.set(this.buffer);
    buffer.set(input, this.buffer.length);

    const halfWidth = this.halfWidth;
    const count = Math.max(0, Math.ceil((buffer.length - halfWidth - this.position) / this.step));
    const output = new Float32Array(count);
    let produced = 0;
    let position = this.position;
    while (produced < count && Math.floor(position) + halfWidth < buffer.length) {
      const centre = Math.floor(position);
      const weights = this.weightsAt(position - centre);
      const first = centre + 1 - halfWidth;
      let sum = 0;
      for (let k = 0; k < weights.length; k++) {
        sum += buffer[first + k] * weights[k];
      }
      output[produced++] = sum;
      position += this.step;
    }

    const keepFrom = Math.max(0, Math.floor(position) - halfWidth + 1);
    this.buffer = buffer.slice(keepFrom);
    this.position = position - keepFrom;
    return produced === count ? output : output.subarray(0, produced);
  }

  /**
   * The kernel's weights for an output `fraction` of an input sample past its
   * centre sample, for input samples `centre + 1 - halfWidth ..= centre +
   * halfWidth`. The fraction is rounded to 1/KERNEL_TABLE_RESOLUTION of a
   * sample (a timing error far below what speech can tell) so that each phase
   * is computed once; the weights sum to 1, which keeps a constant signal
   * exactly constant.
   */
  weightsAt(fraction) {
    const phase = Math.round(fraction * KERNEL_TABLE_RESOLUTION);
    let weights = this.phases[phase];
    if (weights === undefined) {
      const halfWidth = this.halfWidth;
      weights = new Float32Array(2 * halfWidth);
      let total = 0;
      for (let k = 1 - halfWidth; k <= halfWidth; k++) {
        const weight = this.kernel(k - phase / KERNEL_TABLE_RESOLUTION);
        weights[k + halfWidth - 1] = weight;
        total += weight;
      }
      for (let i = 0; i < weights.length; i++) weights[i] /= total;
      this.phases[phase] = weights;
    }
    return weights;
  }

  /** The kernel at `x` input samples from the centre. */
  kernel(x) {
    const at = Math.abs(x) * KERNEL_TABLE_RESOLUTION;
    const index = Math.floor(at);
    if (index + 1 >= this.table.length) {
      return 0;
    }
    const fraction = at - index;
    return this.table[index] * (1 - fraction) + this.table[index + 1] * fraction;
  }
}

/** Blackman-windowed sinc, sampled from 0 to `halfWidth` input samples. */
function buildKernelTable(cutoff, halfWidth) {
  const size = halfWidth * KERNEL_TABLE_RESOLUTION + 2;
  const table = new Float32Array(size);
  for (let i = 0; i < size; i++) {
    const x = i / KERNEL_TABLE_RESOLUTION;
    if (x >= halfWidth) {
      table[i] = 0;
      continue;
    }
    const t = 2 * cutoff * x;
    const sinc = t === 0 ? 1 : Math.sin(Math.PI * t) / (Math.PI * t);
    const w = Math.PI * x / halfWidth;
    const blackman = 0.42 + 0.5 * Math.cos(w) + 0.08 * Math.cos(2 * w);
    table[i] = 2 * cutoff * sinc * blackman;
  }
  return table;
}

// Outside an AudioWorkletGlobalScope (a unit test in Node) only the exports
// above exist.
if (typeof AudioWorkletProcessor === 'function' && typeof registerProcessor === 'function') {
  class PcmCaptureProcessor extends AudioWorkletProcessor {
    constructor(options) {
      super();
      const settings = (options && options.processorOptions) || {};
      const outputRate = settings.targetSampleRate || TARGET_SAMPLE_RATE;
      // `sampleRate` is the AudioContext's real rate: conversion always starts
      // from it, so a context that did not get the rate it asked for still
      // produces 16 kHz audio.
      this.resampler = new StreamingResampler(sampleRate, outputRate);
      this.frameSamples = settings.frameSamples || DEFAULT_FRAME_SAMPLES;
      this.frame = new Float32Array(this.frameSamples);
      this.filled = 0;
      this.port.onmessage = (event) => {
        if (event.data && event.data.type === 'flush') {
          this.flush();
        }
      };
      this.port.postMessage({ type: 'format', inputRate: sampleRate, outputRate });
    }

    process(inputs) {
      const channels = inputs[0];
      if (channels && channels.length > 0) {
        this.push(this.resampler.process(mixToMono(channels)));
      }
      return true;
    }

    push(samples) {
      let offset = 0;
      while (offset < samples.length) {
        const take = Math.min(this.frameSamples - this.filled, samples.length - offset);
        this.frame.set(samples.subarray(offset, offset + take), this.filled);
        this.filled += take;
        offset += take;
        if (this.filled === this.frameSamples) {
          this.post(this.frame);
          this.frame = new Float32Array(this.frameSamples);
          this.filled = 0;
        }
      }
    }

    flush() {
      if (this.filled > 0) {
        this.post(this.frame.slice(0, this.filled));
        this.filled = 0;
      }
      this.port.postMessage({ type: 'flushed' });
    }

    post(frame) {
      this.port.postMessage(frame, [frame.buffer]);
    }
  }

  registerProcessor(PROCESSOR_NAME, PcmCaptureProcessor);
}

/** The average of the channels (the node asks for mono, but be safe). */
function mixToMono(channels) {
  if (channels.length === 1) {
    return channels[0];
  }
  const mono = new Float32Array(channels[0].length);
  for (const channel of channels) {
    for (let i = 0; i < mono.length; i++) {
      mono[i] += channel[i] / channels.length;
    }
  }
  return mono;
}
