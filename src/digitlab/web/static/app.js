// The draw-a-digit page: strokes on a canvas, debounced POSTs to /api/predict, the answer shown.
// Exported for offline use (`digitlab export --format web`), the page has the model itself
// (model.js, forward.js, preprocess.js) and reads each drawing in the browser instead.
"use strict";

const OFFLINE = globalThis.DIGITLAB_MODEL !== undefined;
const localModel = OFFLINE ? digitlabForward.load(DIGITLAB_MODEL) : null;

const pad = document.getElementById("pad");
const context = pad.getContext("2d");
// px on the 280 px canvas: MNIST's stroke is ~13% of a digit's height; the number pad is
// 200 px tall, its digits ~140 px
const PEN_WIDTH = { digit: 22, number: 18 };
const PAD_SIZE = { digit: [280, 280], number: [560, 200] };
const DEBOUNCE_MS = 150;
const strokes = []; // each stroke: an array of [x, y] in canvas pixels
let drawing = null;
let timer = null;
let pending = null;

function clearCanvas() {
  context.fillStyle = "#fff";
  context.fillRect(0, 0, pad.width, pad.height);
}

function drawStroke(points) {
  context.strokeStyle = "#000";
  context.lineWidth = PEN_WIDTH[mode()];
  context.lineCap = "round";
  context.lineJoin = "round";
  context.beginPath();
  context.moveTo(points[0][0], points[0][1]);
  for (const [x, y] of points.slice(1)) context.lineTo(x, y);
  if (points.length === 1) context.lineTo(points[0][0] + 0.1, points[0][1]);
  context.stroke();
}

function redraw() {
  clearCanvas();
  strokes.forEach(drawStroke);
}

function position(event) {
  const box = pad.getBoundingClientRect();
  return [(event.clientX - box.left) * (pad.width / box.width),
          (event.clientY - box.top) * (pad.height / box.height)];
}

pad.addEventListener("pointerdown", (event) => {
  pad.setPointerCapture(event.pointerId);
  drawing = [position(event)];
  strokes.push(drawing);
  redraw();
});
pad.addEventListener("pointermove", (event) => {
  if (!drawing) return;
  drawing.push(position(event));
  redraw();
  schedule();
});
const endStroke = () => {
  if (!drawing) return;
  drawing = null;
  schedule(0);
};
pad.addEventListener("pointerup", endStroke);
pad.addEventListener("pointercancel", endStroke);

function undo() {
  strokes.pop();
  redraw();
  strokes.length ? schedule(0) : showEmpty();
}
function clearAll() {
  strokes.length = 0;
  redraw();
  showEmpty();
}
document.getElementById("undo").addEventListener("click", undo);
document.getElementById("clear").addEventListener("click", clearAll);
// A number gets a wide pad; switching clears it (the strokes would not fit the other shape).
const numberBox = document.getElementById("number"); // not on the offline page
function mode() {
  return numberBox && numberBox.checked ? "number" : "digit";
}
numberBox?.addEventListener("change", () => {
  [pad.width, pad.height] = PAD_SIZE[mode()];
  pad.classList.toggle("wide", mode() === "number");
  document.getElementById("draw-title").textContent =
    mode() === "number" ? "Write a number" : "Draw a digit";
  clearAll();
});
document.addEventListener("keydown", (event) => {
  if ((event.ctrlKey || event.metaKey) && event.key === "z") { event.preventDefault(); undo(); }
  if (event.key === "Escape") clearAll();
});

function schedule(delay = DEBOUNCE_MS) {
  clearTimeout(timer);
  timer = OFFLINE
    ? setTimeout(readHere, Math.min(delay, 30))
    : setTimeout(() => pad.toBlob((blob) => send(blob, "image/png"), "image/png"), delay);
}

// Offline: the drawing read in this browser, answered like the server's /api/predict.
function readHere() {
  const prepared = digitlabPreprocess.prepare(context.getImageData(0, 0, pad.width, pad.height));
  if (!prepared) { showEmpty(); return; }
  const answer = localAnswer(localModel(prepared.pixels), prepared.image, prepared.pixels);
  show(answer);
  // the map of why once a stroke ends (144 forward passes: too many for every pen move)
  if (!drawing) showWhy({ ...answer, explanation_url: explainHere(prepared.image, answer.label) });
}

function explainHere(image, label) {
  const probabilitiesOf = (pixels) => localAnswer(localModel(pixels), null).probabilities;
  return digitlabExplain.overlayUrl(digitlabExplain.occlusionMap(image, probabilitiesOf, label));
}

function localAnswer(output, image, pixels = null) {
  const { probabilities, score } = splitRejection(output);
  const label = probabilities.indexOf(Math.max(...probabilities));
  const rule = DIGITLAB_MODEL.rejection;
  // the score averaged over the digit moved a pixel each way, as models.shifted_scores does,
  // when the run's rule was calibrated so
  const shifts = rule && rule.averaged_over_shifts;
  const digitScore = shifts && pixels
    ? shifts.reduce((sum, [rows, columns]) =>
      sum + splitRejection(localModel(shifted(pixels, rows, columns))).score, 0) / shifts.length
    : score;
  return {
    label, label_name: DIGITLAB_MODEL.label_names[label], confidence: probabilities[label],
    probabilities, is_digit: rule ? digitScore >= rule.threshold : null, digit_score: digitScore,
    input_url: image && pngOf(image),
  };
}

// A model's output -> the digits' probabilities and how much it looks like a digit: an 11th
// output is "not a digit" (the digits renormalised), as models.split_rejection does
function splitRejection(output) {
  const rejects = output.length === DIGITLAB_MODEL.label_names.length + 1;
  const digits = rejects ? output.slice(0, -1) : output;
  const total = digits.reduce((a, b) => a + b, 0);
  const probabilities = digits.map((p) => p / total);
  const score = rejects ? 1 - output[output.length - 1] : Math.max(...probabilities);
  return { probabilities, score };
}

// 28x28 pixels moved rows down and columns right; what comes in is 0 (models.shifted)
function shifted(pixels, rows, columns) {
  const moved = new Float32Array(pixels.length);
  for (let y = 0; y < 28; y++) {
    for (let x = 0; x < 28; x++) {
      const fromY = y - rows, fromX = x - columns;
      if (fromY >= 0 && fromY < 28 && fromX >= 0 && fromX < 28) moved[y * 28 + x] = pixels[fromY * 28 + fromX];
    }
  }
  return moved;
}

function pngOf(image) {
  const canvas = document.createElement("canvas");
  canvas.width = canvas.height = 28;
  const pixels = new ImageData(28, 28);
  image.forEach((v, i) => { pixels.data.set([v, v, v, 255], 4 * i); });
  canvas.getContext("2d").putImageData(pixels, 0, 0);
  return canvas.toDataURL("image/png");
}

async function send(body, type) {
  const number = mode() === "number";
  const controller = new AbortController();
  if (pending) pending.abort(); // only the newest drawing matters
  pending = controller;
  try {
    // a digit comes with its explanation: which pixels the answer rests on
    const response = await fetch(`/api/predict${number ? "?number=true" : "?explain=true"}`, {
      method: "POST", headers: { "Content-Type": type || "application/octet-stream" },
      body, signal: controller.signal,
    });
    const answer = await response.json().catch(() => ({}));
    if (!response.ok) {
      showError(response.status, answer.error || response.statusText);
      return;
    }
    show(answer);
  } catch (error) {
    if (error.name !== "AbortError") showError(0, "the server cannot be reached");
  }
}

function showError(status, message) {
  const box = document.getElementById("error");
  const advice = {
    413: "That file is too large.",
    415: "That is not an image.",
    422: "The model could not read a digit there.",
    503: "The server is busy: try again in a moment.",
  }[status] || "Something went wrong.";
  box.textContent = `${advice} (${message})`;
  box.hidden = false;
  document.getElementById("label").textContent = "?";
  document.getElementById("confidence").textContent = "";
}

function showEmpty() {
  document.getElementById("error").hidden = true;
  document.getElementById("label").textContent = "\u2013";
  document.getElementById("confidence").textContent = "";
  document.getElementById("bars").replaceChildren();
  document.getElementById("number-digits").replaceChildren();
  document.getElementById("reader").textContent = "";
  document.getElementById("seen").hidden = true;
  document.getElementById("why-figure").hidden = true;
}

// A number's digits, each with how sure the model is of it (the least sure stands out).
function showDigits(answer) {
  const items = (answer.digits || []).map((digit) => {
    const item = document.createElement("li");
    item.textContent = digit.label_name;
    item.title = `${(100 * digit.confidence).toFixed(1)}% sure`;
    const sure = document.createElement("small");
    sure.textContent = `${Math.round(100 * digit.confidence)}%`;
    item.append(sure);
    if (digit.confidence < 0.9) item.className = "unsure";
    return item;
  });
  document.getElementById("number-digits").replaceChildren(...items);
  document.getElementById("reader").textContent = answer.text === undefined ? "" :
    answer.reader === "number reader" ? "read whole by the number reader" +
      (answer.checked_by ? "; each lone digit also read by the digit model" : "") :
      "read digit by digit (cut into ink blobs; no number reader on the server)";
}

function show(answer) {
  document.getElementById("error").hidden = true;
  const digits = answer.digits || [answer];
  const notNumber = answer.is_number === false; // a number reader's "not a number" rule
  const notDigit = answer.is_digit === false || notNumber;
  document.getElementById("label").textContent = answer.text === ""
    ? "no digits" : notNumber ? "not a number" : notDigit ? "not a digit"
    : answer.text ?? answer.label_name;
  document.getElementById("label").classList.toggle("rejected", notDigit);
  document.getElementById("confidence").textContent = notNumber
    ? `(read as ${answer.text})`
    : notDigit ? `(most like ${answer.label_name}, ${(100 * answer.confidence).toFixed(1)}%)`
    : `${(100 * answer.confidence).toFixed(1)}% sure`;
  showDigits(answer);
  if (!digits.length) {
    document.getElementById("bars").replaceChildren();
    document.getElementById("seen").hidden = true;
    return;
  }
  // for a number: the bars of its least sure digit, the one worth a look
  const shown = digits.reduce((a, b) => (b.confidence < a.confidence ? b : a));
  const probabilities = shown.probabilities;
  const best = probabilities.indexOf(Math.max(...probabilities));
  const bars = probabilities.map((p, digit) => {
    const item = document.createElement("li");
    item.className = digit === best ? "top" : "";
    item.setAttribute("aria-label", `${digit}: ${(100 * p).toFixed(1)}%`);
    item.innerHTML = `<span>${digit}</span><span class="bar"><span class="fill"
      style="width:${(100 * p).toFixed(1)}%"></span></span><span>${(100 * p).toFixed(1)}%</span>`;
    return item;
  });
  document.getElementById("bars").replaceChildren(...bars);
  const seen = document.getElementById("seen");
  seen.src = answer.input_url || `data:image/png;base64,${answer.input_png}`;
  const strip = answer.reader === "number reader";
  seen.style.width = strip ? "448px" : `${112 * digits.length}px`;
  seen.style.height = strip ? "auto" : "112px"; // a strip keeps its shape in a narrow panel
  document.getElementById("seen-caption").textContent = strip
    ? "What the number reader saw (the whole number, 28 px tall)"
    : "What the model saw (28\u00d728, like MNIST)";
  seen.hidden = false;
  showWhy(answer);
}

function showWhy(answer) {
  const figure = document.getElementById("why-figure");
  figure.hidden = !(answer.explanation_png || answer.explanation_url);
  if (figure.hidden) return;
  document.getElementById("why-digit").src =
    answer.input_url || `data:image/png;base64,${answer.input_png}`;
  document.getElementById("why-map").src =
    answer.explanation_url || `data:image/png;base64,${answer.explanation_png}`;
  document.getElementById("why-caption").textContent = `Why ${answer.label_name}? In red, the ` +
    "pixels the answer rests on: hiding them costs the model the most confidence.";
}

// Upload: a file chosen, or dropped on the zone (Enter or Space on the zone opens the chooser).
const drop = document.getElementById("drop"); // not on the offline page
const fileInput = document.getElementById("file");
// The answer shown is the file's: the drawing it replaces is cleared, not left beside it.
const upload = (file) => {
  if (!file) return;
  strokes.length = 0;
  redraw();
  send(file, file.type);
};
fileInput?.addEventListener("change", () => upload(fileInput.files[0]));
drop?.addEventListener("keydown", (event) => {
  if (event.key === "Enter" || event.key === " ") { event.preventDefault(); fileInput.click(); }
});
drop?.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
drop?.addEventListener("dragleave", () => drop.classList.remove("over"));
drop?.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  upload(event.dataTransfer.files[0]);
});

// The camera: the part of each frame inside the guide is read a few times a second, and a
// frame is skipped while the previous one is still being read (no queue builds up).
const CAMERA_EVERY_MS = 300;
const GUIDE = { digit: [0.6, 0.6], number: [0.9, 0.35] }; // of the frame's height (digit) or width
const camera = { stream: null, timer: null, busy: false };
const video = document.getElementById("video");

function guideBox() {
  const width = video.videoWidth, height = video.videoHeight;
  const [across, down] = GUIDE[mode()];
  const boxWidth = mode() === "number" ? across * width : across * height;
  const boxHeight = down * height;
  return [(width - boxWidth) / 2, (height - boxHeight) / 2, boxWidth, boxHeight];
}

function placeGuide() {
  const [x, y, width, height] = guideBox();
  Object.assign(document.getElementById("guide").style, {
    left: `${(100 * x) / video.videoWidth}%`, top: `${(100 * y) / video.videoHeight}%`,
    width: `${(100 * width) / video.videoWidth}%`, height: `${(100 * height) / video.videoHeight}%`,
  });
}

async function readFrame() {
  if (camera.busy || !video.videoWidth) return;
  camera.busy = true;
  try {
    const [x, y, width, height] = guideBox();
    const frame = document.createElement("canvas");
    [frame.width, frame.height] = [Math.round(width), Math.round(height)];
    frame.getContext("2d").drawImage(video, x, y, width, height, 0, 0, frame.width, frame.height);
    const blob = await new Promise((done) => frame.toBlob(done, "image/jpeg", 0.9));
    await send(blob, "image/jpeg");
  } finally {
    camera.busy = false;
  }
}

async function startCamera() {
  try {
    camera.stream = await navigator.mediaDevices.getUserMedia(
      { video: { facingMode: "environment" }, audio: false });
  } catch (error) {
    showError(0, `the camera cannot be used: ${error.message || error.name}`);
    return;
  }
  video.srcObject = camera.stream;
  video.onloadedmetadata = placeGuide;
  document.getElementById("camera-view").hidden = false;
  document.getElementById("camera").textContent = "Stop the camera";
  strokes.length = 0;
  redraw();
  camera.timer = setInterval(readFrame, CAMERA_EVERY_MS);
}

function stopCamera() {
  clearInterval(camera.timer);
  camera.stream.getTracks().forEach((track) => track.stop());
  camera.stream = null;
  document.getElementById("camera-view").hidden = true;
  document.getElementById("camera").textContent = "Use the camera";
}

document.getElementById("camera")?.addEventListener("click", () =>
  (camera.stream ? stopCamera() : startCamera()));
numberBox?.addEventListener("change", () => { if (video && video.videoWidth) placeGuide(); });
pad.addEventListener("pointerdown", () => { if (camera.stream) stopCamera(); });

function describeModel(model) {
  const accuracy = model.test_accuracy ? ` (${(100 * model.test_accuracy).toFixed(2)}% on the test set)` : "";
  const reader = model.number_reader && model.number_reader.reader === "number reader"
    ? `; numbers: the number reader (${(100 * model.number_reader.test_accuracy).toFixed(1)}% of test numbers exact)`
    : "; numbers: cut into ink blobs (no number reader)";
  document.getElementById("model-info").textContent = OFFLINE
    ? `Model: ${model.model} trained on ${model.dataset}${accuracy}, running in this browser`
    : `Model: ${model.model} trained on ${model.dataset}${accuracy}${model.ready_made ? " (ready-made, shipped with digitlab)" : ""}${reader}`;
}
if (OFFLINE) describeModel(DIGITLAB_MODEL);
else fetch("/api/model").then((r) => r.json()).then(describeModel).catch(() => {});
clearCanvas();
