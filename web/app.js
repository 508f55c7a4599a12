// The page: open an image, click, see the mask. The wire side is sam2-session.js.
//
// Every click or box adds a step to the history; each step's prompt is all of its clicks and
// its box, sent whole (not "refine the previous mask"), so that any step can be asked again:
// undo shows the step before (from its cached answer, or asks the server again), a session the
// server lost is started again with the prompt as it stands, and a request answered after a
// newer click cannot change what the server later answers. A newer prompt aborts the request
// of the older one (AbortController) and an answer that arrives for an older prompt is dropped.
//
// For tests and curious users, #app's data-* attributes tell the state (empty, encoding, busy,
// ready, error), the session id, and counts of prompt requests, cancelled requests and session
// restarts; the mask canvas's data-prompt is the prompt whose mask it shows.
import { ServerError, Session } from "./sam2-session.js";

const $ = (id) => document.getElementById(id);
const ui = {
  app: $("app"), file: $("file"), drop: $("drop"), stage: $("stage"), image: $("image"),
  mask: $("mask"), marks: $("marks"), undo: $("undo"), reset: $("reset"),
  multimask: $("multimask"), download: $("download"), status: $("status"), error: $("error"),
  prompts: $("prompts"),
};
/** The mask layer's one colour, opaque: pixels read back from the canvas are exact. */
const MASK_RGBA = [30, 144, 255, 255];
/** CSS pixels a pressed pointer must travel before the press becomes a box. */
const DRAG_MIN_PX = 5;

const view = {
  session: null, // the open image's Session
  name: "",
  width: 0,
  height: 0,
  history: [], // steps: {points: [{x, y, label}], box: [x0, y0, x1, y1] | null, results: {}}
  shown: null, // the result drawn now
  generation: 0, // bumped by every prompt change; older answers are dropped
  controller: null, // the AbortController of the request in flight
  requests: 0,
  cancelled: 0,
  press: null, // a left button press: where, and whether it became a drag
};

function setState(state) {
  ui.app.dataset.state = state;
  ui.app.dataset.requests = view.requests;
  ui.app.dataset.cancelled = view.cancelled;
  ui.app.dataset.restarts = view.session?.restarts ?? 0;
  ui.app.dataset.sessionId = view.session?.id ?? "";
  ui.undo.disabled = !view.history.length;
  ui.reset.disabled = !view.history.length;
  ui.download.disabled = !view.shown;
}

function showError(error) {
  let text;
  if (error instanceof ServerError) {
    text = error.status ? `The server answered HTTP ${error.status}: ${error.message}` : `Error: ${error.message}`;
  } else {
    text = `Error: ${error.message ?? error}`;
  }
  ui.error.textContent = text;
  ui.error.hidden = false;
}

function clearError() {
  ui.error.hidden = true;
  ui.error.textContent = "";
}

// --- opening an image ------------------------------------------------------------------------

async function openFile(file) {
  view.session?.end();
  abortPending();
  clearError();
  const bytes = new Uint8Array(await file.arrayBuffer());
  const session = new Session(bytes);
  Object.assign(view, { session, name: file.name, history: [], shown: null, generation: view.generation + 1 });
  clearLayer(ui.mask);
  ui.status.textContent = `Sending ${file.name} (${(bytes.byteLength / 1024).toFixed(0)} KiB)…`;
  setState("encoding");
  // The server decodes and encodes the file while the browser decodes it for display.
  const started = session.start();
  let bitmap = null;
  try {
    bitmap = await createImageBitmap(new Blob([bytes]));
  } catch (e) {
    bitmap = null;
  }
  if (view.session !== session) return;
  if (bitmap) {
    view.width = bitmap.width;
    view.height = bitmap.height;
    for (const canvas of [ui.image, ui.mask, ui.marks]) {
      canvas.width = bitmap.width;
      canvas.height = bitmap.height;
    }
    ui.image.getContext("2d").drawImage(bitmap, 0, 0);
    ui.stage.hidden = false;
  } else {
    ui.stage.hidden = true;
  }
  drawMarks();
  let size;
  try {
    size = await started;
  } catch (e) {
    if (view.session !== session) return;
    ui.status.textContent = "";
    showError(e);
    setState("error");
    return;
  }
  if (view.session !== session) return;
  if (!bitmap) {
    showError(new Error(`the server read ${file.name}, but this browser cannot show it`));
    setState("error");
    return;
  }
  if (size && (size[0] !== view.height || size[1] !== view.width)) {
    showError(new Error(`the server sees ${file.name} as ${size[1]}x${size[0]} pixels, this browser as ${view.width}x${view.height}: clicks would land in the wrong place`));
    setState("error");
    return;
  }
  ui.status.textContent = `${file.name}: ${view.width}x${view.height}, decoded and encoded by the server in ${session.startMs.toFixed(0)} ms. Click on it.`;
  setState(view.history.length ? ui.app.dataset.state : "ready");
}

// --- prompts -----------------------------------------------------------------------------------

function current() {
  return view.history[view.history.length - 1] ?? null;
}

function push(change) {
  const last = current();
  const step = {
    points: [...(last?.points ?? []), ...(change.point ? [change.point] : [])],
    box: change.box ?? last?.box ?? null,
    results: {},
  };
  view.history.push(step);
  show();
}

function abortPending() {
  if (view.controller) {
    view.controller.abort();
    view.controller = null;
    view.cancelled += 1;
  }
}

/** Draw the current step's mask: from its cached answer, or ask the server. */
async function show() {
  abortPending();
  clearError();
  const generation = (view.generation += 1);
  const step = current();
  drawMarks();
  if (!step) {
    view.shown = null;
    clearLayer(ui.mask);
    ui.mask.dataset.prompt = "";
    ui.status.textContent = "";
    setState("ready");
    return;
  }
  const multimask = ui.multimask.checked;
  let result = step.results[multimask];
  if (!result) {
    const controller = new AbortController();
    view.controller = controller;
    view.requests += 1;
    setState("busy");
    try {
      result = await view.session.predict(step, multimask, controller.signal);
      step.results[multimask] = result;
    } catch (e) {
      if (e.name === "AbortError" || generation !== view.generation) return;
      view.shown = null;
      clearLayer(ui.mask);
      ui.mask.dataset.prompt = "";
      ui.status.textContent = "";
      showError(e);
      setState("error");
      return;
    } finally {
      if (view.controller === controller) view.controller = null;
    }
  }
  if (generation !== view.generation) return;
  try {
    await drawMask(result);
  } catch (e) {
    showError(e);
    setState("error");
    return;
  }
  if (generation !== view.generation) return;
  view.shown = result;
  ui.mask.dataset.prompt = JSON.stringify(promptKey(step, multimask));
  ui.mask.dataset.iou = JSON.stringify(result.iou);
  const scores = result.iou.map((v) => v.toFixed(2));
  const others = result.iou.length > 1 ? ` (best of ${scores.join(", ")})` : "";
  const restarted = result.restarted ? " · the server had lost the session: started again" : "";
  ui.status.textContent = `IoU ${scores[result.best]}${others} · ${result.roundTripMs.toFixed(0)} ms round trip${restarted}`;
  setState("ready");
}

/** What a mask was computed from, in a form tests compare: points [x, y, label], box. */
function promptKey(step, multimask) {
  return { points: step.points.map((p) => [p.x, p.y, p.label]), box: step.box, multimask };
}

// --- drawing -----------------------------------------------------------------------------------

function clearLayer(canvas) {
  canvas.getContext("2d").clearRect(0, 0, canvas.width, canvas.height);
}

/** The server's PNG (0/255) as the mask layer: MASK_RGBA inside, transparent outside. */
async function drawMask(result) {
  const png = await createImageBitmap(new Blob([result.png], { type: "image/png" }), {
    premultiplyAlpha: "none",
    colorSpaceConversion: "none",
  });
  if (png.width !== view.width || png.height !== view.height) {
    throw new Error(`the server's mask is ${png.width}x${png.height}, the image ${view.width}x${view.height}`);
  }
  const scratch = new OffscreenCanvas(png.width, png.height).getContext("2d", { willReadFrequently: true });
  scratch.drawImage(png, 0, 0);
  const gray = scratch.getImageData(0, 0, png.width, png.height).data;
  const context = ui.mask.getContext("2d", { willReadFrequently: true });
  const layer = context.createImageData(png.width, png.height);
  const out = layer.data;
  for (let i = 0; i < gray.length; i += 4) {
    if (gray[i] > 127) out.set(MASK_RGBA, i);
  }
  context.putImageData(layer, 0, 0);
}

/** Points (green: foreground, red: background) and the box, on their own layer. */
function drawMarks(rubberBand = null) {
  const context = ui.marks.getContext("2d");
  context.clearRect(0, 0, ui.marks.width, ui.marks.height);
  const step = current();
  // Marks keep their size on screen however much CSS scales the canvas.
  const scale = ui.marks.width / (ui.marks.getBoundingClientRect().width || ui.marks.width);
  context.lineWidth = 2 * scale;
  const box = rubberBand ?? step?.box;
  if (box) {
    context.strokeStyle = "#ffd400";
    context.setLineDash(rubberBand ? [6 * scale, 4 * scale] : []);
    context.strokeRect(box[0], box[1], box[2] - box[0], box[3] - box[1]);
    context.setLineDash([]);
  }
  for (const p of step?.points ?? []) {
    context.beginPath();
    context.arc(p.x + 0.5, p.y + 0.5, 6 * scale, 0, 2 * Math.PI);
    context.fillStyle = p.label ? "#17c964" : "#f31260";
    context.fill();
    context.strokeStyle = "#fff";
    context.stroke();
  }
  ui.prompts.textContent = step
    ? [
        ...step.points.map((p) => `${p.label ? "+" : "−"}(${p.x}, ${p.y})`),
        ...(step.box ? [`box (${step.box.join(", ")})`] : []),
      ].join("  ")
    : "";
}

// --- input ---------------------------------------------------------------------------------------

/** The image pixel under a pointer event (column, row). */
function pixelOf(event) {
  const rect = ui.marks.getBoundingClientRect();
  const x = Math.floor(((event.clientX - rect.left) * view.width) / rect.width);
  const y = Math.floor(((event.clientY - rect.top) * view.height) / rect.height);
  return { x: Math.min(Math.max(x, 0), view.width - 1), y: Math.min(Math.max(y, 0), view.height - 1) };
}

function boxOf(a, b) {
  return [Math.min(a.x, b.x), Math.min(a.y, b.y), Math.max(a.x, b.x), Math.max(a.y, b.y)];
}

function interactive() {
  return view.session && ["ready", "busy", "encoding", "error"].includes(ui.app.dataset.state) && !ui.stage.hidden;
}

ui.marks.addEventListener("contextmenu", (event) => event.preventDefault());

ui.marks.addEventListener("pointerdown", (event) => {
  if (!interactive()) return;
  event.preventDefault();
  if (event.button === 2) {
    push({ point: { ...pixelOf(event), label: 0 } });
  } else if (event.button === 0) {
    try {
      ui.marks.setPointerCapture(event.pointerId); // a drag may end outside the image
    } catch {
      // a pointer the browser does not track (a synthetic event): no capture needed
    }
    view.press = { at: pixelOf(event), clientX: event.clientX, clientY: event.clientY, dragging: false };
  }
});

ui.marks.addEventListener("pointermove", (event) => {
  const press = view.press;
  if (!press) return;
  const moved = Math.hypot(event.clientX - press.clientX, event.clientY - press.clientY);
  press.dragging ||= moved >= DRAG_MIN_PX;
  if (press.dragging) drawMarks(boxOf(press.at, pixelOf(event)));
});

ui.marks.addEventListener("pointerup", (event) => {
  const press = view.press;
  if (!press || event.button !== 0) return;
  view.press = null;
  const box = press.dragging ? boxOf(press.at, pixelOf(event)) : null;
  if (box && box[0] < box[2] && box[1] < box[3]) {
    push({ box });
  } else {
    push({ point: { ...press.at, label: 1 } });
  }
});

ui.marks.addEventListener("pointercancel", () => {
  view.press = null;
  drawMarks();
});

ui.undo.addEventListener("click", () => {
  view.history.pop();
  show();
});

ui.reset.addEventListener("click", () => {
  view.history = [];
  show();
});

ui.multimask.addEventListener("change", () => {
  if (view.session) show();
});

ui.download.addEventListener("click", () => {
  if (!view.shown) return;
  const link = document.createElement("a");
  link.href = URL.createObjectURL(new Blob([view.shown.png], { type: "image/png" }));
  link.download = `${view.name.replace(/\.[^.]*$/, "") || "image"}_mask.png`;
  link.click();
  setTimeout(() => URL.revokeObjectURL(link.href), 10_000);
});

document.addEventListener("keydown", (event) => {
  if ((event.ctrlKey || event.metaKey) && event.key === "z" && !ui.undo.disabled) {
    event.preventDefault();
    ui.undo.click();
  }
});

ui.file.addEventListener("change", () => {
  const [file] = ui.file.files;
  if (file) openFile(file);
  ui.file.value = ""; // the same file again is a new session
});

ui.drop.addEventListener("dragover", (event) => {
  event.preventDefault();
  ui.drop.classList.add("over");
});
ui.drop.addEventListener("dragleave", () => ui.drop.classList.remove("over"));
ui.drop.addEventListener("drop", (event) => {
  event.preventDefault();
  ui.drop.classList.remove("over");
  const [file] = event.dataTransfer.files;
  if (file) openFile(file);
});

window.addEventListener("pagehide", () => view.session?.end());
window.addEventListener("resize", () => drawMarks());
