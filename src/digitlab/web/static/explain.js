// Why did it say 7? Occlusion in the browser, as digitlab.explain does it in Python: each 6x6
// patch (stride 2) of the 28x28 input is blanked in turn, and the drop in the answer's
// probability is spread over the patch's pixels. 144 forward passes: run once a stroke ends.
"use strict";

(function (root) {
  const SIDE = 28, PATCH = 6, STRIDE = 2;

  // image: 784 values 0-255; probabilitiesOf(pixels in [0, 1]) -> the 10 digits' probabilities
  function occlusionMap(image, probabilitiesOf, label) {
    const pixels = Float32Array.from(image, (v) => v / 255);
    const base = probabilitiesOf(pixels)[label];
    const total = new Float64Array(SIDE * SIDE), count = new Float64Array(SIDE * SIDE);
    for (let y = 0; y + PATCH <= SIDE; y += STRIDE) {
      for (let x = 0; x + PATCH <= SIDE; x += STRIDE) {
        const hidden = pixels.slice();
        for (let dy = 0; dy < PATCH; dy++) hidden.fill(0, (y + dy) * SIDE + x, (y + dy) * SIDE + x + PATCH);
        const drop = base - probabilitiesOf(hidden)[label];
        for (let dy = 0; dy < PATCH; dy++) for (let dx = 0; dx < PATCH; dx++) {
          total[(y + dy) * SIDE + x + dx] += drop;
          count[(y + dy) * SIDE + x + dx] += 1;
        }
      }
    }
    return Array.from(total, (sum, i) => (image[i] > 0 ? Math.max(sum / Math.max(count[i], 1), 0) : 0));
  }

  // The map as a 28x28 red overlay, as opaque as each pixel mattered (a data: URL).
  function overlayUrl(heat) {
    const strongest = Math.max(...heat);
    const canvas = document.createElement("canvas");
    canvas.width = canvas.height = SIDE;
    const pixels = new ImageData(SIDE, SIDE);
    heat.forEach((value, i) => {
      pixels.data.set([220, 30, 30, strongest > 0 ? Math.round((value / strongest) * 230) : 0], 4 * i);
    });
    canvas.getContext("2d").putImageData(pixels, 0, 0);
    return canvas.toDataURL("image/png");
  }

  root.digitlabExplain = { occlusionMap, overlayUrl };
})(globalThis);
