"""Every shipped UI workflow as the real ComfyUI frontend draws it: no overlaps, data order, readable.

One ComfyUI server (``main.py --cpu``, this pack linked into a temporary base directory) serves
its own frontend; headless Chromium driven by ``playwright-core`` loads each workflow with
``app.loadGraphData`` and reads LiteGraph's node boxes after a draw (tests/frontend/). Without
Chromium, Node.js or playwright-core the module skips with a line saying what to install
(``bash .ci/run`` installs them).
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import pytest

FRONTEND = Path(__file__).resolve().parent / "frontend"
sys.path.insert(0, str(FRONTEND))
try:
    import comfy_frontend as F
    from frontend_server import PACK_DIR_NAME, FrontendServer, cannot_serve
finally:
    sys.path.remove(str(FRONTEND))

NAMES = sorted(p.stem for p in F.WORKFLOWS.glob("*.json"))
VIEWPORT = (1600, 900)
LEGACY = Path(__file__).resolve().parent / "fixtures" / "legacy_workflows"
LEGACY_NAMES = sorted(p.stem for p in LEGACY.glob("*.json") if p.stem != "reference_outputs")
#: HDM Train LyCORIS's widgets in the flat layout (nodes/train_algorithm.py LEGACY_WIDGETS; the
#: test there checks this copy, the pack's and web/hdm_dynamic_combo.js's agree).
TRAIN_LEGACY_WIDGETS = (
    "dataset_folder", "resolution", "crop", "missing_captions", "bracket_mode", "algorithm", "rank", "alpha",
    "lokr_factor", "target", "exclude", "steps", "batch_size", "learning_rate", "scheduler", "warmup_steps",
    "tread_rate", "seed", "control_after_generate", "save_name", "save_every", "gradient_checkpointing",
    "precision", "captions", "preview_every",
)  # fmt: skip


def host_has_dynamic_combo(comfyui_path: Path) -> bool:
    """Whether this ComfyUI gives HDM Train LyCORIS its DynamicCombo (nodes/v3.py DYNAMIC_INPUTS)."""
    source = (comfyui_path / "comfy_api" / "latest" / "_io.py").read_text()
    return "class DynamicCombo" in source and "accept_all_inputs" in source


def train_widgets_by_legacy_name(drawn_node: dict) -> dict:
    """The drawn HDM Train LyCORIS's widget values under their flat names ("algorithm.rank" -> "rank")."""
    return {w["name"].removeprefix("algorithm."): w["value"] for w in drawn_node["widgets"]}


def squeezed_train_workflow(tmp: Path) -> Path:
    """hdm_train_lycoris as it was saved before the layout fix: HDM Train LyCORIS saved far smaller
    than the frontend draws it, the next column placed right after the saved width."""
    ui = json.loads((F.WORKFLOWS / "hdm_train_lycoris.json").read_text())
    nodes = {n["id"]: n for n in ui["nodes"]}
    train = next(n for n in ui["nodes"] if n["type"] == "HDMTrainLyCORIS")
    shift = train["size"][0] - 300
    train["size"] = [300, 300]
    for n in nodes.values():
        if n["pos"][0] > train["pos"][0]:
            n["pos"][0] -= shift
    path = tmp / "squeezed_train.json"
    path.write_text(json.dumps(ui))
    return path


@pytest.fixture(scope="module")
def drawn(comfyui_path, tmp_path_factory):
    tools, why = F.find_tools()
    if tools is None:
        line = f"=== FRONTEND TESTS SKIPPED: {why} ==="
        warnings.warn(line)
        pytest.skip(line)
    if not (comfyui_path / "main.py").is_file():
        pytest.skip("this ComfyUI checkout has no main.py")
    srv = FrontendServer(comfyui_path)
    try:
        try:
            srv.wait_ready()
        except RuntimeError as exc:
            if cannot_serve(exc):
                pytest.skip(cannot_serve(exc))
            raise
        templates = template_browser(srv.url)
        import urllib.request

        with urllib.request.urlopen(srv.url + "/object_info", timeout=60) as r:
            object_info = json.loads(r.read())
        files = {n: F.WORKFLOWS / f"{n}.json" for n in NAMES}
        files["squeezed_train"] = squeezed_train_workflow(tmp_path_factory.mktemp("frontend"))
        files.update({f"legacy/{n}": LEGACY / f"{n}.json" for n in LEGACY_NAMES})
        report = F.draw(srv.url, files, tools, viewport=VIEWPORT)
    finally:
        srv.stop()
    report["templates"] = templates
    report["dynamic"] = host_has_dynamic_combo(comfyui_path)
    report["object_info"] = object_info
    assert not report["page_errors"], report["page_errors"]
    assert report["title_height"] > 0
    return report


def template_browser(url: str) -> dict:
    """What the frontend's template browser fetches: the pack's template list, each workflow
    and its thumbnail (``/api/workflow_templates/<pack folder>/<name>.json`` / ``.jpg``)."""
    import urllib.error
    import urllib.request

    def get(path):
        try:
            with urllib.request.urlopen(url + path, timeout=30) as r:
                return r.status, r.headers.get("Content-Type", ""), r.read()
        except urllib.error.HTTPError as e:
            return e.code, "", b""

    listed = json.loads(get("/api/workflow_templates")[2]).get(PACK_DIR_NAME, [])
    files = {f"{n}.{ext}": get(f"/api/workflow_templates/{PACK_DIR_NAME}/{n}.{ext}") for n in listed for ext in ("json", "jpg")}
    return {"listed": sorted(listed), "files": files}


def saved(name: str) -> dict:
    return json.loads((F.WORKFLOWS / f"{name}.json").read_text())


def test_the_check_sees_a_node_drawn_over_others(drawn):
    """The pre-fix situation: a node saved smaller than the frontend draws it covers its neighbours."""
    nodes = drawn["workflows"]["squeezed_train"]["nodes"]
    train = next(n for n in nodes if n["type"] == "HDMTrainLyCORIS")
    assert train["size"][0] > 300 and train["size"][1] > 300  # the frontend grew it to fit its widgets
    pairs = F.overlapping_pairs(nodes)
    assert pairs and all(any(p.startswith(f"{train['id']} ") for p in pair) for pair in pairs), pairs


@pytest.mark.parametrize("name", NAMES)
def test_no_two_nodes_overlap_as_drawn(drawn, name):
    nodes = drawn["workflows"][name]["nodes"]
    assert len(nodes) == len(saved(name)["nodes"])
    assert F.overlapping_pairs(nodes) == []
    for n in nodes:  # the boxes include the title bar
        assert n["bounding"][1] == pytest.approx(n["pos"][1] - drawn["title_height"])
        assert n["bounding"][3] == pytest.approx(n["size"][1] + drawn["title_height"])


@pytest.mark.parametrize("name", NAMES)
def test_frontend_knows_every_node_and_keeps_every_widget_value(drawn, name):
    """Each node type is registered with the frontend (from the server's /object_info), and the
    workflow saved again by the frontend has the same widget values in the same order (it may
    append values of its own widgets, e.g. Load Image's upload button)."""
    by_id = {n["id"]: n for n in saved(name)["nodes"]}
    for n in drawn["workflows"][name]["nodes"]:
        assert n["registered"], f"{name}: the frontend has no node type {n['type']}"
        values = by_id[n["id"]].get("widgets_values", [])
        if n["type"] == "HDMTrainLyCORIS" and drawn["dynamic"]:  # saved flat, shown and saved again in the DynamicCombo layout
            assert_train_widgets_are_the_saved_values(n, values, f"{name}: node {n['id']}")
            continue
        assert n["widgets_values"][: len(values)] == values, f"{name}: node {n['id']} ({n['title']})"


def assert_train_widgets_are_the_saved_values(drawn_node: dict, values: list, where: str) -> None:
    """Every widget of HDM Train LyCORIS shows the value saved under its flat name; with the
    DynamicCombo, exactly the chosen algorithm's options are there (web/hdm_dynamic_combo.js)."""
    saved_values = dict(zip(TRAIN_LEGACY_WIDGETS, values))
    shown = train_widgets_by_legacy_name(drawn_node)
    names = [w["name"] for w in drawn_node["widgets"]]
    if "algorithm.rank" in names or "rank" not in names:  # the DynamicCombo layout
        own = {"lora": 2, "locon": 2, "loha": 2, "dora": 2, "glora": 2, "lokr": 3, "diag-oft": 1, "boft": 1, "full": 0}[saved_values["algorithm"]]
        assert [n for n in names if n.startswith("algorithm.")] == [f"algorithm.{k}" for k in ("rank", "alpha", "lokr_factor")[:own]], (where, names)
    for name, value in shown.items():
        if name in saved_values:
            assert value == pytest.approx(saved_values[name]) if isinstance(value, float) else value == saved_values[name], (where, name, value, saved_values[name])
        else:
            assert name == "preview_every" and value == 0, (where, name, value)  # added since, at its default
    missing = set(saved_values) - set(shown) - {"rank", "alpha", "lokr_factor"}
    assert not missing, (where, missing)


@pytest.mark.parametrize("name", LEGACY_NAMES)
def test_legacy_ui_workflows_show_their_saved_values(drawn, name):
    """The UI workflows of the V1 release, loaded in the real frontend: every node shows the saved
    value in every widget, by name (HDM Train LyCORIS on a DynamicCombo host included)."""
    ui = json.loads((LEGACY / f"{name}.json").read_text())
    by_id = {n["id"]: n for n in ui["nodes"]}
    for n in drawn["workflows"][f"legacy/{name}"]["nodes"]:
        assert n["registered"], n["type"]
        values = by_id[n["id"]].get("widgets_values", [])
        if n["type"] == "HDMTrainLyCORIS":
            assert_train_widgets_are_the_saved_values(n, values, f"{name}: node {n['id']}")
        else:
            assert n["widgets_values"][: len(values)] == values, f"{name}: node {n['id']} ({n['title']})"


@pytest.mark.parametrize("name", LEGACY_NAMES)
def test_legacy_ui_workflows_queue_the_inputs_of_their_api_twins(drawn, name):
    """What the frontend queues for a legacy UI workflow (app.graphToPrompt) is its API twin: the
    same values, HDM Train LyCORIS's algorithm options under the DynamicCombo's names
    ("algorithm.rank") where the host has it; inputs added since at their defaults.
    tests/test_comfy_legacy_workflows.py runs both forms."""
    api = json.loads((LEGACY / "api" / f"{name}.json").read_text())
    queued = drawn["workflows"][f"legacy/{name}"]["prompt"]
    assert set(queued) == set(api)
    for node_id, node in api.items():
        got = {k.removeprefix("algorithm.") if node["class_type"] == "HDMTrainLyCORIS" else k: v for k, v in queued[node_id]["inputs"].items()}
        want = dict(node["inputs"])
        if node["class_type"] == "HDMTrainLyCORIS" and drawn["dynamic"]:
            assert any(k.startswith("algorithm.") for k in queued[node_id]["inputs"]) or want["algorithm"] == "full"
            own = {"lora": 2, "locon": 2, "loha": 2, "dora": 2, "glora": 2, "lokr": 3, "diag-oft": 1, "boft": 1, "full": 0}[want["algorithm"]]
            for dropped in ("rank", "alpha", "lokr_factor")[own:]:
                want.pop(dropped)
        optional = drawn["object_info"][node["class_type"]]["input"].get("optional", {})
        for added in set(got) - set(want):  # inputs added since: optional, at their defaults
            assert added in optional and got[added] == optional[added][1].get("default"), (name, node_id, added)
            want[added] = got[added]
        assert got == want, (name, node_id)


@pytest.mark.parametrize("name", NAMES)
def test_groups_frame_whole_nodes(drawn, name):
    """A group (the titled frames that say what a part of the workflow is for) holds whole nodes only."""
    w = drawn["workflows"][name]
    assert [g["title"] for g in w["groups"]] == [g["title"] for g in saved(name).get("groups", [])]
    assert F.group_problems(w["groups"], w["nodes"]) == []


def test_the_group_check_sees_a_group_cutting_a_node(drawn):
    w = drawn["workflows"]["hdm_hires_fix"]
    assert w["groups"], "hdm_hires_fix has its second pass in a group"
    x, y, gw, gh = w["groups"][0]["bounding"]
    shifted = [{"title": "moved", "bounding": [x - 100, y, gw, gh]}]
    assert any("cuts through" in p for p in F.group_problems(shifted, w["nodes"]))


@pytest.mark.parametrize("name", NAMES)
def test_saved_sizes_are_what_the_frontend_draws(drawn, name):
    """A saved size below the computed minimum is grown on load, which is how nodes came to overlap."""
    by_id = {n["id"]: n for n in saved(name)["nodes"]}
    for n in drawn["workflows"][name]["nodes"]:
        s = by_id[n["id"]]
        assert n["size"] == pytest.approx(s["size"], abs=0.5), f"{name}: node {n['id']} ({n['title']}) saved {s['size']}, drawn {n['size']}"
        assert n["pos"] == pytest.approx(s["pos"], abs=0.5)
        assert s["size"][0] >= n["min_size"][0] - 0.5 and s["size"][1] >= n["min_size"][1] - 0.5


@pytest.mark.parametrize("name", NAMES)
def test_links_run_left_to_right(drawn, name):
    """Data order: every link leaves a node whose box ends left of where its target's box starts."""
    box = {n["id"]: n["bounding"] for n in drawn["workflows"][name]["nodes"]}
    for link_id, src, _, dst, _, _ in saved(name)["links"]:
        assert box[src][0] + box[src][2] < box[dst][0], f"{name}: link {link_id} runs from node {src} back to node {dst}"


@pytest.mark.parametrize("name", NAMES)
def test_readable_at_fit_to_view(drawn, name):
    """Fitted to a 1600x900 window, the frontend draws full detail (text and widgets), not its
    low-quality level of detail, which it switches to when the zoom makes 14 px text too small."""
    w = drawn["workflows"][name]
    assert not w["low_quality"], f"{name}: fit-to-view zoom {w['fit_scale']:.2f} is too small to draw text"
    assert w["fit_scale"] >= 0.58


def test_template_browser_lists_every_workflow_with_a_thumbnail(drawn):
    """The pack's templates as the frontend's template browser loads them: the UI workflows
    (not workflows/api/), each served as the saved JSON, each with its JPEG thumbnail."""
    t = drawn["templates"]
    assert t["listed"] == NAMES
    for n in NAMES:
        status, _, body = t["files"][f"{n}.json"]
        assert status == 200 and json.loads(body) == saved(n)
        status, ctype, body = t["files"][f"{n}.jpg"]
        assert status == 200 and ctype == "image/jpeg" and body[:3] == b"\xff\xd8\xff", n
