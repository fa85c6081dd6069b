// The upload page of the dev pipeline: for each picked or dropped file, POST uploads (same
// origin), POST the file straight to the bucket with the presigned fields, then follow
// GET images/{id} until the record is final. Data only ever reaches the DOM as text.
"use strict";

const POLL_MS = 400;
const GIVE_UP_MS = 90_000;
const MAX_POLL_FAILURES = 5; // consecutive unanswered polls before the card gives up
const FINAL = new Set(["COMPLETED", "FAILED", "DELETED"]);

// Statuses of a card before the API has a record, and after the page gave up.
const LABELS = {
  REQUESTING: "requesting an upload",
  UPLOADING: "uploading to the bucket",
  WAITING: "uploaded; waiting for it to arrive",
  PENDING: "arrived; waiting for the function",
  PROCESSING: "processing",
  COMPLETED: "completed",
  FAILED: "failed",
  DELETED: "deleted by its owner",
  REJECTED: "rejected by the API",
  ERROR: "stopped",
};

// Relative to the page, so the page works wherever the API serves it from.
const apiUrl = (path) => new URL(path, document.baseURI).href;

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function humanBytes(bytes) {
  if (!Number.isFinite(bytes)) return "? B";
  if (bytes < 1000) return `${bytes}\u00a0B`;
  const units = ["kB", "MB", "GB"];
  let value = bytes;
  let unit = -1;
  do {
    value /= 1000;
    unit += 1;
  } while (value >= 1000 && unit < units.length - 1);
  return `${value.toFixed(1)}\u00a0${units[unit]}`; // never "72.9" on one line, "kB" on the next
}

function brief(text, limit = 200) {
  const flat = String(text ?? "").replace(/\s+/g, " ").trim();
  return flat.length <= limit ? flat : `${flat.slice(0, limit - 1)}…`;
}

/** An http(s) URL, resolved against the page; anything else is refused. */
function httpUrl(value) {
  try {
    const url = new URL(String(value), document.baseURI);
    return url.protocol === "http:" || url.protocol === "https:" ? url : null;
  } catch {
    return null;
  }
}

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

class Unreachable extends Error {}

/** fetch that reads the body as JSON when it is JSON; a network failure is `Unreachable`. */
async function requestJson(url, options = {}) {
  let response;
  try {
    response = await fetch(url, options);
  } catch (error) {
    throw new Unreachable(error && error.message ? error.message : String(error));
  }
  const text = await response.text();
  let body = null;
  try {
    body = text ? JSON.parse(text) : null;
  } catch {
    body = null;
  }
  return { status: response.status, body, text };
}

/** What an API error answer says: the API's {error: {field, message}}, the {message} of
 * what stands in front of it (API Gateway, Cloud Run), else the raw text. */
function apiError(answer) {
  const body = answer.body || {};
  if (body.error && typeof body.error.message === "string") return body.error.message;
  if (typeof body.message === "string") return body.message;
  return brief(answer.text) || `HTTP ${answer.status}`;
}

/** S3 and GCS answer a refused POST with XML whose <Message> says why. */
function bucketError(status, text) {
  let message = "";
  try {
    const xml = new DOMParser().parseFromString(text, "application/xml");
    const node = xml.querySelector("Message");
    message = node ? node.textContent : "";
  } catch {
    message = "";
  }
  return `The uploads bucket refused the file (HTTP ${status}): ${brief(message || text) || "no reason given"}`;
}

class Card {
  constructor(file) {
    this.file = file;
    this.root = el("article", "card");
    this.root.setAttribute("data-upload-name", file.name);
    const head = el("header", "card-head");
    this.title = el("h2", "name", file.name);
    this.title.title = file.name;
    this.badge = el("span", "status");
    head.append(this.title, this.badge);
    this.source = el("p", "meta", `${humanBytes(file.size)} · ${file.type || "no type"}`);
    this.image = el("p", "meta image-meta");
    this.image.hidden = true;
    this.note = el("p", "note");
    this.error = el("p", "error");
    this.error.hidden = true;
    this.renditions = el("div", "renditions");
    this.root.append(head, this.source, this.image, this.note, this.error, this.renditions);
    this.setStatus("REQUESTING", LABELS.REQUESTING);
  }

  setStatus(status, note) {
    this.status = status;
    this.root.setAttribute("data-status", status);
    this.badge.textContent = status;
    this.badge.title = LABELS[status] || status;
    // The badge says where a finished card ended; the note only follows one in progress.
    this.note.textContent = note ?? "";
    this.note.hidden = !this.note.textContent;
  }

  /** A line about a card still in progress (a retry, the time so far). */
  progress(text) {
    this.note.textContent = text;
    this.note.hidden = false;
  }

  /** The card ends here: REJECTED or ERROR, with one line saying why. */
  stop(status, message) {
    this.setStatus(status);
    this.showError(message);
  }

  showError(message) {
    this.error.textContent = message;
    this.error.hidden = false;
  }

  /** The public view of the record GET images/{id} answered. */
  showRecord(view, elapsedMs) {
    const status = String(view.status);
    const seconds = (elapsedMs / 1000).toFixed(1);
    this.setStatus(status, FINAL.has(status) ? "" : `${LABELS[status] || status} · ${seconds} s`);
    const facts = [];
    if (view.image) {
      facts.push(`${view.image.width}x${view.image.height} ${view.image.format}`);
      if (view.image.frames > 1) facts.push(`${view.image.frames} frames`);
    }
    if (FINAL.has(status) && typeof view.processingMs === "number") {
      facts.push(`processed in ${Math.round(view.processingMs)} ms`);
    }
    this.image.textContent = facts.join(" · ");
    this.image.hidden = facts.length === 0;
    if (status === "FAILED") {
      const error = view.error || {};
      this.showError(`${error.code || "failed"}: ${error.message || "no reason recorded"}`);
    }
    if (status === "COMPLETED") this.showRenditions(view.renditions || []);
  }

  showRenditions(renditions) {
    this.renditions.replaceChildren();
    for (const rendition of renditions) {
      const figure = el("figure", "rendition");
      const url = httpUrl(rendition.url);
      const img = document.createElement("img");
      img.setAttribute("data-rendition", String(rendition.name));
      img.alt = `${rendition.name} rendition of ${this.file.name}`;
      if (Number.isInteger(rendition.width) && Number.isInteger(rendition.height)) {
        img.width = rendition.width;
        img.height = rendition.height;
      }
      const caption = el("figcaption");
      // Each fact stays on one line; a narrow card wraps between them.
      const facts = el("span", "facts");
      const parts = [
        `${rendition.width}x${rendition.height}`,
        String(rendition.format).toUpperCase(),
        humanBytes(rendition.bytes),
      ];
      parts.forEach((part, index) => {
        if (index > 0) facts.append(" · ");
        facts.append(el("span", "fact", part));
      });
      caption.append(el("strong", null, String(rendition.name)), facts);
      img.addEventListener("error", () => {
        figure.append(el("p", "error", `The CDN did not serve this rendition (${brief(rendition.url, 120)}).`));
      });
      if (url) {
        img.src = url.href;
        const link = el("a");
        link.href = url.href;
        link.target = "_blank";
        link.rel = "noopener";
        link.append(img);
        figure.append(link, caption);
      } else {
        figure.append(img, caption, el("p", "error", "This rendition has no http(s) URL."));
      }
      this.renditions.append(figure);
    }
  }
}

async function upload(file, card) {
  let answer;
  try {
    answer = await requestJson(apiUrl("uploads"), {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ filename: file.name, contentType: file.type, bytes: file.size }),
    });
  } catch (error) {
    return card.stop("ERROR", `Could not reach the upload API: ${brief(error.message)}`);
  }
  if (answer.status >= 400 && answer.status < 500) {
    return card.stop("REJECTED", apiError(answer));
  }
  const granted = answer.body;
  const target = granted && granted.upload && httpUrl(granted.upload.url);
  if (answer.status !== 201 || !target || typeof granted.id !== "string") {
    return card.stop("ERROR", `The upload API answered HTTP ${answer.status}: ${apiError(answer)}`);
  }

  card.setStatus("UPLOADING", LABELS.UPLOADING);
  const form = new FormData();
  for (const [name, value] of Object.entries(granted.upload.fields || {})) {
    form.append(name, value);
  }
  form.append("file", file); // last: the bucket ignores fields after the file
  let stored;
  try {
    stored = await fetch(target.href, { method: "POST", body: form });
  } catch (error) {
    return card.stop(
      "ERROR",
      `Could not reach the uploads bucket at ${target.origin} (it is down, or refused this page's origin): ${brief(error.message)}`,
    );
  }
  if (!stored.ok) {
    return card.stop("ERROR", bucketError(stored.status, await stored.text().catch(() => "")));
  }

  return follow(granted.id, card);
}

async function follow(id, card) {
  const url = apiUrl(`images/${encodeURIComponent(id)}`);
  const started = performance.now();
  let failures = 0;
  card.setStatus("WAITING", LABELS.WAITING);
  for (;;) {
    const elapsed = performance.now() - started;
    if (elapsed > GIVE_UP_MS) {
      const last = card.status === "WAITING" ? "the upload never arrived" : `it was still ${card.status}`;
      return card.stop("ERROR", `Gave up after ${Math.round(GIVE_UP_MS / 1000)} s: ${last}. Is the pipeline running?`);
    }
    let answer = null;
    try {
      answer = await requestJson(url, { cache: "no-store" });
    } catch (error) {
      failures += 1;
      if (failures >= MAX_POLL_FAILURES) {
        return card.stop("ERROR", `Lost the upload API: ${brief(error.message)}`);
      }
      card.progress(`the API did not answer (${brief(error.message, 80)}); retrying`);
    }
    if (answer) {
      if (answer.status === 404) {
        failures = 0;
        card.setStatus("WAITING", `${LABELS.WAITING} · ${(elapsed / 1000).toFixed(1)} s`);
      } else if (answer.status === 200 && answer.body && typeof answer.body.status === "string") {
        failures = 0;
        card.showRecord(answer.body, elapsed);
        if (FINAL.has(answer.body.status)) return undefined;
      } else if (answer.status >= 400 && answer.status < 500) {
        return card.stop("ERROR", `GET images/${id} answered HTTP ${answer.status}: ${apiError(answer)}`);
      } else {
        failures += 1;
        if (failures >= MAX_POLL_FAILURES) {
          return card.stop("ERROR", `GET images/${id} answered HTTP ${answer.status}: ${apiError(answer)}`);
        }
        card.progress(`the API answered HTTP ${answer.status}; retrying`);
      }
    }
    await sleep(POLL_MS);
  }
}

function start(files) {
  const list = Array.from(files || []);
  const notice = document.getElementById("notice");
  if (list.length === 0) {
    notice.textContent = "Nothing to upload: pick or drop image files.";
    notice.hidden = false;
    return;
  }
  notice.hidden = true;
  const cards = document.getElementById("cards");
  for (const file of list) {
    const card = new Card(file);
    cards.append(card.root);
    upload(file, card).catch((error) => card.stop("ERROR", `Unexpected error: ${brief(error && error.message)}`));
  }
}

function init() {
  const input = document.getElementById("file-input");
  const zone = document.getElementById("drop-zone");
  input.addEventListener("change", () => {
    start(input.files);
    input.value = ""; // the same file may be picked again
  });
  // A file dropped anywhere else must not make the browser navigate away to it.
  for (const type of ["dragover", "drop"]) {
    window.addEventListener(type, (event) => event.preventDefault());
  }
  zone.addEventListener("dragenter", () => zone.classList.add("over"));
  zone.addEventListener("dragover", (event) => {
    event.dataTransfer.dropEffect = "copy";
    zone.classList.add("over");
  });
  zone.addEventListener("dragleave", (event) => {
    if (!zone.contains(event.relatedTarget)) zone.classList.remove("over");
  });
  zone.addEventListener("drop", (event) => {
    zone.classList.remove("over");
    start(event.dataTransfer && event.dataTransfer.files);
  });
}

init();
