// The rater panel: the viewer and the rating form of one item, drawn in the browser.
//
// A Streamlit v2 component (no iframe). Python sends one binary payload per item
// (openmind_curate.quality.viewer.encode_unit): a little-endian uint32 header length, a
// JSON header (the item, the form's texts, each volume's grid, spacing and windows), then
// each volume's voxels as zlib-compressed uint16 (x fastest). Slicing, window/level,
// zoom, mosaic and crosshair all happen here: moving a slider never asks the server.
// The form talks to Python only on Save, Skip, Back and Return (setTriggerValue
// "action"), so the typed answers stay in the page while the server is unreachable.
//
// Display convention (neurological, as the Python viewer): superior (or anterior in
// the axial view) at the top; subject's left on the image's left; nose left in the
// sagittal view. Pixels are square in millimetres and drawn nearest-neighbour.

const VIEWS = ["sagittal", "coronal", "axial"];
const VIEW_TITLES = { sagittal: "Sagittal", coronal: "Coronal", axial: "Axial" };
// orientation letters: [left, right, top, bottom] of each view
const LETTERS = {
  sagittal: ["A", "P", "S", "I"],
  coronal: ["L", "R", "S", "I"],
  axial: ["L", "R", "A", "P"],
};
const MOSAIC_TILES = 6;
const FORM_WIDTH = 360;

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);
  return node;
}

function parsePayload(bytes) {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const n = view.getUint32(0, true);
  const header = JSON.parse(new TextDecoder().decode(bytes.subarray(4, 4 + n)));
  return { header, body: bytes.subarray(4 + n) };
}

// Decoded voxels by unit key, shared by every panel of the page: the next unit
// arrives while the rater scores the current one, so Save only waits for a header.
const CACHE = (window.__omcVoxels ||= new Map());
const CACHE_UNITS = 4;

function remember(key, promise) {
  CACHE.delete(key);
  CACHE.set(key, promise);
  while (CACHE.size > CACHE_UNITS) CACHE.delete(CACHE.keys().next().value);
}

function decodeAll(metas, body) {
  return Promise.all(metas.map((m) => inflate(body.subarray(m.offset, m.offset + m.nbytes))));
}

async function inflate(bytes) {
  const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("deflate"));
  return new Uint16Array(await new Response(stream).arrayBuffer());
}

// --- geometry: a view of a volume at voxel (i, j, k) --------------------------------------

function viewShape(vol, name) {
  const [nx, ny, nz] = vol.shape;
  const [sx, sy, sz] = vol.spacing;
  if (name === "sagittal") return { w: ny, h: nz, colMm: sy, rowMm: sz };
  if (name === "coronal") return { w: nx, h: nz, colMm: sx, rowMm: sz };
  return { w: nx, h: ny, colMm: sx, rowMm: sy };
}

// the voxel index of display pixel (col, row) in a view through `at`
function voxelIndex(vol, name, at, col, row) {
  const [nx, ny, nz] = vol.shape;
  let x, y, z;
  if (name === "sagittal") [x, y, z] = [at[0], ny - 1 - col, nz - 1 - row];
  else if (name === "coronal") [x, y, z] = [col, at[1], nz - 1 - row];
  else [x, y, z] = [col, ny - 1 - row, at[2]];
  return x + nx * (y + ny * z);
}

// the display pixel of the crosshair point, and the inverse (pixel -> two coordinates)
function crossPixel(vol, name, at) {
  const [, ny, nz] = vol.shape;
  if (name === "sagittal") return [ny - 1 - at[1], nz - 1 - at[2]];
  if (name === "coronal") return [at[0], nz - 1 - at[2]];
  return [at[0], ny - 1 - at[1]];
}

function pixelToAt(vol, name, at, col, row) {
  const [, ny, nz] = vol.shape;
  const out = at.slice();
  if (name === "sagittal") [out[1], out[2]] = [ny - 1 - col, nz - 1 - row];
  else if (name === "coronal") [out[0], out[2]] = [col, nz - 1 - row];
  else [out[0], out[1]] = [col, ny - 1 - row];
  return out;
}

function clampAt(vol, at) {
  return at.map((c, a) => Math.max(0, Math.min(vol.shape[a] - 1, Math.round(c))));
}

const AXIS_OF_VIEW = { sagittal: 0, coronal: 1, axial: 2 };

// --- the panel -----------------------------------------------------------------------------

class Panel {
  constructor(root) {
    this.root = root;
    this.sid = null;
    this.checksum = null;
    this.volumes = [];
    this.pending = false;
    this.dom = this.build();
    root.append(this.dom.main);
    window.addEventListener("resize", () => this.layout());
    document.addEventListener("keydown", (e) => this.onKey(e));
  }

  build() {
    const title = el("span", { class: "omc-title" });
    const group = el("span", { class: "omc-group" });
    const note = el("span", { class: "omc-note" });
    const head = el("div", { class: "omc-head" }, title, group, note);
    const presets = el("div", { class: "omc-presets", role: "group", "aria-label": "Window" });
    const level = el("input", { type: "range", min: "0", max: "1000", "aria-label": "Level" });
    const width = el("input", { type: "range", min: "1", max: "1000", "aria-label": "Width" });
    const wtext = el("span", { class: "omc-wtext" });
    const zoom = el("select", { "aria-label": "Zoom" });
    for (const z of [1, 2, 3, 4]) zoom.append(el("option", { value: String(z), text: `${z}×` }));
    const cross = el("input", { type: "checkbox", "aria-label": "Crosshair" });
    cross.checked = true;
    const mosaic = el("input", { type: "checkbox", "aria-label": "Mosaic" });
    const controls = el(
      "div",
      { class: "omc-controls" },
      presets,
      el("label", { class: "omc-ctl" }, "Level ", level),
      el("label", { class: "omc-ctl" }, "Width ", width),
      wtext,
      el("label", { class: "omc-ctl" }, "Zoom ", zoom),
      el("label", { class: "omc-ctl" }, cross, " Crosshair"),
      el("label", { class: "omc-ctl" }, mosaic, " Mosaic"),
    );
    const grid = el("div", { class: "omc-grid" });
    const viewer = el("div", { class: "omc-viewer" }, head, controls, grid);
    const form = el("form", { class: "omc-form", novalidate: "" });
    const main = el("div", { class: "omc-panel" }, viewer, form);
    level.addEventListener("input", () => this.setManual());
    width.addEventListener("input", () => this.setManual());
    zoom.addEventListener("change", () => {
      this.view.zoom = Number(zoom.value);
      this.draw();
    });
    cross.addEventListener("change", () => {
      this.view.crosshair = cross.checked;
      this.draw();
    });
    mosaic.addEventListener("change", () => {
      this.view.mosaic = mosaic.checked;
      this.layout();
    });
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      this.save();
    });
    return { main, title, group, note, presets, level, width, wtext, zoom, cross, mosaic, grid, form };
  }

  // --- data in -------------------------------------------------------------------------------

  async update(bytes, setTrigger) {
    this.setTrigger = setTrigger;
    const { header, body } = parsePayload(bytes);
    for (const key of header.in_body) remember(key, decodeAll(header.bodies[key], body));
    const early = this.early;
    if (early) {
      if (header.handled !== early.nonce) return; // an answer to an earlier message
      this.early = null;
      if (header.item.sid !== early.before.header.item.sid && header.unit?.key === early.key) {
        this.adopt(header); // saved: the item already on screen is the server's next one
        window.__omcConfirmed = { label: header.item.label, t: performance.timeOrigin + performance.now() };
        return;
      }
      await this.show(header, bytes.byteLength); // not saved: back to the item, answers and all
      if (header.item.sid === early.before.header.item.sid) this.restore(early.before);
      return;
    }
    if (header.item.sid !== this.sid) await this.show(header, bytes.byteLength);
    else this.adopt(header);
  }

  // the same item, newer facts (a status, the next item's header, a confirmed save)
  adopt(header) {
    this.header = header;
    this.sid = header.item.sid;
    this.pending = false;
    this.showHead(header);
    this.setButtons(header);
    this.showStatus(header.status);
    this.askReady(header);
  }

  async show(header, nbytes) {
    this.freshBytes = nbytes; // what this item's message weighed (benchmarks)
    this.header = header;
    this.sid = header.item.sid;
    this.pending = false;
    this.buildForm(header);
    const unit = header.unit;
    let volumes = [];
    if (unit) {
      if (!CACHE.has(unit.key)) {
        // the browser lost these voxels (a reload, an evicted entry): ask again
        this.setTrigger("sync", { type: "need", sid: this.sid, key: unit.key });
        this.sid = null;
        return;
      }
      volumes = (await CACHE.get(unit.key)).map((data, n) => ({ ...unit.volumes[n], data }));
      remember(unit.key, CACHE.get(unit.key)); // most recently used
    }
    if (this.header !== header) return; // a newer item arrived while inflating
    this.volumes = volumes;
    const first = volumes[0];
    this.view = {
      at: first ? first.shape.map((n) => Math.floor(n / 2)) : [0, 0, 0],
      preset: header.default_preset,
      manual: null,
      zoom: 1,
      crosshair: this.dom.cross.checked,
      mosaic: this.dom.mosaic.checked,
    };
    this.dom.zoom.value = "1";
    this.buildPresets(header);
    this.showHead(header);
    this.layout();
    this.root.host?.scrollIntoView?.({ block: "start" });
    window.scrollTo(0, 0);
    this.setButtons(header);
    this.showStatus(header.status);
    this.askReady(header);
  }

  askReady(header) {
    if (!header.ask_ready) return;
    // painted: now the server loads and sends the next unit while the rater scores
    const sid = this.sid;
    const ready = () => {
      if (this.sid === sid && !this.pending) this.setTrigger("sync", { type: "ready", sid });
    };
    if (header.ask_ready === "later") setTimeout(ready, 700);
    else requestAnimationFrame(() => setTimeout(ready, 50));
  }

  // Save with the next item's voxels at hand: show it now, before the server answers.
  // The answer either confirms it (adopt) or brings the rated item back with what was
  // typed (restore), e.g. when the database cannot be reached.
  async advance(nonce) {
    const before = { header: this.header, answers: this.answers(), view: this.view };
    const next = this.header.next;
    this.early = { nonce, before, key: next.unit.key };
    const label = this.header.item.label;
    const header = {
      ...this.header,
      ...next,
      next: null,
      ask_ready: "",
      item: { ...next.item, sid: `early-${nonce}` },
      status: { level: "info", text: `Saving ${label.toLowerCase().split(" of ")[0]}…` },
    };
    await this.show(header, 0);
    this.pending = true; // no second Save before the server has answered the first
    this.dom.save.disabled = true;
  }

  restore(before) {
    const form = this.dom.form;
    for (const [name, value] of Object.entries(before.answers)) {
      if (name === "comment") this.dom.comment.value = value;
      else if (typeof value === "boolean") form.querySelector(`input[name="${name}"]`).checked = value;
      else if (value !== null) {
        const input = form.querySelector(`input[name="${name}"][value="${value}"]`);
        if (input) input.checked = true;
      }
    }
    this.view = before.view;
    this.layout();
  }

  showHead(h) {
    this.dom.title.textContent = h.item.label;
    this.dom.group.textContent = h.item.group;
    this.dom.note.textContent = h.item.correction ? h.item.correction : "";
  }

  buildPresets(h) {
    const box = this.dom.presets;
    box.replaceChildren();
    for (const [name, tip] of Object.entries(h.presets)) {
      const b = el("button", { type: "button", class: "omc-preset", title: tip, text: name });
      b.addEventListener("click", () => {
        this.view.preset = name;
        this.view.manual = null;
        this.draw();
      });
      box.append(b);
    }
  }

  // --- windows -------------------------------------------------------------------------------

  // [low, high] in a volume's own units
  windowOf(vol) {
    if (this.view.manual) {
      const [lv, wd] = this.view.manual; // per mille of the volume's range
      const span = vol.hi - vol.lo || 1;
      const level = vol.lo + (span * lv) / 1000;
      const width = (span * wd) / 1000;
      return [level - width / 2, level + width / 2];
    }
    return vol.windows[this.view.preset] || vol.windows[this.header.default_preset];
  }

  setManual() {
    this.view.manual = [Number(this.dom.level.value), Number(this.dom.width.value)];
    this.view.preset = null;
    this.draw();
  }

  lut(vol) {
    const [low, high] = this.windowOf(vol);
    const key = `${low}|${high}`;
    if (vol.lutKey === key) return vol.lutTable;
    const width = Math.max(high - low, 1e-12);
    const table = new Uint8ClampedArray(65536);
    for (let c = 0; c < 65536; c++) table[c] = ((vol.lo + c * vol.step - low) * 255) / width;
    vol.lutKey = key;
    vol.lutTable = table;
    return table;
  }

  // --- layout and drawing ----------------------------------------------------------------------

  cells() {
    // [{vol, view, at}] in grid order, and the number of columns
    const out = [];
    const vols = this.volumes;
    if (this.view.mosaic) {
      for (const vol of vols)
        for (const name of VIEWS) {
          const axis = AXIS_OF_VIEW[name];
          for (let t = 0; t < MOSAIC_TILES; t++) {
            const at = vol.shape.map((n) => Math.floor(n / 2));
            at[axis] = Math.round(((t + 1) / (MOSAIC_TILES + 1)) * (vol.shape[axis] - 1));
            out.push({ vol, name, at, tile: true });
          }
        }
      return { cells: out, cols: MOSAIC_TILES };
    }
    if (vols.length > 1) {
      for (const name of VIEWS) for (const vol of vols) out.push({ vol, name });
      return { cells: out, cols: vols.length };
    }
    for (const name of VIEWS) out.push({ vol: vols[0], name });
    return { cells: out, cols: 3 };
  }

  layout() {
    const grid = this.dom.grid;
    grid.replaceChildren();
    this.canvases = [];
    if (!this.volumes.length || !this.volumes[0].data) {
      grid.append(el("div", { class: "omc-missing", text: this.header?.missing || "" }));
      this.markPainted();
      return;
    }
    const { cells, cols } = this.cells();
    const rows = Math.ceil(cells.length / cols);
    const avail = this.dom.grid.getBoundingClientRect();
    const width = Math.max(240, avail.width || this.root.host?.clientWidth - FORM_WIDTH || 600);
    const top = Math.max(0, avail.top);
    const sliderH = this.view.mosaic ? 16 : 34;
    const byHeight = (window.innerHeight - top - 12) / rows - sliderH;
    const byWidth = width / cols - 6;
    const size = Math.floor(Math.max(this.view.mosaic ? 60 : 120, Math.min(byWidth, byHeight)));
    grid.style.gridTemplateColumns = `repeat(${cols}, ${size}px)`;
    const dpr = window.devicePixelRatio || 1;
    for (const cell of cells) {
      const canvas = el("canvas", { class: "omc-view", "aria-label": this.caption(cell) });
      canvas.width = Math.round(size * dpr);
      canvas.height = Math.round(size * dpr);
      canvas.style.width = `${size}px`;
      canvas.style.height = `${size}px`;
      const box = el("div", { class: "omc-cell" }, canvas);
      if (!cell.tile) {
        const axis = AXIS_OF_VIEW[cell.name];
        const slider = el("input", {
          type: "range",
          min: "0",
          max: String(cell.vol.shape[axis] - 1),
          "aria-label": `${VIEW_TITLES[cell.name]} slice${this.volumes.length > 1 ? ` (${cell.vol.label})` : ""}`,
        });
        slider.value = String(this.view.at[axis]);
        slider.addEventListener("input", () => {
          this.view.at[axis] = Number(slider.value);
          this.draw();
        });
        cell.slider = slider;
        canvas.addEventListener("click", (e) => this.onClick(cell, canvas, e));
        box.append(el("div", { class: "omc-caption" }, this.caption(cell), slider));
      } else {
        box.append(el("div", { class: "omc-caption", text: `${cell.vol.label} ${VIEW_TITLES[cell.name]} ${cell.at[AXIS_OF_VIEW[cell.name]]}` }));
      }
      cell.canvas = canvas;
      grid.append(box);
    }
    this.cellsShown = cells;
    this.draw();
  }

  caption(cell) {
    return this.volumes.length > 1 ? `${cell.vol.label} · ${VIEW_TITLES[cell.name]}` : VIEW_TITLES[cell.name];
  }

  // where a view's source rectangle lands on its square canvas
  geometry(cell) {
    const s = viewShape(cell.vol, cell.name);
    const zoom = cell.tile ? 1 : this.view.zoom;
    const sw = s.w / zoom;
    const sh = s.h / zoom;
    let sx = 0;
    let sy = 0;
    if (zoom > 1) {
      const [cx, cy] = crossPixel(cell.vol, cell.name, clampAt(cell.vol, this.view.at));
      sx = Math.max(0, Math.min(s.w - sw, cx + 0.5 - sw / 2));
      sy = Math.max(0, Math.min(s.h - sh, cy + 0.5 - sh / 2));
    }
    const side = cell.canvas.width;
    const mmW = sw * s.colMm;
    const mmH = sh * s.rowMm;
    const k = Math.min(side / mmW, side / mmH);
    const dw = mmW * k;
    const dh = mmH * k;
    return { s, sx, sy, sw, sh, dx: (side - dw) / 2, dy: (side - dh) / 2, dw, dh };
  }

  draw() {
    if (!this.cellsShown) return;
    this.syncControls();
    for (const cell of this.cellsShown) this.drawCell(cell);
    this.markPainted();
  }

  drawCell(cell) {
    const vol = cell.vol;
    const at = clampAt(vol, cell.at || this.view.at);
    const g = this.geometry(cell);
    const { w, h } = g.s;
    const src = (cell.src ||= document.createElement("canvas"));
    src.width = w;
    src.height = h;
    const sctx = src.getContext("2d");
    const img = sctx.createImageData(w, h);
    const lut = this.lut(vol);
    const px = img.data;
    const data = vol.data;
    for (let row = 0, p = 0; row < h; row++)
      for (let col = 0; col < w; col++, p += 4) {
        const v = lut[data[voxelIndex(vol, cell.name, at, col, row)]];
        px[p] = v;
        px[p + 1] = v;
        px[p + 2] = v;
        px[p + 3] = 255;
      }
    sctx.putImageData(img, 0, 0);
    const ctx = cell.canvas.getContext("2d");
    ctx.imageSmoothingEnabled = false; // nearest-neighbour: never blur what is rated
    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, cell.canvas.width, cell.canvas.height);
    ctx.drawImage(src, g.sx, g.sy, g.sw, g.sh, g.dx, g.dy, g.dw, g.dh);
    if (!cell.tile && this.view.crosshair) this.drawCross(ctx, cell, at, g);
    this.drawLetters(ctx, cell, g);
    if (cell.slider && cell.slider.value !== String(at[AXIS_OF_VIEW[cell.name]]))
      cell.slider.value = String(at[AXIS_OF_VIEW[cell.name]]);
  }

  drawCross(ctx, cell, at, g) {
    const [cx, cy] = crossPixel(cell.vol, cell.name, at);
    const x = g.dx + ((cx + 0.5 - g.sx) / g.sw) * g.dw;
    const y = g.dy + ((cy + 0.5 - g.sy) / g.sh) * g.dh;
    ctx.strokeStyle = "rgba(255, 196, 0, 0.7)";
    ctx.lineWidth = Math.max(1, window.devicePixelRatio || 1);
    ctx.beginPath();
    ctx.moveTo(g.dx, y);
    ctx.lineTo(g.dx + g.dw, y);
    ctx.moveTo(x, g.dy);
    ctx.lineTo(x, g.dy + g.dh);
    ctx.stroke();
  }

  drawLetters(ctx, cell, g) {
    const [l, r, t, b] = LETTERS[cell.name];
    const side = cell.canvas.width;
    const size = Math.max(10, Math.round(side / (cell.tile ? 9 : 16)));
    ctx.font = `bold ${size}px sans-serif`;
    ctx.fillStyle = "rgba(255, 230, 120, 0.95)";
    ctx.textBaseline = "middle";
    ctx.textAlign = "left";
    ctx.fillText(l, 3, side / 2);
    ctx.textAlign = "right";
    ctx.fillText(r, side - 3, side / 2);
    ctx.textAlign = "center";
    ctx.textBaseline = "top";
    ctx.fillText(t, side / 2, 3);
    ctx.textBaseline = "bottom";
    ctx.fillText(b, side / 2, side - 3);
  }

  onClick(cell, canvas, e) {
    const rect = canvas.getBoundingClientRect();
    const scale = canvas.width / rect.width;
    const g = this.geometry(cell);
    const col = Math.floor(g.sx + (((e.clientX - rect.left) * scale - g.dx) / g.dw) * g.sw);
    const row = Math.floor(g.sy + (((e.clientY - rect.top) * scale - g.dy) / g.dh) * g.sh);
    if (col < 0 || row < 0 || col >= g.s.w || row >= g.s.h) return;
    this.view.at = clampAt(cell.vol, pixelToAt(cell.vol, cell.name, this.view.at, col, row));
    this.draw();
  }

  syncControls() {
    const first = this.volumes[0];
    if (!first) return;
    const [low, high] = this.windowOf(first);
    const span = first.hi - first.lo || 1;
    if (!this.view.manual) {
      this.dom.level.value = String(Math.round((((low + high) / 2 - first.lo) / span) * 1000));
      this.dom.width.value = String(Math.max(1, Math.round(((high - low) / span) * 1000)));
    }
    const fmt = (v) => (Math.abs(v) >= 100 ? v.toFixed(0) : v.toPrecision(3));
    this.dom.wtext.textContent = this.volumes
      .map((v) => {
        const [lo, hi] = this.windowOf(v);
        return `${this.volumes.length > 1 ? `${v.label} ` : ""}${fmt(lo)}–${fmt(hi)}`;
      })
      .join(" · ");
    for (const b of this.dom.presets.children)
      b.setAttribute("aria-pressed", String(b.textContent === this.view.preset));
  }

  markPainted() {
    const sid = this.sid;
    requestAnimationFrame(() =>
      setTimeout(() => {
        const t = performance.timeOrigin + performance.now();
        const n = (window.__omcPainted?.n || 0) + 1;
        const label = this.header?.item.label;
        window.__omcPainted = { sid, label, t, n, bytes: this.freshBytes };
        this.root.host?.setAttribute("data-painted", sid);
      }, 0),
    );
  }

  // --- the form --------------------------------------------------------------------------------

  buildForm(h) {
    const form = this.dom.form;
    form.replaceChildren();
    const latest = h.item.latest || {};
    const legend = el("dl", { class: "omc-legend", "aria-label": "Scale" });
    h.scale.forEach((text, i) => legend.append(el("dt", { text: String(i + 1) }), el("dd", { text })));
    form.append(legend);
    this.axisErrors = {};
    for (const axis of h.item.axes) {
      const id = `omc-${axis}`;
      const group = el("div", { class: "omc-radios", role: "radiogroup", "aria-labelledby": id });
      for (let v = 1; v <= 5; v++) {
        const input = el("input", { type: "radio", name: axis, value: String(v), "aria-label": `${h.axis_labels[axis]} ${v}` });
        if (latest[axis] === v) input.checked = true;
        input.addEventListener("change", () => this.clearError(axis));
        group.append(el("label", { class: "omc-radio" }, input, el("span", { text: String(v) })));
      }
      const error = el("div", { class: "omc-error", "aria-live": "polite" });
      this.axisErrors[axis] = error;
      form.append(
        el(
          "div",
          { class: "omc-axis" },
          el("div", { class: "omc-axis-head" }, el("span", { id, class: "omc-axis-label", text: h.axis_labels[axis] }), el("span", { class: "omc-hint", text: h.axis_hints[axis] })),
          group,
          error,
        ),
      );
    }
    if (h.item.is_dwi) form.append(el("div", { class: "omc-hint", text: "Artifact level is not rated for DWI-derived maps." }));
    for (const [flag, label] of Object.entries(h.flag_labels)) {
      const box = el("input", { type: "checkbox", name: flag });
      box.checked = Boolean(latest[flag]);
      form.append(el("label", { class: "omc-flag" }, box, ` ${label}`));
    }
    const comment = el("textarea", { name: "comment", maxlength: "4000", rows: "2", "aria-label": "Comment (optional)", placeholder: "Comment (optional)" });
    comment.value = latest.comment || "";
    form.append(comment);
    this.dom.status = el("div", { class: "omc-status", role: "status" });
    form.append(this.dom.status);
    const save = el("button", { type: "submit", class: "omc-primary", title: "Ctrl+Enter" });
    const skip = el("button", { type: "button", title: "Alt+S: move this item to the end of your queue", text: "Skip" });
    const back = el("button", { type: "button", title: "Alt+B: show the item before (saving it stores a correction)", text: "Back" });
    const ret = el("button", { type: "button", text: "Return to current item" });
    skip.addEventListener("click", () => this.send("skip"));
    back.addEventListener("click", () => this.send("back"));
    ret.addEventListener("click", () => this.send("return"));
    form.append(el("div", { class: "omc-buttons" }, save, skip, back, ret));
    Object.assign(this.dom, { save, skip, back, ret, comment });
  }

  setButtons(h) {
    const nav = h.nav;
    this.dom.save.textContent = h.item.correction ? "Save correction" : "Save and next";
    this.dom.skip.hidden = !nav.can_skip;
    this.dom.back.disabled = !nav.can_back;
    this.dom.ret.hidden = !nav.can_return;
    this.dom.save.disabled = false;
  }

  showStatus(status) {
    const box = this.dom.status;
    box.textContent = status ? status.text : "";
    box.className = `omc-status ${status ? `omc-${status.level}` : ""}`;
  }

  clearError(axis) {
    if (this.axisErrors[axis]) this.axisErrors[axis].textContent = "";
  }

  answers() {
    const form = this.dom.form;
    const out = {};
    for (const axis of this.header.item.axes) {
      const checked = form.querySelector(`input[name="${axis}"]:checked`);
      out[axis] = checked ? Number(checked.value) : null;
    }
    for (const flag of Object.keys(this.header.flag_labels))
      out[flag] = form.querySelector(`input[name="${flag}"]`).checked;
    out.comment = this.dom.comment.value;
    return out;
  }

  windowSettings() {
    const maps = {};
    for (const vol of this.volumes) {
      const [low, high] = this.windowOf(vol);
      maps[vol.label] = { level: (low + high) / 2, width: high - low };
    }
    return {
      preset: this.view.preset || "manual",
      slices: this.view.at.slice(),
      zoom: this.view.zoom,
      mosaic: this.view.mosaic,
      maps,
    };
  }

  save() {
    if (this.pending) return;
    const answers = this.answers();
    const missing = this.header.item.axes.filter((a) => answers[a] === null);
    for (const axis of this.header.item.axes)
      this.axisErrors[axis].textContent = missing.includes(axis) ? "Choose a value 1–5" : "";
    if (missing.length) {
      const names = missing.map((a) => this.header.axis_labels[a].toLowerCase()).join(", ");
      this.showStatus({ level: "error", text: `Not saved: choose a value 1–5 for ${names}.` });
      return;
    }
    const nonce = this.send("save", { answers, window: this.view ? this.windowSettings() : null });
    const next = this.header.next;
    if (nonce && next?.unit && CACHE.has(next.unit.key)) this.advance(nonce);
  }

  send(type, extra = {}) {
    if (this.pending) return null;
    this.pending = true;
    this.dom.save.disabled = true;
    this.showStatus({ level: "info", text: type === "save" ? "Saving…" : "…" });
    const nonce = `${this.sid}-${Date.now()}-${Math.random()}`;
    this.setTrigger("action", { type, sid: this.sid, nonce, ...extra });
    return nonce;
  }

  onKey(e) {
    if (!this.header || !this.root.host?.isConnected) return;
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) {
      e.preventDefault();
      this.save();
    } else if (e.altKey && (e.key === "s" || e.key === "S") && !this.dom.skip.hidden) {
      e.preventDefault();
      this.send("skip");
    } else if (e.altKey && (e.key === "b" || e.key === "B") && !this.dom.back.disabled) {
      e.preventDefault();
      this.send("back");
    }
  }
}

export default function (component) {
  const { data, setTriggerValue, parentElement } = component;
  if (!data) return;
  let panel = parentElement.__omcPanel;
  if (!panel) {
    panel = new Panel(parentElement);
    parentElement.__omcPanel = panel;
  }
  panel.update(data, setTriggerValue);
}
