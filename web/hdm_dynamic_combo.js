// HDM nodes: open UI workflows saved with HDM Train LyCORIS's flat inputs on hosts where its
// `algorithm` is a DynamicCombo (ComfyUI v0.33+, see nodes/train_algorithm.py).
//
// The frontend restores a node's saved `widgets_values` by position, and a DynamicCombo inserts
// the chosen option's widgets right after itself. A workflow saved with the flat layout (algorithm,
// rank, alpha, lokr_factor, target, ...) would load shifted. This extension recognises that layout
// and rewrites the values into the dynamic one (algorithm, then only the options the chosen
// algorithm has, in its order) before the frontend restores them, and drops the unlinked input
// sockets of the flat widgets. A flat input that is linked keeps its link and name: the node
// accepts flat inputs and takes the linked value. On hosts without DynamicCombo it does nothing.
import { app } from "../../scripts/app.js";

const NODE = "HDMTrainLyCORIS";
// Widget values of the flat layout, in the order every release so far saved them
// (nodes/train_algorithm.py LEGACY_WIDGETS; tests/test_comfy_dynamic_combo.py checks the two agree).
export const LEGACY_WIDGETS = [
  "dataset_folder", "resolution", "crop", "missing_captions", "bracket_mode", "algorithm", "rank", "alpha",
  "lokr_factor", "target", "exclude", "steps", "batch_size", "learning_rate", "scheduler", "warmup_steps",
  "tread_rate", "seed", "control_after_generate", "save_name", "save_every", "gradient_checkpointing",
  "precision", "captions", "preview_every",
];
const FLAT = ["rank", "alpha", "lokr_factor"];
const ALGO = LEGACY_WIDGETS.indexOf("algorithm");

// The option names of each algorithm, in the order the DynamicCombo inserts their widgets.
function optionInputs(nodeData) {
  const spec = nodeData?.input?.required?.algorithm;
  if (!spec || spec[0] !== "COMFY_DYNAMICCOMBO_V3") return null;
  return Object.fromEntries(
    spec[1].options.map((o) => [o.key, [...Object.keys(o.inputs?.required ?? {}), ...Object.keys(o.inputs?.optional ?? {})]]),
  );
}

// The saved values in the flat layout, or null when they are already in the dynamic one. Flat:
// three numbers (rank, alpha, lokr_factor) after the algorithm, then target's name. Dynamic: the
// algorithm's own numbers (0 to 3), then target. For lokr (all three) the layouts are the same.
export function isFlatLayout(values, options) {
  if (!Array.isArray(values) || values.length < ALGO + 5 || values.length > LEGACY_WIDGETS.length) return false;
  const own = options[values[ALGO]];
  if (!own) return false;
  const numbers = FLAT.every((_, i) => typeof values[ALGO + 1 + i] === "number");
  return numbers && typeof values[ALGO + 4] === "string" && own.length < FLAT.length;
}

export function toDynamicLayout(values, options) {
  const byName = Object.fromEntries(values.map((v, i) => [LEGACY_WIDGETS[i], v]));
  const own = options[values[ALGO]].map((name) => byName[name]);
  return [...values.slice(0, ALGO + 1), ...own, ...values.slice(ALGO + 1 + FLAT.length)];
}

app.registerExtension({
  name: "hdm.dynamicComboLegacyWorkflows",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData?.name !== NODE) return;
    const options = optionInputs(nodeData);
    if (!options) return; // flat host: the saved layout is the node's layout
    const configure = nodeType.prototype.configure;
    nodeType.prototype.configure = function (info) {
      if (info && isFlatLayout(info.widgets_values, options)) {
        info = { ...info, widgets_values: toDynamicLayout(info.widgets_values, options) };
        delete info.widgets_values_named;
        if (Array.isArray(info.inputs)) {
          info.inputs = info.inputs.filter((i) => !(FLAT.includes(i.name) && i.widget && i.link == null));
        }
      }
      return configure.call(this, info);
    };
  },
});
