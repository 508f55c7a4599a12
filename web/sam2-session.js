// A session on sam2_session through Triton's HTTP/REST API (KServe v2 with Triton's binary
// tensor extension), from the browser with nothing but fetch. The wire contract is the one in
// src/sam2_triton/backend/sam2_session/model.py; the behaviour is the Python client's
// (src/sam2_triton/client/session.py):
//
// * a session is a Triton sequence: every request carries its sequence_id (below 2**53, so a
//   JavaScript number holds it exactly) and the same number in the X-Sam2-Session header, on
//   which a proxy in front of several replicas routes;
// * the image file's bytes travel once, in the request that starts the sequence; later
//   requests carry only a prompt;
// * when the server no longer holds the session (idle timeout, evicted, restarted, another
//   replica), the next prompt gets a 400 naming that; the session is started again with the
//   image and that prompt, in one request, under a new sequence_id (once per prompt).

export const MODEL = "sam2_session";
export const SESSION_HEADER = "X-Sam2-Session";
/** The 400 messages of a session the server does not hold: the model's, and Triton's. */
const LOST = ["has no image on this server", "must specify the START flag"];
/** The outputs a prompt asks for: the best mask as a PNG file, and every mask's IoU. */
const PROMPT_OUTPUTS = [
  { name: "mask_png", binary: true },
  { name: "iou_predictions", binary: false },
];

/** A request the server (or the proxy in front of it) refused, or could not be sent. */
export class ServerError extends Error {
  /** status: the HTTP status, 0 when no answer came at all. */
  constructor(status, message) {
    super(message);
    this.name = "ServerError";
    this.status = status;
  }

  /** True when the server does not hold the session (it must be started again). */
  get lost() {
    return this.status === 400 && LOST.some((text) => this.message.includes(text));
  }
}

/** A random session id in 1 .. 2**53 - 1. */
export function newSessionId() {
  for (;;) {
    const [high, low] = crypto.getRandomValues(new Uint32Array(2));
    const id = (high & 0x1fffff) * 2 ** 32 + low;
    if (id > 0) return id;
  }
}

/**
 * The body of one inference request: the JSON header, then the binary tensors in the order the
 * header names them. inputs: {name, datatype, shape, data} (sent as JSON) or {name, datatype,
 * shape, binary: Uint8Array}; outputs: {name, binary}. headerLength is null for a JSON-only
 * body, else the JSON's byte count (the Inference-Header-Content-Length header).
 */
export function encodeRequest(parameters, inputs, outputs) {
  const header = { parameters, inputs: [], outputs: [] };
  const tensors = [];
  for (const { name, datatype, shape, data, binary } of inputs) {
    if (binary) {
      header.inputs.push({ name, datatype, shape, parameters: { binary_data_size: binary.byteLength } });
      tensors.push(binary);
    } else {
      header.inputs.push({ name, datatype, shape, data });
    }
  }
  for (const { name, binary } of outputs) {
    header.outputs.push({ name, parameters: { binary_data: binary } });
  }
  const json = new TextEncoder().encode(JSON.stringify(header));
  if (!tensors.length) return { body: json, headerLength: null };
  return { body: new Blob([json, ...tensors]), headerLength: json.byteLength };
}

/**
 * The outputs of a response body, by name: Triton's JSON for each (datatype, shape, and data
 * when sent as JSON), plus bytes (a Uint8Array) for those sent as binary data.
 */
export function parseResponse(buffer, headerLength) {
  const bytes = new Uint8Array(buffer);
  const end = headerLength ?? bytes.byteLength;
  const header = JSON.parse(new TextDecoder().decode(bytes.subarray(0, end)));
  const outputs = {};
  let offset = end;
  for (const output of header.outputs ?? []) {
    const size = output.parameters?.binary_data_size;
    if (size !== undefined) {
      output.bytes = bytes.subarray(offset, offset + size);
      offset += size;
    }
    outputs[output.name] = output;
  }
  return outputs;
}

/** The words of an error answer: Triton's and the proxy's JSON "error", else the status. */
function errorText(response, buffer) {
  try {
    const error = JSON.parse(new TextDecoder().decode(buffer)).error;
    if (typeof error === "string" && error) return error;
  } catch {
    // nginx's own pages (502 while Triton starts or restarts, 429, ...) are HTML
  }
  const status = response.statusText || "no message";
  if ([502, 503, 504].includes(response.status)) {
    return `${status}: the proxy could not reach Triton (is it starting, or restarting?)`;
  }
  return status;
}

/** One request of session id to sam2_session at base ("" for this page's origin). */
export async function infer(base, id, { start = false, end = false, inputs = [], outputs = [] }, options = {}) {
  const parameters = { sequence_id: id };
  if (start) parameters.sequence_start = true;
  if (end) parameters.sequence_end = true;
  const { body, headerLength } = encodeRequest(parameters, inputs, outputs);
  const headers = { [SESSION_HEADER]: String(id) };
  if (headerLength === null) {
    headers["Content-Type"] = "application/json";
  } else {
    headers["Content-Type"] = "application/octet-stream";
    headers["Inference-Header-Content-Length"] = String(headerLength);
  }
  let response, buffer;
  try {
    response = await fetch(`${base}/v2/models/${MODEL}/infer`, { method: "POST", headers, body, ...options });
    buffer = await response.arrayBuffer();
  } catch (e) {
    if (e.name === "AbortError") throw e;
    throw new ServerError(0, `cannot reach the server: ${e.message}`);
  }
  if (!response.ok) throw new ServerError(response.status, errorText(response, buffer));
  const length = response.headers.get("Inference-Header-Content-Length");
  return parseResponse(buffer, length === null ? null : Number(length));
}

/** The request inputs of a prompt: points [{x, y, label}], box [x0, y0, x1, y1] or null. */
export function promptInputs({ points, box }, multimask) {
  const inputs = [];
  if (points.length) {
    const coords = points.flatMap((p) => [p.x, p.y]);
    inputs.push({ name: "point_coords", datatype: "FP32", shape: [1, points.length, 2], data: coords });
    const labels = points.map((p) => p.label);
    inputs.push({ name: "point_labels", datatype: "INT32", shape: [1, points.length], data: labels });
  }
  if (box) inputs.push({ name: "box", datatype: "FP32", shape: [1, 4], data: box });
  inputs.push({ name: "multimask_output", datatype: "BOOL", shape: [1, 1], data: [multimask] });
  return inputs;
}

/** One image held by the server; prompts are answered against it. */
export class Session {
  /** imageBytes: the image file as it is (the server decodes it, EXIF orientation applied). */
  constructor(imageBytes, base = "") {
    this.imageBytes = imageBytes;
    this.base = base;
    this.id = null;
    this.started = false;
    this.closed = false;
    this.restarts = 0;
    /** The request that carries the image, while it is in flight. */
    this.starting = null;
    /** Milliseconds of the last request that carried the image (decode and encode). */
    this.startMs = 0;
  }

  /** Send the image alone, so that it is encoded while the user aims; resolves to [H, W]. */
  async start() {
    if (!this.starting) this.starting = this.#begin([], [{ name: "image_size", binary: false }]);
    const answer = await this.starting;
    return answer.image_size?.data ?? null;
  }

  /**
   * Masks for a prompt: resolves to {png (the best mask, 0/255, at the image's size), iou
   * (every mask's predicted IoU), best (its index), roundTripMs, restarted}. A request that
   * carries the image is never aborted by signal (other prompts wait for it); the others are.
   */
  async predict(prompt, multimask, signal) {
    const inputs = promptInputs(prompt, multimask);
    const t0 = performance.now();
    let restarted = false;
    for (let attempt = 0; ; attempt += 1) {
      if (this.starting) await this.starting.catch(() => {});
      signal?.throwIfAborted();
      let answer;
      if (!this.started) {
        answer = await (this.starting = this.#begin(inputs, PROMPT_OUTPUTS));
      } else {
        const id = this.id;
        try {
          answer = await infer(this.base, id, { inputs, outputs: PROMPT_OUTPUTS }, { signal });
        } catch (e) {
          if (!(e instanceof ServerError && e.lost) || attempt > 0) throw e;
          if (this.id === id && this.started) {
            this.started = false;
            this.restarts += 1;
          }
          restarted = true;
          continue;
        }
      }
      const iou = answer.iou_predictions.data;
      return {
        png: answer.mask_png.bytes,
        iou,
        best: iou.indexOf(Math.max(...iou)),
        roundTripMs: performance.now() - t0,
        restarted,
      };
    }
  }

  /** End the session: the server frees its memory now instead of after its idle timeout. */
  end() {
    this.closed = true;
    if (!this.started) return;
    this.started = false;
    const outputs = [{ name: "image_size", binary: false }];
    // keepalive: the request survives the page being closed.
    infer(this.base, this.id, { end: true, outputs }, { keepalive: true }).catch(() => {});
  }

  /** One request with the image (and inputs), starting a new sequence. */
  async #begin(inputs, outputs) {
    const id = newSessionId();
    this.id = id;
    const image = { name: "image_bytes", datatype: "UINT8", shape: [1, this.imageBytes.byteLength], binary: this.imageBytes };
    const t0 = performance.now();
    try {
      const answer = await infer(this.base, id, { start: true, inputs: [image, ...inputs], outputs });
      this.startMs = performance.now() - t0;
      if (this.id === id) this.started = true;
      if (this.closed) this.end();
      return answer;
    } finally {
      this.starting = null;
    }
  }
}
