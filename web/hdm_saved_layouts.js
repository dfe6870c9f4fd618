// HDM nodes: the widget layouts UI workflows were saved with, and how to read them on hosts where
// some of those inputs moved into DynamicCombos (ComfyUI v0.33+). Pure functions, no frontend
// import: web/hdm_dynamic_combo.js applies them when a workflow loads, and the pack's tests run this
// very file under Node to turn saved UI workflows into API prompts (tests/comfy_harness.py).
//
// The frontend restores a node's saved `widgets_values` by position, and a DynamicCombo inserts the
// chosen option's widgets right after itself. Values saved in a flat layout would land on the wrong
// widgets, so they are read by name here (LEGACY_WIDGETS), each DynamicCombo gets the option the old
// values imply, and the values are written out again in the node's current widget order. Saved input
// sockets of moved inputs are dropped when unlinked, and renamed into their DynamicCombo
// (`data_source.latent`) when linked, so their links survive.

// Widget values of the flat layouts, in the order every release so far saved them
// (tests/test_comfy_dynamic_combo.py and tests/tipo/test_tipo_backend_combo.py check them against the
// nodes' widgets on hosts without DynamicCombo).
// `control_after_generate` is the seed's control widget.
export const LEGACY_WIDGETS = {
  HDMTrainLyCORIS: [
    "dataset_folder", "resolution", "crop", "missing_captions", "bracket_mode", "algorithm", "rank", "alpha",
    "lokr_factor", "target", "exclude", "steps", "batch_size", "learning_rate", "scheduler", "warmup_steps",
    "tread_rate", "seed", "control_after_generate", "save_name", "save_every", "gradient_checkpointing",
    "precision", "captions", "preview_every",
  ],
  HDMTipoPrompt: [
    "tags", "nl_prompt", "ban_tags", "model", "format", "tag_length", "nl_length", "width", "height", "temperature",
    "top_p", "top_k", "min_p", "seed", "control_after_generate", "device", "max_retry", "max_new_tokens",
    "length_check", "escape_brackets", "precision",
  ],
};

const DYNAMIC = "COMFY_DYNAMICCOMBO_V3";
const WIDGET_TYPES = ["INT", "FLOAT", "STRING", "BOOLEAN", "COMBO", DYNAMIC];

// [name, definition] of a node's (or an option's) inputs, required first, in the server's order.
function inputsOf(input, order) {
  const out = [];
  for (const group of ["required", "optional"]) {
    const defs = input?.[group] ?? {};
    for (const name of order?.[group] ?? Object.keys(defs)) if (name in defs) out.push([name, defs[name]]);
  }
  return out;
}

const isWidget = (def) => Array.isArray(def[0]) || WIDGET_TYPES.includes(def[0]);
const optionsOf = (def) => (Array.isArray(def[0]) ? def[0] : def[1]?.options ?? []);
const dynamicOptions = (def) => Object.fromEntries(def[1].options.map((o) => [o.key, inputsOf(o.inputs)]));

// Every input definition by name, the DynamicCombos' per-option inputs included (first one wins).
function definitions(nodeData) {
  const found = {};
  for (const [name, def] of inputsOf(nodeData.input, nodeData.input_order)) {
    found[name] ??= def;
    if (def[0] === DYNAMIC) for (const inputs of Object.values(dynamicOptions(def))) for (const [n, d] of inputs) found[n] ??= d;
  }
  return found;
}

function defaultOf(def) {
  if (def[0] === DYNAMIC) return def[1].options[0]?.key;
  if (def[1] && "default" in def[1]) return def[1].default;
  if (def[0] === "COMBO" || Array.isArray(def[0])) return optionsOf(def)[0];
  return { INT: 0, FLOAT: 0, STRING: "", BOOLEAN: false }[def[0]];
}

const isIn = (value, def) => def !== undefined && optionsOf(def).includes(value);
const isNumber = (v) => typeof v === "number";

// Per node: saved values -> {name: value} when they are in a flat layout, else null; and the
// option each DynamicCombo gets from those values and the node's linked inputs.
const READERS = {
  HDMTrainLyCORIS: {
    read(values, defs) {
      const names = LEGACY_WIDGETS.HDMTrainLyCORIS;
      const at = (name) => values[names.indexOf(name)];
      // (a host with DynamicCombos has them for both algorithm and data source)
      const algorithms = Object.keys(dynamicOptions(defs.algorithm));
      const flat = values.length >= 12 && values.length <= names.length && isIn(at("crop"), defs.crop)
        && isIn(at("missing_captions"), defs.missing_captions) && isIn(at("bracket_mode"), defs.bracket_mode)
        && algorithms.includes(at("algorithm"));
      if (!flat) return null;
      const byName = {};
      const algo = names.indexOf("algorithm");
      names.slice(0, algo + 1).forEach((n, i) => (byName[n] = values[i]));
      // rank, alpha, lokr_factor as three numbers (flat) or, from workflows saved on v0.33 with the
      // algorithm's DynamicCombo only, just the algorithm's own options
      let next = algo + 1;
      const three = [0, 1, 2].every((i) => isNumber(values[algo + 1 + i])) && typeof values[algo + 4] === "string";
      const own = three ? ["rank", "alpha", "lokr_factor"] : (dynamicOptions(defs.algorithm)[byName.algorithm] ?? []).map(([n]) => n);
      for (const n of own) byName[n] = values[next++];
      const rest = names.slice(names.indexOf("target"));
      rest.forEach((n, i) => next + i < values.length && (byName[n] = values[next + i]));
      return byName;
    },
    choose(byName, linked) {
      const folder = typeof byName.dataset_folder === "string" && byName.dataset_folder.trim() !== "";
      const source = folder ? "folder" : linked.has("images") ? "images" : linked.has("latent") ? "latent" : "folder";
      return { algorithm: byName.algorithm, data_source: source };
    },
  },
  HDMTipoPrompt: {
    read(values, defs) {
      const names = LEGACY_WIDGETS.HDMTipoPrompt;
      const at = (name) => values[names.indexOf(name)];
      const flat = values.length >= names.length - 1 && values.length <= names.length && isIn(at("tag_length"), defs.tag_length)
        && isIn(at("nl_length"), defs.nl_length) && isIn(at("device"), defs.device);
      return flat ? Object.fromEntries(values.map((v, i) => [names[i], v])) : null;
    },
    choose(byName) {
      const model = String(byName.model ?? "");
      return { backend: model.toLowerCase().endsWith(".gguf") ? "gguf" : "transformers" };
    },
  },
};

// The node's saved `info` (its entry in a UI workflow) in the current layout, or null when it needs
// nothing (not an HDM node with a flat layout, a host without DynamicCombo, or already current).
export function migrateSavedNode(nodeData, info) {
  const reader = READERS[nodeData?.name];
  const ordered = inputsOf(nodeData?.input, nodeData?.input_order);
  if (!reader || !info || !Array.isArray(info.widgets_values) || !ordered.some(([, d]) => d[0] === DYNAMIC)) return null;
  const defs = definitions(nodeData);
  const byName = reader.read(info.widgets_values, defs);
  if (!byName) return null;
  const linked = new Set((info.inputs ?? []).filter((i) => i.link != null).map((i) => i.name));
  const chosen = reader.choose(byName, linked);

  const values = [];
  const nestedIn = {}; // moved input name -> its new name in the chosen option
  const push = (name, def, key = name) => {
    values.push(name in byName ? byName[name] : defaultOf(def));
    if (def[1]?.control_after_generate) values.push(byName.control_after_generate ?? "fixed");
    return key;
  };
  for (const [name, def] of ordered) {
    if (def[0] !== DYNAMIC) {
      if (isWidget(def)) push(name, def);
      continue;
    }
    const options = dynamicOptions(def);
    const key = chosen[name] in options ? chosen[name] : defaultOf(def);
    values.push(key);
    for (const [n, d] of options[key]) {
      nestedIn[n] = `${name}.${n}`;
      if (isWidget(d)) push(n, d);
    }
  }
  const topLevel = new Set(ordered.map(([n]) => n));
  const moved = new Set(Object.keys(defs).filter((n) => !topLevel.has(n)));
  const inputs = [];
  for (const input of info.inputs ?? []) {
    if (!moved.has(input.name)) inputs.push(input);
    else if (input.link != null && nestedIn[input.name]) {
      const name = nestedIn[input.name];
      inputs.push({ ...input, name, ...(input.widget ? { widget: { ...input.widget, name } } : {}) });
    } else if (input.link != null) inputs.push(input); // linked but not in the chosen option: the node still receives it
  }
  const out = { ...info, widgets_values: values, inputs };
  delete out.widgets_values_named;
  return out;
}
