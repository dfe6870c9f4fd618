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

import hdm_comfy_harness as H  # registered by tests/conftest.py

FRONTEND = Path(__file__).resolve().parent / "frontend"
sys.path.insert(0, str(FRONTEND))
try:
    import comfy_frontend as F
    from frontend_server import PACK_DIR_NAME, FrontendServer
finally:
    sys.path.remove(str(FRONTEND))

NAMES = sorted(p.stem for p in F.WORKFLOWS.glob("*.json"))
VIEWPORT = (1600, 900)
LEGACY = Path(__file__).resolve().parent / "fixtures" / "legacy_workflows"
LEGACY_NAMES = sorted(p.stem for p in LEGACY.glob("*.json") if p.stem != "reference_outputs")
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
        srv.wait_ready_or_skip()
        templates = template_browser(srv.url)
        import urllib.request

        with urllib.request.urlopen(srv.url + "/object_info", timeout=60) as r:
            object_info = json.loads(r.read())
        files = {n: F.WORKFLOWS / f"{n}.json" for n in NAMES}
        files["squeezed_train"] = squeezed_train_workflow(tmp_path_factory.mktemp("frontend"))
        files.update({f"legacy/{n}": LEGACY / f"{n}.json" for n in LEGACY_NAMES})
        files.update(other_source_workflows(tmp_path_factory.mktemp("sources")))
        report = F.draw(srv.url, files, tools, viewport=VIEWPORT)
    finally:
        srv.stop()
    report["templates"] = templates
    report["dynamic"] = bool(H.dynamic_combos(object_info["HDMTrainLyCORIS"]["input"]))  # what this frontend was given
    report["object_info"] = object_info
    report["legacy_widgets"] = H.saved_layouts_js([])["LEGACY_WIDGETS"]  # (web/hdm_saved_layouts.js)
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
    # the grown training node covers the nodes saved right of it (moving those may make other overlaps too)
    assert [pair for pair in pairs if any(p.startswith(f"{train['id']} ") for p in pair)], pairs


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
        if n["type"] in drawn["legacy_widgets"] and drawn["dynamic"]:  # saved flat, shown and saved again in the DynamicCombo layout
            assert_widgets_show_saved_values(drawn, n, values, f"{name}: node {n['id']}")
            continue
        assert n["widgets_values"][: len(values)] == values, f"{name}: node {n['id']} ({n['title']})"


def assert_widgets_show_saved_values(drawn: dict, drawn_node: dict, values: list, where: str) -> None:
    """A node saved in a flat layout (web/hdm_saved_layouts.js LEGACY_WIDGETS) shows every saved
    value in the widget of that name; each DynamicCombo shows exactly its chosen option's widgets
    (``data_source.crop`` …); a saved value not shown belongs to an option not chosen, and a widget
    added since shows its default."""
    spec = drawn["object_info"][drawn_node["type"]]["input"]
    combos, defs = H.dynamic_combos(spec), H.input_definitions(spec)
    saved_values = dict(zip(drawn["legacy_widgets"][drawn_node["type"]], values))
    names = [w["name"] for w in drawn_node["widgets"]]
    shown = {w["name"].split(".")[-1]: w["value"] for w in drawn_node["widgets"]}
    for combo, options in combos.items():
        assert shown[combo] in options, (where, combo, shown[combo])
        own = [f"{combo}.{n}" for n, d in options[shown[combo]] if H.is_widget(d)]
        assert [n for n in names if n.startswith(f"{combo}.")] == own, (where, names)
    for name, value in shown.items():
        if name in combos:
            continue
        expected = saved_values[name] if name in saved_values else defs[name][1].get("default")  # added since: its default
        assert value == pytest.approx(expected) if isinstance(value, float) else value == expected, (where, name, value, expected)
    moved = {n for options in combos.values() for own in options.values() for n, _ in own}
    assert set(saved_values) - set(shown) <= moved, (where, set(saved_values) - set(shown))


def other_source_workflows(tmp: Path) -> dict[str, Path]:
    """The legacy training workflow saved with its other data sources: an IMAGE batch (EmptyImage,
    captions in the text box) and latents (EmptyLatentImage + HDM Text Encode's conditioning), both
    linked to the flat sockets ``images`` / ``latent`` + ``conditioning``."""
    out = {}
    for source in ("images", "latent"):
        ui = json.loads((LEGACY / "hdm_train_lycoris.json").read_text())
        nodes = {n["id"]: n for n in ui["nodes"]}
        train = next(n for n in ui["nodes"] if n["type"] == "HDMTrainLyCORIS")
        train["widgets_values"][0] = ""  # no folder
        links = [("images", 10, 0, "IMAGE")] if source == "images" else [("latent", 5, 0, "LATENT"), ("conditioning", 3, 0, "CONDITIONING")]
        if source == "images":
            train["widgets_values"][23] = "1girl, smile"
            ui["nodes"].append({"id": 10, "type": "EmptyImage", "pos": [40, 700], "size": [300, 130], "flags": {}, "order": 0, "mode": 0,
                                "inputs": [], "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": []}], "properties": {},
                                "widgets_values": [64, 64, 2, 0]})  # fmt: skip
            nodes[10] = ui["nodes"][-1]
        for i, (name, origin, slot, kind) in enumerate(links):
            link_id = ui["last_link_id"] + 1 + i
            target_slot = next(k for k, inp in enumerate(train["inputs"]) if inp["name"] == name)
            train["inputs"][target_slot]["link"] = link_id
            nodes[origin]["outputs"][slot].setdefault("links", []).append(link_id)
            ui["links"].append([link_id, origin, slot, train["id"], target_slot, kind])
        ui["last_link_id"] += len(links)
        ui["last_node_id"] = max(nodes)
        path = tmp / f"train_from_{source}.json"
        path.write_text(json.dumps(ui))
        out[f"sources/{source}"] = path
    return out


@pytest.mark.parametrize("source", ["images", "latent"])
def test_a_workflow_saved_with_another_data_source_keeps_its_links(drawn, source):
    """The flat ``images`` / ``latent`` + ``conditioning`` sockets, linked, become the data_source
    DynamicCombo's sockets on load, with their links: the frontend queues the same sources."""
    workflow = drawn["workflows"][f"sources/{source}"]
    train = next(n for n in workflow["nodes"] if n["type"] == "HDMTrainLyCORIS")
    queued = workflow["prompt"][str(train["id"])]["inputs"]
    expected = {"images": ["10", 0]} if source == "images" else {"latent": ["5", 0], "conditioning": ["3", 0]}
    if not drawn["dynamic"]:
        assert {k: queued[k] for k in expected} == expected and queued["dataset_folder"] == ""
        return
    assert queued["data_source"] == source
    assert {k: queued[f"data_source.{k}"] for k in expected} == expected
    assert not {"images", "latent", "conditioning", "dataset_folder", "data_source.dataset_folder"} & set(queued)
    if source == "images":
        assert queued["data_source.captions"] == "1girl, smile" and queued["data_source.resolution"] == 1024
    values = json.loads((LEGACY / "hdm_train_lycoris.json").read_text())
    values = next(n for n in values["nodes"] if n["type"] == "HDMTrainLyCORIS")["widgets_values"]
    values = ["", *values[1:23], "1girl, smile" if source == "images" else "", *values[24:]]
    assert_widgets_show_saved_values(drawn, train, values, f"sources/{source}")


@pytest.mark.parametrize("name", LEGACY_NAMES)
def test_legacy_ui_workflows_show_their_saved_values(drawn, name):
    """The UI workflows of the V1 release, loaded in the real frontend: every node shows the saved
    value in every widget, by name (HDM Train LyCORIS on a DynamicCombo host included)."""
    ui = json.loads((LEGACY / f"{name}.json").read_text())
    by_id = {n["id"]: n for n in ui["nodes"]}
    for n in drawn["workflows"][f"legacy/{name}"]["nodes"]:
        assert n["registered"], n["type"]
        values = by_id[n["id"]].get("widgets_values", [])
        if n["type"] in drawn["legacy_widgets"] and drawn["dynamic"]:
            assert_widgets_show_saved_values(drawn, n, values, f"{name}: node {n['id']}")
        else:
            assert n["widgets_values"][: len(values)] == values, f"{name}: node {n['id']} ({n['title']})"


@pytest.mark.parametrize("name", LEGACY_NAMES)
def test_legacy_ui_workflows_queue_the_inputs_of_their_api_twins(drawn, name):
    """What the frontend queues for a legacy UI workflow (app.graphToPrompt) is its API twin: the
    same values, the inputs that moved into DynamicCombos under the combos' names
    ("algorithm.rank", "data_source.dataset_folder") where the host has them; inputs added since at their defaults.
    tests/test_comfy_legacy_workflows.py runs both forms."""
    api = json.loads((LEGACY / "api" / f"{name}.json").read_text())
    queued = drawn["workflows"][f"legacy/{name}"]["prompt"]
    assert set(queued) == set(api)
    for node_id, node in api.items():
        spec = drawn["object_info"][node["class_type"]]["input"]
        want = H.nest_flat_inputs(spec, node["class_type"], node["inputs"])  # unchanged without DynamicCombos
        got = queued[node_id]["inputs"]
        optional = spec.get("optional", {})
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
