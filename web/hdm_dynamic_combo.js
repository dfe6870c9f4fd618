// HDM nodes: open UI workflows saved with the flat inputs of HDM Train LyCORIS (algorithm and data
// source) and HDM TIPO Prompt (backend) on hosts where those inputs are DynamicCombos (ComfyUI v0.33+,
// see nodes/train_algorithm.py, nodes/train_data.py, nodes/tipo.py). The saved node is rewritten into
// the current layout before the frontend restores it (web/hdm_saved_layouts.js says how); on hosts
// without DynamicCombo, and for nodes saved in the current layout, nothing changes.
import { app } from "../../scripts/app.js";
import { LEGACY_WIDGETS, migrateSavedNode } from "./hdm_saved_layouts.js";

app.registerExtension({
  name: "hdm.dynamicComboLegacyWorkflows",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!(nodeData?.name in LEGACY_WIDGETS)) return;
    const configure = nodeType.prototype.configure;
    nodeType.prototype.configure = function (info) {
      return configure.call(this, migrateSavedNode(nodeData, info) ?? info);
    };
  },
});
