// A digitlab model's forward pass in plain JavaScript, for the page that works offline.
//
// It runs the layer description `digitlab export --format web` writes (the NumPy runtime's,
// src/digitlab/runtime.py) for one image at a time, channels-last like Keras, in float32
// arrays with float64 sums. Tests check it against the Python runtime on the same 28x28
// inputs (probabilities within 1e-4).
"use strict";

(function (root) {
  function decode(weight) {
    const bytes = Uint8Array.from(atob(weight.data), (c) => c.charCodeAt(0));
    return { shape: weight.shape, data: new Float32Array(bytes.buffer) };
  }

  const activations = {
    linear: (x) => x,
    relu: (x) => x.map((v) => (v > 0 ? v : 0)),
    sigmoid: (x) => x.map((v) => 1 / (1 + Math.exp(-v))),
    tanh: (x) => x.map(Math.tanh),
  };

  function activate(tensor, name, channels) {
    if (name !== "softmax") return { shape: tensor.shape, data: activations[name](tensor.data) };
    const out = new Float32Array(tensor.data.length);
    for (let start = 0; start < out.length; start += channels) {
      let max = -Infinity, sum = 0;
      for (let c = 0; c < channels; c++) max = Math.max(max, tensor.data[start + c]);
      for (let c = 0; c < channels; c++) sum += (out[start + c] = Math.exp(tensor.data[start + c] - max));
      for (let c = 0; c < channels; c++) out[start + c] /= sum;
    }
    return { shape: tensor.shape, data: out };
  }

  // TensorFlow's "same" padding, as Keras uses it: the odd pixel goes after.
  function samePadding(size, kernel, stride) {
    const total = Math.max((Math.ceil(size / stride) - 1) * stride + kernel - size, 0);
    return Math.floor(total / 2);
  }

  function conv2d(x, layer, [kernel, bias]) {
    const [height, width, channels] = x.shape;
    const [kh, kw, , filters] = kernel.shape;
    const [sh, sw] = layer.strides;
    const same = layer.padding === "same";
    const outH = same ? Math.ceil(height / sh) : Math.floor((height - kh) / sh) + 1;
    const outW = same ? Math.ceil(width / sw) : Math.floor((width - kw) / sw) + 1;
    const top = same ? samePadding(height, kh, sh) : 0;
    const left = same ? samePadding(width, kw, sw) : 0;
    const out = new Float32Array(outH * outW * filters);
    const sums = new Float64Array(filters);
    for (let oy = 0; oy < outH; oy++) {
      for (let ox = 0; ox < outW; ox++) {
        sums.fill(0);
        for (let ky = 0; ky < kh; ky++) {
          const y = oy * sh + ky - top;
          if (y < 0 || y >= height) continue;
          for (let kx = 0; kx < kw; kx++) {
            const xx = ox * sw + kx - left;
            if (xx < 0 || xx >= width) continue;
            const input = (y * width + xx) * channels;
            const weights = (ky * kw + kx) * channels * filters;
            for (let c = 0; c < channels; c++) {
              const value = x.data[input + c];
              if (value === 0) continue;
              const row = weights + c * filters;
              for (let f = 0; f < filters; f++) sums[f] += value * kernel.data[row + f];
            }
          }
        }
        const at = (oy * outW + ox) * filters;
        for (let f = 0; f < filters; f++) out[at + f] = sums[f] + (bias ? bias.data[f] : 0);
      }
    }
    return activate({ shape: [outH, outW, filters], data: out }, layer.activation, filters);
  }

  function dense(x, layer, [kernel, bias]) {
    const [inputs, units] = kernel.shape;
    const out = new Float32Array(units);
    const sums = new Float64Array(units);
    for (let i = 0; i < inputs; i++) {
      const value = x.data[i];
      if (value === 0) continue;
      const row = i * units;
      for (let u = 0; u < units; u++) sums[u] += value * kernel.data[row + u];
    }
    for (let u = 0; u < units; u++) out[u] = sums[u] + (bias ? bias.data[u] : 0);
    return activate({ shape: [units], data: out }, layer.activation, units);
  }

  function batchNorm(x, layer, weights) {
    const list = weights.slice();
    const channels = list[list.length - 1].shape[0];
    const gamma = layer.scale ? list.shift().data : null;
    const beta = layer.center ? list.shift().data : null;
    const [mean, variance] = list.map((w) => w.data);
    const out = new Float32Array(x.data.length);
    for (let i = 0; i < out.length; i++) {
      const c = i % channels;
      const normal = (x.data[i] - mean[c]) / Math.sqrt(variance[c] + layer.epsilon);
      out[i] = normal * (gamma ? gamma[c] : 1) + (beta ? beta[c] : 0);
    }
    return { shape: x.shape, data: out };
  }

  function pool(x, layer, reduce) {
    const [height, width, channels] = x.shape;
    const [ph, pw] = layer.pool_size, [sh, sw] = layer.strides;
    const outH = Math.floor((height - ph) / sh) + 1, outW = Math.floor((width - pw) / sw) + 1;
    const out = new Float32Array(outH * outW * channels);
    for (let oy = 0; oy < outH; oy++) for (let ox = 0; ox < outW; ox++) for (let c = 0; c < channels; c++) {
      const values = [];
      for (let y = 0; y < ph; y++) for (let xx = 0; xx < pw; xx++)
        values.push(x.data[((oy * sh + y) * width + ox * sw + xx) * channels + c]);
      out[(oy * outW + ox) * channels + c] = reduce(values);
    }
    return { shape: [outH, outW, channels], data: out };
  }

  const mean = (values) => values.reduce((a, b) => a + b, 0) / values.length;

  const LAYERS = {
    Identity: (x) => x,
    Dense: dense,
    Conv2D: conv2d,
    BatchNormalization: batchNorm,
    Activation: (x, layer) => activate(x, layer.activation, x.shape[x.shape.length - 1]),
    // channels-last and row-major like Keras: a reshape only relabels the shape
    Reshape: (x, layer) => ({ shape: layer.shape, data: x.data }),
    MaxPooling2D: (x, layer) => pool(x, layer, (v) => Math.max(...v)),
    AveragePooling2D: (x, layer) => pool(x, layer, mean),
    GlobalAveragePooling2D: (x) => {
      const channels = x.shape[2];
      const pixels = x.data.length / channels;
      const out = new Float32Array(channels);
      for (let i = 0; i < x.data.length; i++) out[i % channels] += x.data[i] / pixels;
      return { shape: [channels], data: out };
    },
  };

  // description: what model.js holds. Returns predict(pixels): pixels are the 28x28 input,
  // row by row, scaled to [0, 1]; the answer is the model's probabilities (an Array).
  function load(description) {
    const layers = description.layers.map((layer) => {
      if (!LAYERS[layer.kind]) throw new Error(`unknown layer kind ${layer.kind}`);
      return { layer, run: LAYERS[layer.kind], weights: layer.weights.map(decode) };
    });
    return function predict(pixels) {
      let x = { shape: description.input_shape, data: Float32Array.from(pixels) };
      for (const { layer, run, weights } of layers) x = run(x, layer, weights);
      return Array.from(x.data);
    };
  }

  root.digitlabForward = { load };
})(globalThis);
