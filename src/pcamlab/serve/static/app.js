// The page of `pcamlab serve`: plain JavaScript, no library, no network beyond this server.
// Patches dropped here (images, or a .zip unpacked in the browser) are sent to POST /v1/predict in
// batches; each gets its probability and class, then its Grad-CAM from POST /v1/explain.
"use strict";

const state = {
  items: [],          // {id, name, url, blob, probability, predicted, className, camUrl, error}
  nextId: 0,
  card: null,
  token: sessionStorage.getItem("pcamlab-token") || "",
  camQueue: [],
  camRunning: 0,
};
const IMAGE_SUFFIXES = [".jpg", ".jpeg", ".png", ".tif", ".tiff"];
const ARRAY_SUFFIXES = [".npy", ".h5", ".hdf5"];
const CAM_CONCURRENCY = 2;

const $ = (id) => document.getElementById(id);
const suffix = (name) => { const dot = name.lastIndexOf("."); return dot < 0 ? "" : name.slice(dot).toLowerCase(); };

function element(tag, attributes = {}, children = []) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (key === "text") node.textContent = value; else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);
  return node;
}

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

// -- the API --------------------------------------------------------------------------------------

async function api(path, options = {}) {
  const headers = new Headers(options.headers || {});
  if (state.token) headers.set("Authorization", "Bearer " + state.token);
  const response = await fetch(path, { ...options, headers });
  if (response.status === 401) {
    $("token-box").hidden = false;
    throw new Error("this server needs its token: enter it above");
  }
  if (!response.ok) {
    let detail = response.status + " " + response.statusText;
    try { detail = (await response.json()).detail || detail; } catch (_) { /* not JSON */ }
    throw new Error(typeof detail === "string" ? detail : JSON.stringify(detail));
  }
  return response;
}

// -- model card -----------------------------------------------------------------------------------

function format(value, digits = 4) {
  if (value === null || value === undefined) return "—";
  if (typeof value === "number") return Number.isInteger(value) ? value.toLocaleString("en") : value.toFixed(digits);
  if (Array.isArray(value)) return "[" + value.map((item) => format(item, 3)).join(", ") + "]";
  if (typeof value === "object") return JSON.stringify(value);
  return String(value);
}

async function loadModelCard() {
  try {
    const card = await (await api("/v1/model")).json();
    state.card = card;
    const contract = card.input_contract || {};
    const validation = card.validation || {};
    $("model-line").textContent = `${card.file} · ${card.architecture.name || card.format} · threshold ${format(card.threshold.value, 3)}`
      + (validation.val_auc !== undefined ? ` · validation AUC ${format(validation.val_auc, 4)}` : "");
    const facts = [
      ["model file", `${card.file} (${card.format}, sha256 ${card.sha256.slice(0, 12)}…)`],
      ["architecture", `${card.architecture.name || "—"}${card.architecture.parameters ? ", " + format(card.architecture.parameters) + " parameters" : ""}`],
      ["input", `${contract.patch_size}×${contract.patch_size} RGB uint8, mean ${format(contract.mean)}, std ${format(contract.std)}`],
      ["classes", (contract.class_names || []).join(" / ")],
      ["threshold", `${format(card.threshold.value, 4)} (${card.threshold.source || "stored in the checkpoint"})`],
      ["training data", `${format(card.training_data.path)} (${format(card.training_data.format)}, split ${format(card.training_data.train_split)})`],
      ["validation", Object.entries(validation).filter(([, v]) => v !== null && v !== undefined).map(([k, v]) => `${k} ${format(v, 4)}`).join(", ") || "—"],
      ["Grad-CAM", card.explain ? "available" : "not for exported models"],
      ["limits", `${card.limits.max_images} patches, ${(card.limits.max_request_bytes / 2 ** 20).toFixed(0)} MiB per request`],
    ];
    $("card-facts").replaceChildren(...facts.flatMap(([term, text]) => [element("dt", { text: term }), element("dd", { text })]));
    $("card-json").textContent = JSON.stringify(card, null, 2);
    $("token-box").hidden = true;
    loadSlides();
  } catch (error) {
    $("model-line").textContent = "model card unavailable: " + error.message;
  }
}

// -- zip files, read in the browser (stored and deflated members) ---------------------------------

async function unzip(file) {
  const buffer = await file.arrayBuffer();
  const view = new DataView(buffer);
  let end = -1;
  for (let offset = buffer.byteLength - 22; offset >= Math.max(0, buffer.byteLength - 65557); offset--) {
    if (view.getUint32(offset, true) === 0x06054b50) { end = offset; break; }
  }
  if (end < 0) throw new Error(`${file.name} is not a zip archive (no end of central directory)`);
  const count = view.getUint16(end + 10, true);
  let position = view.getUint32(end + 16, true);
  const decoder = new TextDecoder();
  const members = [];
  for (let index = 0; index < count; index++) {
    if (view.getUint32(position, true) !== 0x02014b50) throw new Error(`${file.name}: damaged central directory`);
    const method = view.getUint16(position + 10, true);
    const compressedSize = view.getUint32(position + 20, true);
    const nameLength = view.getUint16(position + 28, true);
    const extraLength = view.getUint16(position + 30, true);
    const commentLength = view.getUint16(position + 32, true);
    const localOffset = view.getUint32(position + 42, true);
    const name = decoder.decode(new Uint8Array(buffer, position + 46, nameLength));
    position += 46 + nameLength + extraLength + commentLength;
    const base = name.split("/").pop();
    const hidden = name.split("/").some((part) => part.startsWith(".") || part === "__MACOSX");
    if (name.endsWith("/") || hidden || !IMAGE_SUFFIXES.includes(suffix(base))) continue;
    const dataStart = localOffset + 30 + view.getUint16(localOffset + 26, true) + view.getUint16(localOffset + 28, true);
    const raw = new Uint8Array(buffer, dataStart, compressedSize);
    let blob;
    if (method === 0) blob = new Blob([raw]);
    else if (method === 8) blob = await new Response(new Blob([raw]).stream().pipeThrough(new DecompressionStream("deflate-raw"))).blob();
    else throw new Error(`${file.name}/${name}: compression method ${method} is not supported; zip with deflate`);
    members.push({ name: `${file.name}/${name}`, blob });
  }
  members.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  return members;
}

// -- predicting -----------------------------------------------------------------------------------

async function addFiles(fileList) {
  const files = Array.from(fileList);
  const images = [];
  const arrays = [];
  for (const file of files) {
    const kind = suffix(file.name);
    try {
      if (kind === ".zip") images.push(...(await unzip(file)));
      else if (IMAGE_SUFFIXES.includes(kind)) images.push({ name: file.name, blob: file });
      else if (ARRAY_SUFFIXES.includes(kind)) arrays.push(file);
      else setStatus(`${file.name}: not a patch image, zip or array; skipped`, true);
    } catch (error) {
      setStatus(error.message, true);
    }
  }
  const items = images.map(({ name, blob }) => ({ id: state.nextId++, name, blob, url: URL.createObjectURL(blob) }));
  state.items.push(...items);
  render();
  const limit = state.card ? Math.min(64, state.card.limits.max_images) : 64;
  let done = 0;
  for (let start = 0; start < items.length; start += limit) {
    const batch = items.slice(start, start + limit);
    setStatus(`predicting ${done + 1}–${done + batch.length} of ${items.length}…`);
    await predictBatch(batch);
    done += batch.length;
    render();
  }
  for (const file of arrays) await predictArray(file);
  const failed = state.items.filter((item) => item.error).length;
  setStatus(`${state.items.length} patches` + (failed ? `, ${failed} could not be used` : ""), failed > 0);
  render();
}

function tta() { return $("tta").checked ? "true" : "false"; }

async function predictBatch(batch) {
  const form = new FormData();
  for (const item of batch) form.append("files", item.blob, item.name);
  form.append("tta", tta());
  try {
    const result = await (await api("/v1/predict", { method: "POST", body: form })).json();
    result.predictions.forEach((prediction, index) => Object.assign(batch[index], {
      probability: prediction.probability, predicted: prediction.predicted, className: prediction.class_name,
    }));
    for (const item of batch) queueGradCam(item);
  } catch (error) {
    if (batch.length === 1) { batch[0].error = error.message; return; }
    // one bad file fails the whole request: retry one by one so every good patch still gets its result
    for (const item of batch) await predictBatch([item]);
  }
}

async function predictArray(file) {
  const form = new FormData();
  form.append("files", file, file.name);
  form.append("tta", tta());
  try {
    const result = await (await api("/v1/predict", { method: "POST", body: form })).json();
    for (const prediction of result.predictions) {
      state.items.push({ id: state.nextId++, name: prediction.name, probability: prediction.probability,
        predicted: prediction.predicted, className: prediction.class_name });
    }
  } catch (error) {
    state.items.push({ id: state.nextId++, name: file.name, error: error.message });
  }
}

// -- Grad-CAM, a few requests at a time -----------------------------------------------------------

function queueGradCam(item) {
  if (!state.card || !state.card.explain || !item.blob) return;
  state.camQueue.push(item);
  pumpGradCam();
}

function pumpGradCam() {
  while (state.camRunning < CAM_CONCURRENCY && state.camQueue.length) {
    const item = state.camQueue.shift();
    state.camRunning++;
    const form = new FormData();
    form.append("file", item.blob, item.name.split("/").pop());
    form.append("alpha", "0.6");
    api("/v1/explain", { method: "POST", body: form })
      .then((response) => response.blob())
      .then((blob) => { item.camUrl = URL.createObjectURL(blob); updateCard(item); })
      .catch((error) => { item.camError = error.message; updateCard(item); })
      .finally(() => { state.camRunning--; pumpGradCam(); });
  }
}

// -- the results ----------------------------------------------------------------------------------

function sorted() {
  const items = state.items.slice();
  const order = $("sort").value;
  const probability = (item) => (item.probability === undefined ? -1 : item.probability);
  if (order === "probability-desc") items.sort((a, b) => probability(b) - probability(a));
  else if (order === "probability-asc") items.sort((a, b) => probability(a) - probability(b));
  else if (order === "name") items.sort((a, b) => a.name.localeCompare(b.name));
  return items;
}

function cardFor(item) {
  const kind = item.error ? "failed" : item.predicted === undefined ? "" : item.predicted ? "tumour" : "normal";
  const node = element("article", { class: `patch ${kind}`, "data-id": String(item.id), "data-name": item.name });
  const pictures = element("div", { class: "pictures" });
  if (item.url) pictures.append(element("figure", {}, [element("img", { src: item.url, alt: item.name, class: "patch-image" }), element("figcaption", { text: "patch" })]));
  if (item.camUrl) pictures.append(element("figure", {}, [element("img", { src: item.camUrl, alt: "Grad-CAM of " + item.name, class: "gradcam" }), element("figcaption", { text: "Grad-CAM" })]));
  else if (item.url && state.card && state.card.explain && !item.error) pictures.append(element("figure", {}, [element("img", { alt: "" }), element("figcaption", { text: item.camError ? "no Grad-CAM" : "Grad-CAM…" })]));
  node.append(pictures, element("div", { class: "name", text: item.name }));
  if (item.error) {
    node.append(element("div", { class: "error", text: item.error }));
  } else if (item.probability !== undefined) {
    const line = element("div", {}, [
      element("span", { class: "probability", text: `P(tumour) ${item.probability.toFixed(4)}` }),
      element("span", { class: "class", text: item.className }),
    ]);
    const bar = element("div", { class: "bar" });
    const fill = element("span");
    fill.style.width = `${(item.probability * 100).toFixed(1)}%`;
    const mark = element("i", { title: "threshold" });
    mark.style.left = `${(state.card ? state.card.threshold.value * 100 : 50).toFixed(1)}%`;
    bar.append(fill, mark);
    node.append(line, bar);
  } else {
    node.append(element("div", { class: "muted", text: "predicting…" }));
  }
  return node;
}

function updateCard(item) {
  const old = document.querySelector(`article.patch[data-id="${item.id}"]`);
  if (old) old.replaceWith(cardFor(item));
}

function render() {
  $("results").replaceChildren(...sorted().map(cardFor));
  $("toolbar").hidden = state.items.length === 0;
  const scored = state.items.filter((item) => item.probability !== undefined);
  const positive = scored.filter((item) => item.predicted === 1).length;
  const names = state.card ? state.card.input_contract.class_names || ["normal", "tumour"] : ["normal", "tumour"];
  $("summary").textContent = `${scored.length} patches: ${positive} ${names[1]}, ${scored.length - positive} ${names[0]}`;
}

function csvField(text) {
  const value = String(text);
  return /[",\n\r]/.test(value) ? `"${value.replace(/"/g, '""')}"` : value;
}

function downloadCsv() {
  // same columns as `pcamlab predict`: patch, probability, predicted, class_name
  const rows = [["patch", "probability", "predicted", "class_name"]];
  for (const item of sorted()) {
    if (item.probability === undefined) continue;
    rows.push([item.name, item.probability.toFixed(6), item.predicted, item.className]);
  }
  const blob = new Blob([rows.map((row) => row.map(csvField).join(",")).join("\n") + "\n"], { type: "text/csv" });
  const link = element("a", { href: URL.createObjectURL(blob), download: "predictions.csv" });
  document.body.append(link);
  link.click();
  link.remove();
}

// -- slide heatmaps (shown when the server has a slide root) --------------------------------------

const slide = { zoom: 1 };

async function loadSlides() {
  let listing;
  try {
    listing = await (await api("/v1/slides")).json();
  } catch (_) {
    return;
  }
  if (!listing.enabled || !listing.slides.length) return; // no --slide-root, or nothing in it
  $("slide-select").replaceChildren(...listing.slides.map((name) => element("option", { value: name, text: name })));
  $("slides").hidden = false;
}

function applyZoom() {
  // the stage takes the zoomed size, so the viewport scrolls over the whole enlarged slide
  const thumbnail = $("slide-thumbnail");
  if (!thumbnail.naturalWidth) return;
  thumbnail.style.width = `${Math.round(thumbnail.naturalWidth * slide.zoom)}px`;
  thumbnail.style.height = `${Math.round(thumbnail.naturalHeight * slide.zoom)}px`;
}

function fitZoom() {
  const thumbnail = $("slide-thumbnail");
  const available = $("slide-viewport").clientWidth - 2;
  slide.zoom = thumbnail.naturalWidth ? Math.min(1, available / thumbnail.naturalWidth) : 1;
  applyZoom();
}

async function runSlideJob(event) {
  event.preventDefault();
  const name = $("slide-select").value;
  const status = $("slide-status");
  status.classList.remove("error");
  status.textContent = "starting…";
  try {
    let job = await (await api("/v1/slides/jobs", { method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ slide: name }) })).json();
    $("slide-view").hidden = true;
    while (job.status === "queued" || job.status === "running") {
      status.textContent = `${job.status}${job.progress ? ` ${(job.progress * 100).toFixed(0)}%` : ""}…`;
      await new Promise((resolve) => setTimeout(resolve, 1000));
      job = await (await api(`/v1/slides/jobs/${job.id}`)).json();
    }
    if (job.status !== "done") throw new Error(job.error || "the job failed");
    const [thumbnail, heatmap] = await Promise.all([
      api(`/v1/slides/jobs/${job.id}/thumbnail.png`).then((r) => r.blob()),
      api(`/v1/slides/jobs/${job.id}/heatmap.png`).then((r) => r.blob()),
    ]);
    const loaded = new Promise((resolve) => { $("slide-thumbnail").onload = resolve; });
    $("slide-thumbnail").src = URL.createObjectURL(thumbnail);
    $("slide-heatmap").src = URL.createObjectURL(heatmap);
    const geojson = await api(`/v1/slides/jobs/${job.id}/heatmap.geojson`).then((r) => r.blob());
    $("geojson-link").href = URL.createObjectURL(geojson);
    $("geojson-link").download = name.replace(/\.[^.]+$/, "") + ".geojson";
    $("slide-view").hidden = false;
    await loaded;
    fitZoom();
    const summary = job.summary || {};
    status.textContent = `slide score (max tile) ${format(summary.score_max, 3)}, top-${summary.top_k} mean `
      + `${format(summary.score_top_k_mean, 3)}; tumour ${format(summary.tumour_area_mm2, 2)} mm² of `
      + `${format(summary.tissue_area_mm2, 2)} mm² tissue; ${format(summary.tiles)} tiles in ${format(summary.seconds, 1)} s`;
  } catch (error) {
    status.textContent = error.message;
    status.classList.add("error");
  }
}

// -- wiring ---------------------------------------------------------------------------------------

function setUp() {
  const zone = $("drop-zone");
  zone.addEventListener("dragover", (event) => { event.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    addFiles(event.dataTransfer.files);
  });
  $("file-input").addEventListener("change", (event) => { addFiles(event.target.files); event.target.value = ""; });
  $("sort").addEventListener("change", render);
  $("download").addEventListener("click", downloadCsv);
  $("clear").addEventListener("click", () => { state.items = []; state.camQueue = []; render(); setStatus(""); });
  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    state.token = $("token-input").value.trim();
    sessionStorage.setItem("pcamlab-token", state.token);
    loadModelCard();
  });
  $("slide-form").addEventListener("submit", runSlideJob);
  $("zoom-in").addEventListener("click", () => { slide.zoom = Math.min(16, slide.zoom * 1.5); applyZoom(); });
  $("zoom-out").addEventListener("click", () => { slide.zoom = Math.max(0.25, slide.zoom / 1.5); applyZoom(); });
  $("zoom-reset").addEventListener("click", fitZoom);
  $("heat-opacity").addEventListener("input", (event) => { $("slide-heatmap").style.opacity = event.target.value; });
  loadModelCard();
}

document.addEventListener("DOMContentLoaded", setUp);
