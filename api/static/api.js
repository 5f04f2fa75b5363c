// Talking to the Captionizer API from the page: problem responses, submitting, long-polling.
// Shared by app.js (one image) and file-list.js (several files at once).

export const API = "/v1/jobs";
const POLL_WAIT_S = 25; // the API caps ?wait= at max_wait_s (60 s by default); shorter keeps proxies' idle timers happy
export const FINAL = new Set(["succeeded", "failed", "canceled", "expired"]);

/** A problem response (RFC 9457) or a network failure, ready to show. */
export class ApiProblem extends Error {
  constructor(status, body, retryAfter) {
    super(body.detail || body.title || `HTTP ${status}`);
    this.status = status;
    this.code = body.code || `http_${status}`;
    this.title = body.title || "Request failed";
    this.detail = body.detail || "";
    this.retryAfter = retryAfter;
  }
}

let apiKey = () => "";

/** Where the page keeps the API key the user typed (read on every request). */
export function useApiKey(getKey) {
  apiKey = getKey;
}

export async function callApi(path, options = {}) {
  const key = apiKey();
  let response;
  try {
    response = await fetch(path, {
      ...options,
      headers: { Accept: "application/json", ...(key ? { Authorization: `Bearer ${key}` } : {}), ...(options.headers || {}) },
    });
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiProblem(0, { code: "network_error", title: "Cannot reach the server",
      detail: "Check your connection and try again." });
  }
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new ApiProblem(response.status, body, response.headers.get("Retry-After"));
  return body;
}

/** Submit one image: a File (multipart) or a URL (JSON), with the options the form holds. */
export function submitJob({ file = null, url = "", options = {} }) {
  if (file) {
    const form = new FormData();
    form.append("file", file, file.name || "image");
    for (const [name, value] of Object.entries(options)) form.append(name, String(value));
    return callApi(API, { method: "POST", body: form });
  }
  return callApi(API, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ image_url: url, ...options }),
  });
}

/** Long-poll the job until it is final, calling onUpdate with each version seen. */
export async function followJob(job, onUpdate, signal) {
  let failures = 0;
  while (!FINAL.has(job.status)) {
    try {
      job = await callApi(`${API}/${encodeURIComponent(job.id)}?wait=${POLL_WAIT_S}`, { signal });
      failures = 0;
      onUpdate(job);
    } catch (err) {
      if (err.name === "AbortError" || (err.status >= 400 && err.status < 500 && err.status !== 429)) throw err;
      failures += 1; // a blip (network, 429, 5xx): back off and keep following
      if (failures > 5) throw err;
      await sleep(Math.min(1000 * 2 ** failures, 15000), signal);
    }
  }
  return job;
}

export function sleep(ms, signal) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(resolve, ms);
    signal?.addEventListener("abort", () => {
      clearTimeout(timer);
      reject(new DOMException("Aborted", "AbortError"));
    }, { once: true });
  });
}

/** Put text on the clipboard, or select it in `element` so Ctrl+C copies it; returns what to tell the user. */
export async function copyText(text, element) {
  try {
    await navigator.clipboard.writeText(text);
    return "Copied to the clipboard.";
  } catch {
    // Clipboard access needs a secure context or permission; selecting the text lets the user copy it.
    window.getSelection()?.selectAllChildren(element);
    return "Press Ctrl+C (⌘C) to copy the selected caption.";
  }
}
