// Several files at once: each becomes its own job, listed with its preview, status, caption and copy button.

import { FINAL, copyText, followJob, submitJob } from "./api.js";

/** At most this many jobs are submitted or long-polled at once (browsers allow ~6 connections per host). */
const CONCURRENCY = 4;

const STATUS_TEXT = {
  queued: "queued", running: "running", succeeded: "succeeded", failed: "failed",
  canceled: "canceled", expired: "expired", error: "not submitted",
};

/** Show the empty "no preview" box instead of `image`'s picture. */
function hidePreview(image) {
  image.removeAttribute("src");
  image.classList.add("no-preview");
}

/** Build one list row for `file` and return its handles. */
function row(file, previewUrl) {
  const item = document.createElement("li");
  item.className = "file-job";
  const image = document.createElement("img");
  image.className = "file-job-preview";
  image.alt = `Preview of ${file.name || "image"}`;
  // No preview for a file that is not an image: an empty box, not a broken-image icon.
  // A file the browser cannot decode (TIFF, a corrupt PNG) loses its preview rather than show a broken icon.
  image.addEventListener("error", () => hidePreview(image));
  if (previewUrl) image.src = previewUrl;
  else image.classList.add("no-preview");
  const name = document.createElement("span");
  name.className = "file-job-name";
  name.textContent = file.name || "pasted image";
  const badge = document.createElement("span");
  badge.className = "badge badge-queued";
  badge.setAttribute("role", "status");
  badge.textContent = "waiting";
  const caption = document.createElement("p");
  caption.className = "file-job-caption";
  const copy = document.createElement("button");
  copy.type = "button";
  copy.className = "secondary";
  copy.textContent = "Copy";
  copy.setAttribute("aria-label", `Copy alt text of ${file.name || "image"}`);
  copy.hidden = true;
  const copied = document.createElement("span");
  copied.className = "hint";
  copied.setAttribute("aria-live", "polite");
  copy.addEventListener("click", async () => {
    copied.textContent = await copyText(caption.textContent, caption);
  });
  item.append(image, name, badge, caption, copy, copied);
  return { item, image, badge, caption, copy };
}

function show(handles, job, problem) {
  const status = problem ? "error" : job.status;
  // A refused file gets the empty box, never a broken-image icon (e.g. a TIFF the browser cannot show).
  if (problem) hidePreview(handles.image);
  handles.badge.className = `badge badge-${status === "error" ? "failed" : status}`;
  handles.badge.textContent = STATUS_TEXT[status] || status;
  if (problem) {
    handles.caption.textContent = `${problem.detail || problem.title} (${problem.code})`;
  } else if (job.status === "succeeded") {
    handles.caption.textContent = job.caption || "";
    handles.image.alt = job.caption || handles.image.alt;
  } else if (job.status === "failed" && job.error) {
    handles.caption.textContent = `${job.error.message} (${job.error.code})`;
  }
  handles.copy.hidden = !(job && job.status === "succeeded" && !problem);
}

/** Run `task` over `items`, at most CONCURRENCY at a time. */
async function pool(items, task) {
  const queue = [...items];
  const workers = Array.from({ length: Math.min(CONCURRENCY, queue.length) }, async () => {
    while (queue.length) await task(queue.shift());
  });
  await Promise.all(workers);
}

/**
 * Submit every file as its own job into `list` (emptied first) and follow each to its end.
 * `onJob(job, label, previewUrl)` is told of every job, for the recent-jobs list; `signal` stops following.
 * Returns how many files were sent (became jobs) and how many were not (refused here or by the API).
 */
export async function captionFiles(files, { list, options, previews, onJob, signal, check }) {
  const counts = { sent: 0, notSent: 0 };
  list.replaceChildren();
  const rows = files.map((file, index) => ({ file, handles: row(file, previews[index]), preview: previews[index] }));
  list.append(...rows.map((entry) => entry.handles.item));
  await pool(rows, async ({ file, handles, preview }) => {
    const invalid = check(file);
    if (invalid) {
      counts.notSent += 1;
      show(handles, null, { title: invalid[0], detail: invalid[1], code: "not_submitted" });
      return;
    }
    let job = null;
    try {
      job = await submitJob({ file, options });
      counts.sent += 1;
      onJob(job, file.name || "pasted image", preview);
      show(handles, job);
      if (!FINAL.has(job.status)) job = await followJob(job, (seen) => show(handles, seen), signal);
      onJob(job, file.name || "pasted image", preview);
      show(handles, job);
    } catch (err) {
      if (!job) counts.notSent += 1; // refused at submit: never a job
      if (err.name !== "AbortError") show(handles, null, err);
    }
  });
  return counts;
}
