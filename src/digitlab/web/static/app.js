// The draw-a-digit page: strokes on a canvas, debounced POSTs to /api/predict, the answer shown.
"use strict";

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
function mode() {
  return document.getElementById("number").checked ? "number" : "digit";
}
document.getElementById("number").addEventListener("change", () => {
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
  timer = setTimeout(() => pad.toBlob((blob) => send(blob, "image/png"), "image/png"), delay);
}

async function send(body, type) {
  const number = document.getElementById("number").checked;
  const controller = new AbortController();
  if (pending) pending.abort(); // only the newest drawing matters
  pending = controller;
  try {
    const response = await fetch(`/api/predict${number ? "?number=true" : ""}`, {
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
    answer.reader === "number reader" ? "read whole by the number reader" :
      "read digit by digit (cut into ink blobs; no number reader on the server)";
}

function show(answer) {
  document.getElementById("error").hidden = true;
  const digits = answer.digits || [answer];
  const notDigit = answer.is_digit === false;
  document.getElementById("label").textContent = answer.text === ""
    ? "no digits" : notDigit ? "not a digit" : answer.text ?? answer.label_name;
  document.getElementById("label").classList.toggle("rejected", notDigit);
  document.getElementById("confidence").textContent = notDigit
    ? `(most like ${answer.label_name}, ${(100 * answer.confidence).toFixed(1)}%)`
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
  seen.src = `data:image/png;base64,${answer.input_png}`;
  const strip = answer.reader === "number reader";
  seen.style.width = strip ? "448px" : `${112 * digits.length}px`;
  seen.style.height = strip ? "auto" : "112px"; // a strip keeps its shape in a narrow panel
  document.getElementById("seen-caption").textContent = strip
    ? "What the number reader saw (the whole number, 28 px tall)"
    : "What the model saw (28\u00d728, like MNIST)";
  seen.hidden = false;
}

// Upload: a file chosen, or dropped on the zone (Enter or Space on the zone opens the chooser).
const drop = document.getElementById("drop");
const fileInput = document.getElementById("file");
// The answer shown is the file's: the drawing it replaces is cleared, not left beside it.
const upload = (file) => {
  if (!file) return;
  strokes.length = 0;
  redraw();
  send(file, file.type);
};
fileInput.addEventListener("change", () => upload(fileInput.files[0]));
drop.addEventListener("keydown", (event) => {
  if (event.key === "Enter" || event.key === " ") { event.preventDefault(); fileInput.click(); }
});
drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  upload(event.dataTransfer.files[0]);
});

fetch("/api/model").then((r) => r.json()).then((model) => {
  const accuracy = model.test_accuracy ? ` (${(100 * model.test_accuracy).toFixed(2)}% on the test set)` : "";
  const reader = model.number_reader && model.number_reader.reader === "number reader"
    ? `; numbers: the number reader (${(100 * model.number_reader.test_accuracy).toFixed(1)}% of test numbers exact)`
    : "; numbers: cut into ink blobs (no number reader)";
  document.getElementById("model-info").textContent =
    `Model: ${model.model} trained on ${model.dataset}${accuracy}${reader}`;
}).catch(() => {});
clearCanvas();
