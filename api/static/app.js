// Captionizer's web page: submit an image (URL or file), follow the job by long-polling
// GET /v1/jobs/{id}?wait=N, show the caption, and keep this tab's recent jobs.
// Plain ES module, no build step, nothing from a CDN (the page's CSP is default-src 'self').

const API = "/v1/jobs";
const POLL_WAIT_S = 25; // the API caps ?wait= at 60 s; shorter keeps proxies' idle timers happy
const FINAL = new Set(["succeeded", "failed", "canceled", "expired"]);
const RECENT_KEY = "captionizer.recent";
const API_KEY_KEY = "captionizer.apiKey";
const MAX_RECENT = 20;
const PREVIEW_DELAY_MS = 400;

const $ = (id) => document.getElementById(id);
const ui = {
  form: $("job-form"), url: $("image-url"), file: $("image-file"), dropZone: $("drop-zone"),
  fileName: $("file-name"), fileNameText: $("file-name-text"), clearFile: $("clear-file"),
  prompt: $("prompt"), maxTokens: $("max-new-tokens"), apiKey: $("api-key"), forgetKey: $("forget-key"),
  submit: $("submit"), cancel: $("cancel"), status: $("status"),
  error: $("error"), errorTitle: $("error-title"), errorDetail: $("error-detail"),
  previewFigure: $("preview-figure"), preview: $("preview"), previewNote: $("preview-note"),
  captionBox: $("caption-box"), caption: $("caption"), copy: $("copy"), copyStatus: $("copy-status"),
  recentList: $("recent-list"), recentEmpty: $("recent-empty"), clearRecent: $("clear-recent"),
};

const state = {
  file: null, // the File to upload, when one is chosen
  objectUrl: null, // blob: URL previewing that file
  previews: new Map(), // job id -> preview URL, for this page load
  current: null, // id of the job on screen
  poll: null, // AbortController of the running long-poll
  previewTimer: 0, // pending preview of a URL being typed
};

/** A problem response (RFC 9457) or a network failure, ready to show. */
class ApiProblem extends Error {
  constructor(status, body, retryAfter) {
    super(body.detail || body.title || `HTTP ${status}`);
    this.status = status;
    this.code = body.code || `http_${status}`;
    this.title = body.title || "Request failed";
    this.detail = body.detail || "";
    this.retryAfter = retryAfter;
  }
}

// ---- talking to the API -------------------------------------------------------------

function authHeaders() {
  const key = ui.apiKey.value.trim();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

async function callApi(path, options = {}) {
  let response;
  try {
    response = await fetch(path, {
      ...options,
      headers: { Accept: "application/json", ...authHeaders(), ...(options.headers || {}) },
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

function submitJob() {
  const options = {};
  if (ui.prompt.value.trim()) options.prompt = ui.prompt.value.trim();
  if (ui.maxTokens.value) options.max_new_tokens = Number(ui.maxTokens.value);
  if (state.file) {
    const form = new FormData();
    form.append("file", state.file, state.file.name || "image");
    for (const [name, value] of Object.entries(options)) form.append(name, String(value));
    return callApi(API, { method: "POST", body: form });
  }
  return callApi(API, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ image_url: ui.url.value.trim(), ...options }),
  });
}

/** Long-poll the job until it is final, calling onUpdate with each version seen. */
async function followJob(job, onUpdate, signal) {
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

function sleep(ms, signal) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(resolve, ms);
    signal?.addEventListener("abort", () => {
      clearTimeout(timer);
      reject(new DOMException("Aborted", "AbortError"));
    }, { once: true });
  });
}

// ---- showing things ------------------------------------------------------------------

function setStatus(text) {
  ui.status.textContent = text;
}

function showError(title, detail) {
  ui.errorTitle.textContent = title;
  ui.errorDetail.textContent = detail || "";
  ui.error.hidden = false;
}

function clearError() {
  ui.error.hidden = true;
  ui.errorTitle.textContent = "";
  ui.errorDetail.textContent = "";
}

function showProblem(err) {
  if (err.code === "rate_limited" || err.status === 429) {
    const wait = err.retryAfter ? `Try again in ${err.retryAfter} s.` : "Try again shortly.";
    showError("Too many requests", `${sentence(err.detail || "You have sent too many requests")} ${wait}`);
  } else if (err.status === 401) {
    showError("API key needed", `${sentence(err.detail || "This server needs an API key")} Enter a key under Options.`);
    document.querySelector("details.options").open = true;
  } else {
    showError(err.title || "Something went wrong", err.detail || String(err.message || err));
  }
  setStatus(err.status ? `Failed (${err.code}).` : "Failed.");
}

/** The text ending with a full stop, so a hint can follow it. */
function sentence(text) {
  return /[.!?]$/.test(text) ? text : `${text}.`;
}

function showPreview(src, note = "") {
  if (!src) {
    ui.previewFigure.hidden = true;
    ui.preview.removeAttribute("src");
    return;
  }
  ui.preview.alt = "Preview of the image to caption";
  ui.preview.hidden = false;
  ui.preview.src = src;
  ui.previewNote.textContent = note;
  ui.previewFigure.hidden = false;
}

const STATUS_TEXT = {
  queued: "Queued: waiting for a worker…",
  running: "Running…",
  succeeded: "Done.",
  failed: "The job failed.",
  canceled: "Canceled.",
  expired: "Expired before a worker could start it.",
};

function describe(job) {
  if (job.status === "running" && job.stage) return `Running: ${job.stage}…`;
  if (job.status === "succeeded" && job.created_at && job.finished_at) {
    const seconds = (Date.parse(job.finished_at) - Date.parse(job.created_at)) / 1000;
    if (Number.isFinite(seconds)) return `Done in ${seconds.toFixed(1)} s.`;
  }
  return STATUS_TEXT[job.status] || `Status: ${job.status}`;
}

function renderJob(job) {
  setStatus(describe(job));
  ui.cancel.hidden = FINAL.has(job.status);
  ui.captionBox.hidden = job.status !== "succeeded";
  if (job.status === "succeeded") {
    ui.caption.textContent = job.caption || "";
    ui.copyStatus.textContent = "";
    ui.preview.alt = job.caption || ui.preview.alt; // the preview now carries its own alt text
  } else if (job.status === "failed" && job.error) {
    showError("Could not caption this image", `${job.error.message} (${job.error.code})`);
  }
  rememberJob(job);
}

// ---- recent jobs (sessionStorage: this tab only) -------------------------------------

function loadRecent() {
  try {
    const list = JSON.parse(sessionStorage.getItem(RECENT_KEY) || "[]");
    return Array.isArray(list) ? list : [];
  } catch {
    return [];
  }
}

function rememberJob(job, label) {
  const list = loadRecent();
  const old = list.find((entry) => entry.id === job.id);
  const entry = {
    id: job.id,
    label: label || old?.label || job.image_url || "uploaded file",
    image_url: job.image_url || null,
    status: job.status,
    caption: job.caption || null,
    created_at: job.created_at || old?.created_at || new Date().toISOString(),
  };
  const rest = list.filter((item) => item.id !== job.id);
  sessionStorage.setItem(RECENT_KEY, JSON.stringify([entry, ...rest].slice(0, MAX_RECENT)));
  renderRecent();
}

function renderRecent() {
  const list = loadRecent();
  ui.recentEmpty.hidden = list.length > 0;
  ui.clearRecent.hidden = list.length === 0;
  ui.recentList.replaceChildren(...list.map(recentItem));
}

function recentItem(entry) {
  const item = document.createElement("li");
  const button = document.createElement("button");
  button.type = "button";
  button.className = "recent-item";
  button.dataset.jobId = entry.id;
  const name = document.createElement("span");
  name.className = "recent-label";
  name.textContent = entry.label;
  const badge = document.createElement("span");
  badge.className = `badge badge-${entry.status}`;
  badge.textContent = entry.status;
  const caption = document.createElement("span");
  caption.className = "recent-caption";
  caption.textContent = entry.caption || "";
  button.append(name, badge, caption);
  button.setAttribute("aria-current", String(entry.id === state.current));
  button.addEventListener("click", () => reopenJob(entry));
  item.append(button);
  return item;
}

async function reopenJob(entry) {
  clearError();
  state.current = entry.id;
  showPreview(state.previews.get(entry.id) || entry.image_url);
  setStatus(`Loading ${entry.label}…`);
  try {
    const job = await callApi(`${API}/${encodeURIComponent(entry.id)}`);
    await track(job);
  } catch (err) {
    if (err.name !== "AbortError") showProblem(err);
  }
}

// ---- the main flow -------------------------------------------------------------------

async function track(job) {
  state.poll?.abort();
  const controller = new AbortController();
  state.poll = controller;
  state.current = job.id;
  renderJob(job);
  try {
    const final = await followJob(job, (seen) => state.current === seen.id && renderJob(seen), controller.signal);
    if (state.current === final.id) renderJob(final);
  } catch (err) {
    if (err.name !== "AbortError") showProblem(err);
  } finally {
    if (state.poll === controller) state.poll = null;
  }
}

function validateInput() {
  if (state.file) {
    if (state.file.type && !state.file.type.startsWith("image/")) {
      return ["Not an image", `"${state.file.name}" is a ${state.file.type} file; choose a JPEG, PNG, GIF or WebP image.`];
    }
    return null;
  }
  const text = ui.url.value.trim();
  if (!text) return ["Nothing to caption", "Enter an image URL, or drop or choose a file."];
  if (!isHttpUrl(text)) return ["Not a valid URL", `"${text}" is not an http or https URL.`];
  return null;
}

function isHttpUrl(text) {
  try {
    const url = new URL(text);
    return (url.protocol === "http:" || url.protocol === "https:") && Boolean(url.hostname);
  } catch {
    return false;
  }
}

async function onSubmit(event) {
  event.preventDefault();
  clearError();
  const invalid = validateInput();
  if (invalid) {
    showError(...invalid);
    setStatus("Not submitted.");
    (state.file ? ui.file : ui.url).focus();
    return;
  }
  if (!state.file) {
    clearTimeout(state.previewTimer);
    showPreview(ui.url.value.trim());
  }
  ui.captionBox.hidden = true;
  ui.submit.disabled = true;
  setStatus("Submitting…");
  const label = state.file ? state.file.name || "pasted image" : ui.url.value.trim();
  try {
    const job = await submitJob();
    if (state.objectUrl) state.previews.set(job.id, state.objectUrl);
    rememberJob(job, label);
    ui.submit.disabled = false; // another image may be submitted while this one is followed
    await track(job);
  } catch (err) {
    showProblem(err);
  } finally {
    ui.submit.disabled = false;
  }
}

async function onCancel() {
  const id = state.current;
  if (!id) return;
  ui.cancel.disabled = true;
  try {
    const job = await callApi(`${API}/${encodeURIComponent(id)}/cancel`, { method: "POST" });
    state.poll?.abort();
    renderJob(job);
  } catch (err) {
    if (err.status === 404 || err.status === 405) {
      showError("Cannot cancel", err.code === "job_not_found" ? err.detail : "This server does not support canceling jobs.");
    } else {
      showProblem(err);
    }
  } finally {
    ui.cancel.disabled = false;
  }
}

// ---- choosing the image --------------------------------------------------------------

function chooseFile(file) {
  if (state.objectUrl) URL.revokeObjectURL(state.objectUrl);
  state.file = file;
  state.objectUrl = null;
  ui.fileName.hidden = !file;
  if (!file) {
    ui.file.value = "";
    showPreview(isHttpUrl(ui.url.value.trim()) ? ui.url.value.trim() : null);
    return;
  }
  ui.url.value = "";
  ui.fileNameText.textContent = `Selected: ${file.name || "pasted image"} (${formatBytes(file.size)})`;
  clearError();
  if (!file.type || file.type.startsWith("image/")) {
    state.objectUrl = URL.createObjectURL(file);
    showPreview(state.objectUrl);
  } else {
    showPreview(null);
  }
}

function formatBytes(bytes) {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(0)} KB`;
  return `${(bytes / 1024 / 1024).toFixed(1)} MB`;
}

function onUrlInput() {
  const text = ui.url.value.trim();
  if (text && state.file) chooseFile(null);
  // Wait for typing to pause: every keystroke would otherwise fetch a half-typed URL.
  clearTimeout(state.previewTimer);
  state.previewTimer = setTimeout(() => showPreview(isHttpUrl(text) ? text : null), PREVIEW_DELAY_MS);
}

function onDrop(event) {
  event.preventDefault();
  ui.dropZone.classList.remove("dragging");
  const file = event.dataTransfer.files[0];
  if (file) {
    chooseFile(file);
    return;
  }
  const link = (event.dataTransfer.getData("text/uri-list") || event.dataTransfer.getData("text/plain")).split("\n")[0];
  if (link) {
    ui.url.value = link.trim();
    onUrlInput();
  }
}

function onPaste(event) {
  const file = [...(event.clipboardData?.files || [])].find((item) => item.type.startsWith("image/"));
  if (file) {
    event.preventDefault();
    chooseFile(file);
  }
}

async function onCopy() {
  const text = ui.caption.textContent;
  try {
    await navigator.clipboard.writeText(text);
    ui.copyStatus.textContent = "Copied to the clipboard.";
  } catch {
    // Clipboard access needs a secure context or permission; selecting the text lets the user copy it.
    window.getSelection()?.selectAllChildren(ui.caption);
    ui.copyStatus.textContent = "Press Ctrl+C (⌘C) to copy the selected caption.";
  }
}

function onPreviewError() {
  if (ui.preview.getAttribute("src")) {
    // A broken-image icon helps no one; say why there is no preview instead.
    ui.preview.hidden = true;
    ui.previewNote.textContent = "No preview: your browser could not load this image (the server fetches it itself).";
  }
}

// ---- wiring ----------------------------------------------------------------------------

function wireApiKey() {
  ui.apiKey.value = localStorage.getItem(API_KEY_KEY) || "";
  ui.apiKey.addEventListener("change", () => {
    const key = ui.apiKey.value.trim();
    if (key) localStorage.setItem(API_KEY_KEY, key);
    else localStorage.removeItem(API_KEY_KEY);
  });
  ui.forgetKey.addEventListener("click", () => {
    localStorage.removeItem(API_KEY_KEY);
    ui.apiKey.value = "";
    ui.apiKey.focus();
  });
}

function wireDropZone() {
  for (const name of ["dragenter", "dragover"]) {
    ui.dropZone.addEventListener(name, (event) => {
      event.preventDefault();
      ui.dropZone.classList.add("dragging");
    });
  }
  ui.dropZone.addEventListener("dragleave", () => ui.dropZone.classList.remove("dragging"));
  ui.dropZone.addEventListener("drop", onDrop);
  // A file dropped just outside the zone must not replace the page with the image.
  window.addEventListener("dragover", (event) => event.preventDefault());
  window.addEventListener("drop", (event) => event.preventDefault());
}

function init() {
  ui.form.addEventListener("submit", onSubmit);
  ui.cancel.addEventListener("click", onCancel);
  ui.url.addEventListener("input", onUrlInput);
  ui.file.addEventListener("change", () => chooseFile(ui.file.files[0] || null));
  ui.clearFile.addEventListener("click", () => {
    chooseFile(null);
    ui.file.focus();
  });
  ui.copy.addEventListener("click", onCopy);
  ui.preview.addEventListener("error", onPreviewError);
  ui.clearRecent.addEventListener("click", () => {
    sessionStorage.removeItem(RECENT_KEY);
    renderRecent();
  });
  document.addEventListener("paste", onPaste);
  wireApiKey();
  wireDropZone();
  renderRecent();
  document.documentElement.classList.add("js");
}

init();
