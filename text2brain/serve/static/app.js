// The page of `text2brain serve`: query -> map in the NiiVue viewer, glass brain, downloads,
// related articles, describing an uploaded map. Talks to the server's JSON/HTTP API only.
// Text from the server goes into the page as text (textContent), never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
//: Default threshold, as a share of the map's largest absolute value.
const THRESHOLD_SHARE = 0.3;
const state = { models: new Map(), nv: null, overlay: null, request: 0 };

function setStatus(text, kind) {
  const status = $("status");
  status.textContent = text;
  status.dataset.state = kind;
}

function apiUrl(path, params) {
  const query = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== "") query.set(key, value);
  }
  return `${path}?${query}`;
}

async function errorMessage(response) {
  try {
    const body = await response.json();
    return body.error || `${response.status} ${response.statusText}`;
  } catch {
    return `${response.status} ${response.statusText}`;
  }
}

function fillTable(table, articles) {
  const body = table.querySelector("tbody");
  body.replaceChildren();
  for (const article of articles) {
    const row = document.createElement("tr");
    const cells = [
      [String(article.rank), "number"],
      [article.title, ""],
      [article.article_id, ""],
      [article.distance.toFixed(3), "number"],
    ];
    for (const [text, kind] of cells) {
      const cell = document.createElement("td");
      cell.textContent = text;
      if (kind) cell.className = kind;
      row.append(cell);
    }
    if (article.keywords.length) row.title = article.keywords.join(", ");
    body.append(row);
  }
}

// -- the viewer --------------------------------------------------------------------------------
async function startViewer() {
  const nv = new niivue.Niivue({
    backColor: [0, 0, 0, 1],
    isColorbar: true,
    show3Dcrosshair: true,
    dragAndDropEnabled: false,
    crosshairColor: [0.2, 0.8, 0.2, 1],
  });
  await nv.attachTo("gl");
  nv.setSliceType(nv.sliceTypeMultiplanar);
  nv.onLocationChange = (location) => {
    $("location").textContent = location.string || "";
  };
  try {
    await nv.loadVolumes([
      { url: "/api/template", name: "mni152.nii.gz", colormap: "gray", colorbarVisible: false },
    ]);
  } catch (err) {
    console.warn("no background brain:", err);
  }
  state.nv = nv;
}

async function showInViewer(buffer) {
  const nv = state.nv;
  const image = await niivue.NVImage.loadFromUrl({
    url: "map.nii.gz",
    name: "map.nii.gz",
    buffer,
    colormap: "warm",
    colormapNegative: "winter",
    opacity: 0.9,
  });
  const top = Math.max(Math.abs(image.global_max || 0), Math.abs(image.global_min || 0)) || 1;
  image.cal_max = top;
  image.cal_min = THRESHOLD_SHARE * top;
  if (state.overlay) nv.removeVolume(state.overlay);
  nv.addVolume(image);
  state.overlay = image;
  const slider = $("threshold");
  slider.max = String(top);
  slider.step = String(top / 200);
  slider.value = String(image.cal_min);
  slider.disabled = false;
  showThreshold();
}

function showThreshold() {
  const value = Number($("threshold").value);
  $("threshold-value").textContent = value.toPrecision(3);
  if (state.overlay) {
    state.overlay.cal_min = value;
    state.nv.updateGLVolume();
  }
}

function setLayout() {
  const nv = state.nv;
  const types = {
    multiplanar: nv.sliceTypeMultiplanar,
    axial: nv.sliceTypeAxial,
    coronal: nv.sliceTypeCoronal,
    sagittal: nv.sliceTypeSagittal,
    render: nv.sliceTypeRender,
  };
  nv.setSliceType(types[$("layout").value]);
}

// -- a query -----------------------------------------------------------------------------------
async function showMap(query, modelName, push) {
  const request = ++state.request; // a newer query wins over one still loading
  const params = { q: query, model: modelName };
  const mapUrl = apiUrl("/api/map", params);
  const pngUrl = apiUrl("/api/map.png", params);
  const pageUrl = apiUrl("/", params);
  if (push) history.pushState(params, "", pageUrl);
  setStatus(`Mapping “${query}” with ${modelName}…`, "busy");
  const model = state.models.get(modelName);
  $("related-panel").hidden = !model.related;
  $("describe-panel").hidden = !model.describe;
  if (model.related) showRelated(query, modelName, request);

  const response = await fetch(mapUrl);
  if (request !== state.request) return;
  if (!response.ok) {
    setStatus(await errorMessage(response), "error");
    return;
  }
  const warning = response.headers.get("x-text2brain-warning");
  const buffer = await response.arrayBuffer();
  if (request !== state.request) return;
  try {
    await showInViewer(buffer);
  } catch (err) {
    setStatus(`The viewer could not show the map: ${err}`, "error");
    return;
  }
  $("glass").src = pngUrl;
  $("download-nifti").href = mapUrl;
  $("download-png").href = pngUrl;
  $("permalink").href = pageUrl;
  $("glass-panel").hidden = false;
  if (warning) setStatus(`Map of “${query}” (${modelName}). Note: ${warning}`, "warning");
  else setStatus(`Map of “${query}” (${modelName}).`, "ready");
  document.body.dataset.map = mapUrl; // for tests and scripts: the map on show
}

async function showRelated(query, modelName, request) {
  const table = $("related");
  fillTable(table, []);
  const response = await fetch(apiUrl("/api/related", { q: query, model: modelName, k: 10 }));
  if (request !== state.request) return;
  if (!response.ok) {
    setStatus(await errorMessage(response), "error");
    return;
  }
  fillTable(table, (await response.json()).articles);
}

async function describe(event) {
  event.preventDefault();
  const file = $("describe-file").files[0];
  if (!file) return;
  const form = new FormData();
  form.append("file", file);
  const status = $("describe-status");
  status.textContent = `Describing ${file.name}…`;
  const url = apiUrl("/api/describe", { model: $("model").value, k: 10 });
  const response = await fetch(url, { method: "POST", body: form });
  if (!response.ok) {
    status.textContent = await errorMessage(response);
    fillTable($("described"), []);
    return;
  }
  status.textContent = `Training articles nearest ${file.name}:`;
  fillTable($("described"), (await response.json()).articles);
}

function submit(event) {
  if (event) event.preventDefault();
  const query = $("query").value;
  if (!query.trim()) {
    setStatus("Type a query first.", "error");
    return;
  }
  showMap(query, $("model").value, true);
}

function fromAddress() {
  const params = new URLSearchParams(location.search);
  const modelName = params.get("model");
  if (modelName && state.models.has(modelName)) $("model").value = modelName;
  const query = params.get("q");
  if (query) {
    $("query").value = query;
    showMap(query, $("model").value, false);
  }
}

async function start() {
  const response = await fetch("/api/models");
  if (!response.ok) {
    setStatus(await errorMessage(response), "error");
    return;
  }
  const listed = await response.json();
  const select = $("model");
  for (const model of listed.models) {
    state.models.set(model.name, model);
    const option = document.createElement("option");
    option.value = model.name;
    option.textContent = `${model.name} (${model.head})`;
    select.append(option);
  }
  select.value = listed.default;
  $("describe-panel").hidden = !state.models.get(listed.default).describe;
  await startViewer();
  $("query-form").addEventListener("submit", submit);
  $("threshold").addEventListener("input", showThreshold);
  $("layout").addEventListener("change", setLayout);
  $("describe-form").addEventListener("submit", describe);
  select.addEventListener("change", () => {
    $("describe-panel").hidden = !state.models.get(select.value).describe;
    if ($("query").value.trim()) submit();
  });
  window.addEventListener("popstate", fromAddress);
  fromAddress();
}

start().catch((err) => setStatus(`The page failed to start: ${err}`, "error"));
