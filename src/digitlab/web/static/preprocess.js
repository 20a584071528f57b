// A drawn digit -> the model's 28x28 input, in the browser (the offline page).
//
// The same steps digitlab's Python preprocessing takes for a drawing (dark ink on white, so
// no background to flatten and a pen already near MNIST's stroke width): ink made bright,
// cropped to the ink, the longer side scaled to 20 px (area averaging), placed in 28x28 with
// its centre of mass at the centre, rounded to 8 bits like an MNIST image. Photos need the
// server's full pipeline (uneven light, noise, pen width): `digitlab serve`.
"use strict";

(function (root) {
  const SIDE = 28, BOX = 20, INK = 0.05;

  // ImageData of a drawing -> {width, height, ink: Float32Array in [0, 1]} (ink bright)
  function inkOf(imageData) {
    const { width, height, data } = imageData;
    const ink = new Float32Array(width * height);
    for (let i = 0; i < ink.length; i++) {
      const gray = (0.299 * data[4 * i] + 0.587 * data[4 * i + 1] + 0.114 * data[4 * i + 2]) / 255;
      const alpha = data[4 * i + 3] / 255; // transparent counts as white paper
      ink[i] = alpha * (1 - gray);
    }
    return { width, height, ink };
  }

  // Average of the source area each target pixel covers (exact for any scale factor).
  function resizeArea(source, width, height, toWidth, toHeight) {
    const out = new Float32Array(toWidth * toHeight);
    const sx = width / toWidth, sy = height / toHeight;
    for (let ty = 0; ty < toHeight; ty++) {
      const y0 = ty * sy, y1 = y0 + sy;
      for (let tx = 0; tx < toWidth; tx++) {
        const x0 = tx * sx, x1 = x0 + sx;
        let sum = 0;
        for (let y = Math.floor(y0); y < Math.min(Math.ceil(y1), height); y++) {
          const wy = Math.min(y + 1, y1) - Math.max(y, y0);
          for (let x = Math.floor(x0); x < Math.min(Math.ceil(x1), width); x++) {
            const wx = Math.min(x + 1, x1) - Math.max(x, x0);
            sum += wx * wy * source[y * width + x];
          }
        }
        out[ty * toWidth + tx] = sum / (sx * sy);
      }
    }
    return out;
  }

  // ImageData -> {pixels: Float32Array(784) in [0, 1], image: Uint8ClampedArray(784)}, or null
  // when nothing is drawn.
  function prepare(imageData) {
    const { width, height, ink } = inkOf(imageData);
    let top = height, bottom = -1, left = width, right = -1;
    for (let y = 0; y < height; y++) for (let x = 0; x < width; x++) {
      if (ink[y * width + x] > INK) {
        top = Math.min(top, y); bottom = Math.max(bottom, y);
        left = Math.min(left, x); right = Math.max(right, x);
      }
    }
    if (bottom < 0) return null;
    const cropW = right - left + 1, cropH = bottom - top + 1;
    const crop = new Float32Array(cropW * cropH);
    for (let y = 0; y < cropH; y++) for (let x = 0; x < cropW; x++)
      crop[y * cropW + x] = ink[(top + y) * width + left + x];
    const scale = BOX / Math.max(cropW, cropH);
    const boxW = Math.max(1, Math.round(cropW * scale)), boxH = Math.max(1, Math.round(cropH * scale));
    const box = resizeArea(crop, cropW, cropH, boxW, boxH);
    let total = 0, cy = 0, cx = 0;
    for (let y = 0; y < boxH; y++) for (let x = 0; x < boxW; x++) {
      const v = box[y * boxW + x];
      total += v; cy += v * y; cx += v * x;
    }
    const clamp = (v, low, high) => Math.min(Math.max(v, low), high);
    const offsetY = clamp(Math.round(SIDE / 2 - cy / total), 0, SIDE - boxH);
    const offsetX = clamp(Math.round(SIDE / 2 - cx / total), 0, SIDE - boxW);
    const image = new Uint8ClampedArray(SIDE * SIDE);
    for (let y = 0; y < boxH; y++) for (let x = 0; x < boxW; x++)
      image[(offsetY + y) * SIDE + offsetX + x] = Math.round(clamp(box[y * boxW + x], 0, 1) * 255);
    return { pixels: Float32Array.from(image, (v) => v / 255), image };
  }

  root.digitlabPreprocess = { prepare, resizeArea };
})(globalThis);
