// The recent-jobs list: the jobs started in this tab, kept in sessionStorage (gone when the tab closes).

const RECENT_KEY = "captionizer.recent";
const MAX_RECENT = 20;

let ui = null; // { list, empty, clear }
let onOpen = () => {};
let isCurrent = () => false;

/** Draw the list into `elements`; `open(entry)` shows a job again, `current(id)` marks the one on screen. */
export function setUpRecent(elements, { open, current }) {
  ui = elements;
  onOpen = open;
  isCurrent = current;
  ui.clear.addEventListener("click", () => {
    sessionStorage.removeItem(RECENT_KEY);
    renderRecent();
  });
  renderRecent();
}

function loadRecent() {
  try {
    const list = JSON.parse(sessionStorage.getItem(RECENT_KEY) || "[]");
    return Array.isArray(list) ? list : [];
  } catch {
    return [];
  }
}

/** Add or update `job` (shown as `label`) at the top of the list. */
export function rememberJob(job, label) {
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

export function renderRecent() {
  const list = loadRecent();
  ui.empty.hidden = list.length > 0;
  ui.clear.hidden = list.length === 0;
  ui.list.replaceChildren(...list.map(recentItem));
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
  button.setAttribute("aria-current", String(isCurrent(entry.id)));
  button.addEventListener("click", () => onOpen(entry));
  item.append(button);
  return item;
}
