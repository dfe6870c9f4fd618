// Load UI workflows into the real ComfyUI frontend (headless Chromium via playwright-core) and
// report the node boxes as the frontend draws them; optionally screenshot each at fit-to-view.
//
//   node draw_workflows.mjs <request.json>
//
// request.json: {"url": "http://127.0.0.1:PORT", "chromium": "/usr/bin/chromium",
//                "workflows": {"name": "/path/name.json", ...}, "screenshots": "/dir" | null,
//                "viewport": [1600, 900]}
// Prints one JSON object on stdout: {"frontend": version, "title_height": px, "viewport": [w, h],
//   "workflows": {name: {"nodes": [{id, type, title, pos, size, min_size, bounding, widgets_values,
//   widgets: [{name, value}]}], "fit_scale": s, "prompt": app.graphToPrompt()'s API prompt}}}.
// "bounding" is [x, y, w, h] with the title bar included (LiteGraph's boundingRect after a draw).
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const require = createRequire(path.join(process.env.HDM_PLAYWRIGHT_DIR || here, "noop.js"));
const { chromium } = require("playwright-core");

const request = JSON.parse(readFileSync(process.argv[2], "utf8"));
const [vw, vh] = request.viewport || [1600, 900];

async function setSetting(id, value) {
  const r = await fetch(`${request.url}/settings/${encodeURIComponent(id)}`, {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(value),
  });
  if (!r.ok) throw new Error(`setting ${id}: HTTP ${r.status}`);
}

// A first visit opens the template browser / tutorial over the canvas: mark it done.
await setSetting("Comfy.TutorialCompleted", true);
// The canvas as a user sees it, minus the overlays a screenshot does not need.
await setSetting("Comfy.Minimap.Visible", false);
await setSetting("Comfy.Graph.CanvasInfo", false);

const browser = await chromium.launch({
  executablePath: request.chromium,
  args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
});
const out = { workflows: {} };
try {
  const page = await browser.newPage({ viewport: { width: vw, height: vh }, deviceScaleFactor: 1 });
  const pageErrors = [];
  page.on("pageerror", (e) => pageErrors.push(String(e)));
  await page.goto(request.url, { waitUntil: "load", timeout: 120000 });
  await page.waitForFunction(() => window.app && window.app.graph && window.app.canvas && window.LiteGraph, null, { timeout: 120000 });
  // let the extensions finish registering node definitions
  await page.waitForFunction(() => Object.keys(window.LiteGraph.registered_node_types).length > 50, null, { timeout: 120000 });
  await page.waitForTimeout(1500);
  const info = await page.evaluate(() => ({
    frontend: window.__COMFYUI_FRONTEND_VERSION__ || null,
    title_height: window.LiteGraph.NODE_TITLE_HEIGHT,
  }));
  Object.assign(out, info, { viewport: [vw, vh] });

  for (const [name, file] of Object.entries(request.workflows)) {
    const graph = JSON.parse(readFileSync(file, "utf8"));
    await page.evaluate(async (g) => {
      await window.app.loadGraphData(g.graph, true, true, g.name, { skipAssetScans: true, silentAssetErrors: true });
    }, { graph, name });
    await page.keyboard.press("Escape"); // close any dialog a load may open
    await page.waitForTimeout(400);
    const result = await page.evaluate(() => {
      const app = window.app;
      const canvas = app.canvas;
      canvas.setDirty(true, true);
      canvas.draw(true, true);
      const ctx = canvas.canvas.getContext("2d");
      ctx.save();
      ctx.font = canvas.title_text_font || `${window.LiteGraph.NODE_TEXT_SIZE}px ${window.LiteGraph.NODE_FONT}`;
      const nodes = (app.graph.nodes || app.graph._nodes).map((n) => {
        if (n.updateArea) n.updateArea();
        const b = n.boundingRect || n.getBounding();
        return {
          id: Number(n.id), type: n.type, title: n.title,
          pos: [n.pos[0], n.pos[1]], size: [n.size[0], n.size[1]],
          min_size: Array.from(n.computeSize()), bounding: [b[0], b[1], b[2], b[3]],
          // width of the title text: the frontend shortens a title that does not fit with "..."
          registered: !!window.LiteGraph.registered_node_types[n.type],
          widgets_values: (n.serialize().widgets_values || []).map((v) => (v === undefined ? null : v)),
          // every widget by name, as the node shows it (DynamicCombo options are named "combo.option")
          widgets: (n.widgets || []).map((w) => ({ name: w.name, value: w.value === undefined ? null : w.value })),
          title_width: (() => { ctx.font = n.titleFontStyle || ctx.font; return ctx.measureText(n.getTitle ? n.getTitle() || "" : n.title || "").width; })(),
        };
      });
      ctx.restore();
      // fit to view the way "Zoom to fit" does (bounds of every node, title bars included)
      let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
      for (const n of nodes) {
        const [x, y, w, h] = n.bounding;
        x0 = Math.min(x0, x); y0 = Math.min(y0, y); x1 = Math.max(x1, x + w); y1 = Math.max(y1, y + h);
      }
      for (const g of app.graph._groups || app.graph.groups || []) {
        const b = g._bounding || g.bounding;
        x0 = Math.min(x0, b[0]); y0 = Math.min(y0, b[1]); x1 = Math.max(x1, b[0] + b[2]); y1 = Math.max(y1, b[1] + b[3]);
      }
      const bounds = [x0, y0, x1 - x0, y1 - y0];
      // Zoom to fit into the part of the window the menus leave free (sidebar left, tabs and the
      // Run bar on top, zoom controls at the bottom): screen = (world + offset) * scale.
      const el = canvas.canvas;
      const [W, H] = [el.clientWidth, el.clientHeight];
      const inset = { left: 70, top: 100, right: 20, bottom: 60 };
      const [fw, fh] = [W - inset.left - inset.right, H - inset.top - inset.bottom];
      const scale = Math.min(fw / bounds[2], fh / bounds[3]);
      canvas.ds.scale = scale;
      canvas.ds.offset[0] = (inset.left + fw / 2) / scale - (bounds[0] + bounds[2] / 2);
      canvas.ds.offset[1] = (inset.top + fh / 2) / scale - (bounds[1] + bounds[3] / 2);
      canvas.setDirty(true, true);
      canvas.draw(true, true);
      // low_quality: LiteGraph's level of detail drops the text when the zoom is too small to read it
      const groups = (app.graph._groups || app.graph.groups || []).map((g) => {
        const b = g._bounding || g.bounding;
        return { title: g.title, bounding: [b[0], b[1], b[2], b[3]] };
      });
      return { nodes, groups, bounds, fit_scale: canvas.ds.scale, low_quality: !!canvas.low_quality };
    });
    // the API prompt the frontend would queue for this graph
    result.prompt = await page.evaluate(async () => (await window.app.graphToPrompt()).output);
    if (request.screenshots) {
      // image previews (Load Image) are DOM elements that settle a moment after the load
      await page.waitForTimeout(1500);
      await page.evaluate(() => { window.app.canvas.setDirty(true, true); window.app.canvas.draw(true, true); });
      await page.waitForTimeout(300);
      await page.screenshot({ path: path.join(request.screenshots, `${name}.png`) });
    }
    out.workflows[name] = result;
  }
  out.page_errors = pageErrors;
} finally {
  await browser.close();
}
process.stdout.write(JSON.stringify(out) + "\n");
