// Captionizer's web page: submit an image (URL or file), follow the job by long-polling
// GET /v1/jobs/{id}?wait=N, show the caption, and keep this tab's recent jobs.
// Plain ES module, no build step, nothing from a CDN (the page's CSP is default-src 'self').

import { API, FINAL, callApi, copyText, followJob, submitJob, useApiKey } from "./api.js";
import { captionFiles } from "./file-list.js";
import { rememberJob, setUpRecent } from "./recent.js";

const API_KEY_KEY = "captionizer.apiKey";
const PREVIEW_DELAY_MS = 400;
/** Files one selection may hold; more is refused before anything is sent. */
const MAX_FILES = 20;

const $ = (id) => document.getElementById(id);
const ui = {
  form: $("job-form"), url: $("image-url"), file: $("image-file"), dropZone: $("drop-zone"),
  fileName: $("file-name"), fileNameText: $("file-name-text"), clearFile: $("clear-file"),
  prompt: $("prompt"), maxTokens: $("max-new-tokens"), apiKey: $("api-key"), forgetKey: $("forget-key"),
  submit: $("submit"), cancel: $("cancel"), status: $("status"), result: $("result"),
  error: $("error"), errorTitle: $("error-title"), errorDetail: $("error-detail"),
  previewFigure: $("preview-figure"), preview: $("preview"), previewNote: $("preview-note"),
  captionBox: $("caption-box"), caption: $("caption"), copy: $("copy"), copyStatus: $("copy-status"),
  fileJobs: $("file-jobs"), samples: $("samples"), urlHint: $("url-hint"), modelHint: $("model-hint"),
  recentList: $("recent-list"), recentEmpty: $("recent-empty"), clearRecent: $("clear-recent"),
};

const state = {
  files: [], // the Files to upload, when some are chosen
  objectUrls: [], // blob: URLs previewing those files (kept while a job shows one)
  previews: new Map(), // job id -> preview URL, for this page load
  current: null, // id of the job on screen
  poll: null, // AbortController of the running long-poll(s)
  previewTimer: 0, // pending preview of a URL being typed
  limits: null, // GET /v1/limits, once loaded
};

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

/** A new input: the result on screen belongs to the old one, so it goes (caption, copy button, error, list). */
function resetResult(text = "Ready: press Enter or Caption it.") {
  state.current = null;
  clearError();
  ui.captionBox.hidden = true;
  ui.caption.textContent = "";
  ui.copyStatus.textContent = "";
  ui.cancel.hidden = true;
  ui.fileJobs.replaceChildren();
  ui.fileJobs.hidden = true;
  setStatus(text);
}

function showResult() {
  // The result card sits below the form: bring it into view once there is something in it.
  ui.result.scrollIntoView({ block: "nearest", behavior: "smooth" });
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
  if (FINAL.has(job.status)) showResult();
}

async function reopenJob(entry) {
  resetResult(`Loading ${entry.label}…`);
  state.current = entry.id;
  showPreview(state.previews.get(entry.id) || entry.image_url);
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

/** Why `file` cannot be sent, as [title, detail], or null; checked against the server's GET /v1/limits. */
function checkFile(file) {
  const accepted = state.limits?.image_formats.map((format) => format.media_type);
  if (file.type && (accepted ? !accepted.includes(file.type) : !file.type.startsWith("image/"))) {
    return ["Not an image", `"${file.name}" is a ${file.type} file; choose a ${formatNames()} image.`];
  }
  const maxBytes = state.limits?.max_upload_bytes;
  if (maxBytes && file.size > maxBytes) {
    return ["File too large", `"${file.name}" is ${formatBytes(file.size)}; the server takes up to ${formatBytes(maxBytes)}.`];
  }
  return null;
}

function formatNames() {
  const names = state.limits?.image_formats.map((format) => format.name) || ["JPEG", "PNG", "GIF", "WebP"];
  return `${names.slice(0, -1).join(", ")} or ${names.at(-1)}`;
}

function validateInput() {
  if (state.files.length > MAX_FILES) {
    return ["Too many files", `Choose at most ${MAX_FILES} files at once; ${state.files.length} were chosen.`];
  }
  if (state.files.length === 1) return checkFile(state.files[0]);
  if (state.files.length > 1) return null; // each file is checked on its own row
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

function formOptions() {
  const options = {};
  if (ui.prompt.value.trim()) options.prompt = ui.prompt.value.trim();
  if (ui.maxTokens.value) options.max_new_tokens = Number(ui.maxTokens.value);
  return options;
}

async function onSubmit(event) {
  event.preventDefault();
  clearError();
  const invalid = validateInput();
  if (invalid) {
    showError(...invalid);
    setStatus("Not submitted.");
    (state.files.length ? ui.file : ui.url).focus();
    return;
  }
  if (state.files.length > 1) {
    await submitFiles();
    return;
  }
  const file = state.files[0] || null;
  const url = ui.url.value.trim();
  if (!file) {
    clearTimeout(state.previewTimer);
    showPreview(url);
  }
  ui.captionBox.hidden = true;
  ui.submit.disabled = true;
  setStatus("Submitting…");
  showResult();
  try {
    const job = await submitJob({ file, url, options: formOptions() });
    if (file) state.previews.set(job.id, state.objectUrls[0]);
    rememberJob(job, file ? file.name || "pasted image" : url);
    ui.submit.disabled = false; // another image may be submitted while this one is followed
    await track(job);
  } catch (err) {
    showProblem(err);
  } finally {
    ui.submit.disabled = false;
  }
}

/** Several files: each its own job, in a list under the result heading. */
async function submitFiles() {
  state.poll?.abort();
  const controller = new AbortController();
  state.poll = controller;
  resetResult(`Captioning ${state.files.length} files…`);
  showPreview(null);
  ui.fileJobs.hidden = false;
  showResult();
  const counts = await captionFiles(state.files, {
    list: ui.fileJobs,
    options: formOptions(),
    previews: state.objectUrls,
    check: checkFile,
    signal: controller.signal,
    onJob: (job, label, preview) => {
      state.previews.set(job.id, preview);
      rememberJob(job, label);
    },
  });
  if (state.poll === controller) {
    state.poll = null;
    // Only the files that became jobs count as done; the others say why in their rows.
    const notSent = counts.notSent ? `, ${counts.notSent} not sent` : "";
    setStatus(`Done: ${counts.sent} ${counts.sent === 1 ? "file" : "files"}${notSent}.`);
    showResult();
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

/** Use `files` (an array, maybe empty) as the input; previews of earlier files stay with their jobs. */
function chooseFiles(files) {
  releasePreviews();
  state.files = files;
  state.objectUrls = files.map((file) => (!file.type || file.type.startsWith("image/") ? URL.createObjectURL(file) : ""));
  ui.fileName.hidden = files.length === 0;
  if (files.length === 0) {
    ui.file.value = "";
    resetResult("Nothing captioned yet.");
    showPreview(isHttpUrl(ui.url.value.trim()) ? ui.url.value.trim() : null);
    return;
  }
  ui.url.value = "";
  clearTimeout(state.previewTimer);
  resetResult();
  const total = files.reduce((sum, file) => sum + file.size, 0);
  ui.fileNameText.textContent = files.length === 1
    ? `Selected: ${files[0].name || "pasted image"} (${formatBytes(total)})`
    : `Selected: ${files.length} files (${formatBytes(total)})`;
  ui.clearFile.textContent = files.length > 1 ? "Remove files" : "Remove file";
  const note = files.length > 1 ? `${files.length} files: each becomes its own job.` : "";
  showPreview(state.objectUrls[0] || null, note);
}

function releasePreviews() {
  // A blob: URL a job still shows (recent jobs) must stay valid; the others are freed.
  const kept = new Set(state.previews.values());
  for (const url of state.objectUrls) if (url && !kept.has(url)) URL.revokeObjectURL(url);
  state.objectUrls = [];
}

function formatBytes(bytes) {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(0)} KB`;
  return `${(bytes / 1024 / 1024).toFixed(1)} MB`;
}

function onUrlInput() {
  const text = ui.url.value.trim();
  if (text && state.files.length) chooseFiles([]);
  resetResult(text ? "Ready: press Enter or Caption it." : "Nothing captioned yet.");
  // Wait for typing to pause: every keystroke would otherwise fetch a half-typed URL.
  clearTimeout(state.previewTimer);
  state.previewTimer = setTimeout(() => showPreview(isHttpUrl(text) ? text : null), PREVIEW_DELAY_MS);
}

function useUrl(link) {
  ui.url.value = link.trim();
  onUrlInput();
}

function onDrop(event) {
  event.preventDefault();
  ui.dropZone.classList.remove("dragging");
  const files = [...event.dataTransfer.files];
  if (files.length) {
    chooseFiles(files);
    return;
  }
  const link = (event.dataTransfer.getData("text/uri-list") || event.dataTransfer.getData("text/plain")).split("\n")[0];
  if (link) useUrl(link);
}

function onPaste(event) {
  const files = [...(event.clipboardData?.files || [])].filter((item) => item.type.startsWith("image/"));
  if (files.length) {
    event.preventDefault();
    chooseFiles(files);
  }
}

async function onCopy() {
  ui.copyStatus.textContent = await copyText(ui.caption.textContent, ui.caption);
}

function onPreviewError() {
  if (ui.preview.getAttribute("src")) {
    // A broken-image icon helps no one; say why there is no preview instead.
    ui.preview.hidden = true;
    ui.previewNote.textContent = "No preview: your browser could not load this image (the server fetches it itself).";
  }
}

/** Fit the form to what this server accepts (GET /v1/limits); the HTML holds the defaults until then. */
async function loadLimits() {
  try {
    const limits = await callApi("/v1/limits");
    state.limits = limits;
    ui.maxTokens.max = String(limits.max_new_tokens_limit);
    ui.prompt.maxLength = limits.max_prompt_chars;
    ui.file.accept = limits.image_formats.flatMap((format) => [format.media_type, ...format.suffixes]).join(",");
    ui.urlHint.textContent = `An http or https link to a ${formatNames()} image.`;
    // The embedded demonstration model knows only shapes: say so before a photo gets a shape caption.
    ui.modelHint.textContent = limits.demonstration_model ? limits.model_hint : "";
    ui.modelHint.hidden = !limits.demonstration_model;
    document.documentElement.dataset.limits = "loaded";
  } catch {
    document.documentElement.dataset.limits = "defaults"; // an older server: the HTML's defaults stay
  }
}

// ---- wiring ----------------------------------------------------------------------------

function wireApiKey() {
  ui.apiKey.value = localStorage.getItem(API_KEY_KEY) || "";
  useApiKey(() => ui.apiKey.value.trim());
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

function wireSamples() {
  for (const button of ui.samples.querySelectorAll("button[data-sample]")) {
    button.addEventListener("click", () => {
      useUrl(new URL(`/samples/${button.dataset.sample}`, window.location.origin).href);
      ui.url.focus();
    });
  }
}

function init() {
  ui.form.addEventListener("submit", onSubmit);
  ui.cancel.addEventListener("click", onCancel);
  ui.url.addEventListener("input", onUrlInput);
  ui.file.addEventListener("change", () => chooseFiles([...ui.file.files]));
  ui.clearFile.addEventListener("click", () => {
    chooseFiles([]);
    ui.file.focus();
  });
  ui.copy.addEventListener("click", onCopy);
  ui.preview.addEventListener("error", onPreviewError);
  document.addEventListener("paste", onPaste);
  wireApiKey();
  wireDropZone();
  wireSamples();
  setUpRecent(
    { list: ui.recentList, empty: ui.recentEmpty, clear: ui.clearRecent },
    { open: reopenJob, current: (id) => id === state.current },
  );
  loadLimits();
  document.documentElement.classList.add("js");
}

init();
