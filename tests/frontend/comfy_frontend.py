"""The shipped UI workflows in the real ComfyUI frontend: node boxes, layout and screenshots.

ComfyUI serves its frontend (the pip package ``comfyui_frontend_package``); headless Chromium
(Debian's ``chromium``) driven by ``playwright-core`` (npm, installed into the git-ignored
``tests/frontend/node_modules``) loads each workflow with ``app.loadGraphData`` and reports every
node box as LiteGraph draws it (``draw_workflows.mjs``). Used by
``tests/test_workflows_frontend.py`` (no overlaps, data order, readable zoom) and, as a script, to lay out the
shipped workflows and to take the README screenshots::

    python tests/frontend/comfy_frontend.py layout        # rewrite pos/size in workflows/*.json
    python tests/frontend/comfy_frontend.py screenshots   # docs/workflows/<name>.png + workflows/<name>.jpg

Why a layout tool: node sizes saved by hand are smaller than what the frontend draws (it grows a
node to fit its widgets), so hand-placed nodes end up under each other. The tool places nodes in
columns by data order (a node's column is one more than its deepest input's), stacks each
column with gaps that include the title bar, and saves the sizes the frontend computes. Run
``layout`` again whenever a node's widgets change (the test then says which size differs).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
WORKFLOWS = REPO / "workflows"
SCRIPT = HERE / "draw_workflows.mjs"

COLUMN_GAP = 50  # px between columns
ROW_GAP = 30  # px between a node's bottom and the next node's title bar


def playwright_dir() -> Path | None:
    """Where ``node_modules/playwright-core`` is: ``HDM_PLAYWRIGHT_DIR`` or tests/frontend."""
    for d in (os.environ.get("HDM_PLAYWRIGHT_DIR"), str(HERE)):
        if d and (Path(d) / "node_modules" / "playwright-core" / "package.json").is_file():
            return Path(d)
    return None


def find_tools() -> tuple[dict | None, str]:
    """``({"chromium", "node", "playwright"}, "")`` or ``(None, what is missing and how to install it)``."""
    chromium = os.environ.get("HDM_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium and not Path(chromium).is_file():
        chromium = None
    node = shutil.which("node")
    pw = playwright_dir()
    missing = []
    if not chromium:
        missing.append("Chromium (apt-get install chromium, or set HDM_CHROMIUM)")
    if not node:
        missing.append("Node.js (apt-get install nodejs)")
    if pw is None:
        missing.append("playwright-core (npm install --prefix tests/frontend playwright-core@1, or set HDM_PLAYWRIGHT_DIR)")
    if missing:
        return None, "missing " + "; ".join(missing)
    return {"chromium": chromium, "node": node, "playwright": str(pw)}, ""


def draw(url: str, workflows: dict[str, Path], tools: dict, screenshots: Path | None = None,
         viewport: tuple[int, int] = (1600, 900), timeout: float = 300) -> dict:
    """Run draw_workflows.mjs against a running ComfyUI; returns its JSON report."""
    with tempfile.TemporaryDirectory(prefix="hdm-frontend-") as tmp:
        req = Path(tmp) / "request.json"
        req.write_text(json.dumps({
            "url": url, "chromium": tools["chromium"], "viewport": list(viewport),
            "workflows": {k: str(v) for k, v in workflows.items()},
            "screenshots": str(screenshots) if screenshots else None,
        }))
        env = dict(os.environ, HDM_PLAYWRIGHT_DIR=tools["playwright"])
        proc = subprocess.run([tools["node"], str(SCRIPT), str(req)], capture_output=True, text=True, timeout=timeout, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"draw_workflows.mjs failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- geometry
def overlaps(a: list[float], b: list[float]) -> bool:
    """Whether two [x, y, w, h] boxes share any area (touching edges do not count)."""
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]


def group_problems(groups: list[dict], nodes: list[dict]) -> list[str]:
    """What is wrong with drawn groups: one that holds no node whole, cuts through a node's box,
    or overlaps another group."""
    out = []
    for i, g in enumerate(groups):
        gx, gy, gw, gh = g["bounding"]
        inside = [n for n in nodes if gx <= n["bounding"][0] and gy <= n["bounding"][1]
                  and n["bounding"][0] + n["bounding"][2] <= gx + gw and n["bounding"][1] + n["bounding"][3] <= gy + gh]
        if not inside:
            out.append(f"group '{g['title']}' holds no node")
        for n in nodes:
            if n not in inside and overlaps(g["bounding"], n["bounding"]):
                out.append(f"group '{g['title']}' cuts through node {n['id']} {n['title']}")
        for h in groups[i + 1:]:
            if overlaps(g["bounding"], h["bounding"]):
                out.append(f"groups '{g['title']}' and '{h['title']}' overlap")
    return out


def overlapping_pairs(nodes: list[dict]) -> list[tuple[str, str]]:
    """Pairs of drawn node boxes (title bars included) that overlap, as readable labels."""
    out = []
    for i, a in enumerate(nodes):
        for b in nodes[i + 1:]:
            if overlaps(a["bounding"], b["bounding"]):
                out.append((f"{a['id']} {a['title']}", f"{b['id']} {b['title']}"))
    return out


def columns(ui: dict) -> dict[int, int]:
    """Data order: a node's column is 0 without inputs, else one more than its deepest source."""
    sources: dict[int, set[int]] = {n["id"]: set() for n in ui["nodes"]}
    for _, src, _, dst, _, _ in ui["links"]:
        sources[dst].add(src)
    col: dict[int, int] = {}

    def depth(nid: int, seen=()) -> int:
        if nid not in col:
            assert nid not in seen, f"cycle through node {nid}"
            col[nid] = 1 + max((depth(s, seen + (nid,)) for s in sources[nid]), default=-1)
        return col[nid]

    for nid in sources:
        depth(nid)
    return col


#: Sizes to give a node type when they exceed what the frontend computes as its minimum:
#: room for file names in combos, prompt text, and image previews. Others get their minimum.
PREFERRED_SIZE = {
    "HDMCheckpointLoader": (340, 0), "HDMTextEncoderLoader": (340, 0), "LoraLoaderModelOnly": (340, 0),
    "HDMTextEncode": (380, 150), "CLIPTextEncode": (380, 150), "HDMTipoPrompt": (420, 0),
    "LoadImage": (360, 360), "SaveImage": (360, 380), "PreviewImage": (360, 380),
}

TITLE_MARGIN = 12  # px: the frontend gives a title the node's width less two title heights, then shortens it with "..."
MAX_TITLE_WIDTH = 480  # px: longer titles are shortened by the frontend rather than widening the node further

#: Groups around the part of a workflow a first-time user should read as one step, with what to
#: do there as the title; ``hdm_nodes`` lists the member node ids (layout fits the bounding box
#: around them and drops the key).
GROUP_TITLE = 34  # px: LiteGraph's group title bar (font 24 px x 1.4)
GROUP_PAD = 10
BADGE = 16  # px: the frontend's node-source badge ("hdm-nodes") drawn above a node's title bar
GROUPS = {
    "hdm_hires_fix": [
        {"title": "Second pass (x1.5, denoise 0.5)", "color": "#3f789e", "hdm_nodes": [6, 7]},
    ],
    "hdm_regional_prompts": [
        {"title": "One prompt per area: x, y, width, height in px", "color": "#8A8", "hdm_nodes": [4, 5, 6, 7, 8]},
    ],
    "hdm_inpaint": [
        {"title": "Mask: right-click > Open in MaskEditor", "color": "#a1309b", "hdm_nodes": [4]},
    ],
}


def layout(ui: dict, drawn: list[dict], title_height: float, name: str = "", origin=(40.0, 100.0)) -> dict:
    """New ``pos``/``size`` for every node: columns in data order, each stacked top-down.

    Sizes: the frontend's computed minimum, raised to ``PREFERRED_SIZE`` for the node's type.
    Within a column, nodes follow the height of what feeds them (then their id) and sit level
    with it when there is room, so links run straight; a column starts where the widest node
    of the previous one ends. ``GROUPS[name]`` replaces the file's groups, fitted around their
    nodes with room for the group's title bar.
    """
    ui = json.loads(json.dumps(ui))
    if name in GROUPS:
        ui["groups"] = [dict(g, font_size=24, flags={}) for g in GROUPS[name]]
    grouped = {i for g in ui.get("groups", []) if "hdm_nodes" in g for i in g["hdm_nodes"]}
    box = {int(d["id"]): d for d in drawn}
    nodes = {n["id"]: n for n in ui["nodes"]}
    col = columns(ui)
    size = {}
    for nid, node in nodes.items():
        pw, ph = PREFERRED_SIZE.get(node["type"], (0, 0))
        mw, mh = box[nid]["min_size"]
        mw = max(mw, min(box[nid].get("title_width", 0) + 2 * title_height + TITLE_MARGIN, MAX_TITLE_WIDTH))  # the whole title, within reason
        size[nid] = [math.ceil(max(mw, pw)), math.ceil(max(mh, ph))]
    sources: dict[int, list[int]] = {nid: [] for nid in col}
    for _, src, _, dst, _, _ in ui["links"]:
        sources[dst].append(src)
    top: dict[int, float] = {}
    x = origin[0]
    for c in range(max(col.values()) + 1):
        ids = sorted((nid for nid in col if col[nid] == c), key=lambda nid: (min((top[s] for s in sources[nid]), default=0), nid))
        y = origin[1]
        prev_grouped = False
        for nid in ids:
            if nid in grouped and not prev_grouped and y > origin[1]:
                y += GROUP_TITLE + GROUP_PAD + BADGE  # room for the group's title bar above it
            elif prev_grouped and nid not in grouped:
                y += GROUP_PAD
            y = max(y, min((top[s] for s in sources[nid]), default=y))  # level with what feeds it, if there is room
            prev_grouped = nid in grouped
            top[nid] = y
            nodes[nid]["pos"] = [round(x), round(y + title_height)]
            nodes[nid]["size"] = size[nid]
            y += title_height + size[nid][1] + ROW_GAP
        x += max(size[nid][0] for nid in ids) + COLUMN_GAP
    for group in ui.get("groups", []):
        if "hdm_nodes" not in group:
            continue
        members = [nodes[i] for i in group.pop("hdm_nodes")]
        x0 = min(n["pos"][0] for n in members) - GROUP_PAD
        y0 = min(n["pos"][1] - title_height for n in members) - GROUP_PAD - BADGE - GROUP_TITLE
        x1 = max(n["pos"][0] + n["size"][0] for n in members) + GROUP_PAD
        y1 = max(n["pos"][1] + n["size"][1] for n in members) + GROUP_PAD
        group["bounding"] = [round(x0), round(y0), round(x1 - x0), round(y1 - y0)]
    return ui


def save_screenshot(raw: Path, png: Path, thumbnail: Path) -> None:
    """The README picture (a 256-colour PNG: the UI's flat colours keep it small) and the
    template browser's thumbnail (ComfyUI's frontend shows ``workflows/<name>.jpg`` for a pack's template)."""
    from PIL import Image

    img = Image.open(raw).convert("RGB")
    tmp = png.with_suffix(".png.tmp")
    img.quantize(256, method=Image.Quantize.MEDIANCUT).save(tmp, format="PNG", optimize=True)
    tmp.replace(png)
    thumb = img.resize((512, round(512 * img.height / img.width)), Image.Resampling.LANCZOS)
    tmp = thumbnail.with_suffix(".jpg.tmp")
    thumb.save(tmp, format="JPEG", quality=85, optimize=True)
    tmp.replace(thumbnail)


def main(argv: list[str]) -> int:
    """``layout`` or ``screenshots`` over every shipped UI workflow (starts its own ComfyUI server)."""
    if not argv or argv[0] not in ("layout", "screenshots"):
        print(__doc__)
        return 2
    tools, why = find_tools()
    if tools is None:
        print(why, file=sys.stderr)
        return 1
    sys.path.insert(0, str(HERE))
    from frontend_server import start_server  # noqa: E402  (tests/frontend/frontend_server.py)

    names = sorted(p.stem for p in WORKFLOWS.glob("*.json"))
    with start_server() as srv:
        if argv[0] == "layout":
            report = draw(srv.url, {n: WORKFLOWS / f"{n}.json" for n in names}, tools)
            for n in names:
                path = WORKFLOWS / f"{n}.json"
                ui = layout(json.loads(path.read_text()), report["workflows"][n]["nodes"], report["title_height"], name=n)
                tmp = path.with_suffix(".json.tmp")
                tmp.write_text(json.dumps(ui, indent=2, ensure_ascii=False) + "\n")
                tmp.replace(path)
                print("laid out", path.relative_to(REPO))
        else:
            shots = REPO / "docs" / "workflows"
            shots.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(prefix="hdm-shots-") as tmp:
                report = draw(srv.url, {n: WORKFLOWS / f"{n}.json" for n in names}, tools, screenshots=Path(tmp))
                for n in names:
                    save_screenshot(Path(tmp) / f"{n}.png", shots / f"{n}.png", WORKFLOWS / f"{n}.jpg")
                    print(n, "fit scale", round(report["workflows"][n]["fit_scale"], 3), "->", (shots / f"{n}.png").relative_to(REPO))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
