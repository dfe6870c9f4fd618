"""``python -m hdm_core <command>``: HDM without ComfyUI.

Commands live in :data:`COMMANDS` (name → :class:`Command`). Extension points, kept small
on purpose:

* **a new subcommand** (e.g. ``python -m hdm_core tipo …``): add a :class:`Command` to
  :data:`COMMANDS` — its ``add_arguments(parser)`` and ``run(args) -> exit code``;
* **a prompt rewriter for ``generate``** (e.g. ``--tipo``): append a :class:`PromptHook`
  to :data:`PROMPT_HOOKS`. It adds its own options to the ``generate`` parser and gets
  every prompt before it is encoded; the PNG metadata records both the prompt as typed
  and the prompt actually used.
"""

from __future__ import annotations

import argparse
import random
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Protocol

from . import __version__
from .flow import SAMPLERS
from .tipo import cli as tipo_cli

EXIT_ERROR = 1  # missing/broken weights, runtime failures
EXIT_USAGE = 2  # bad arguments (argparse's own code)


@dataclass(frozen=True)
class Command:
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


class PromptHook(Protocol):
    """Rewrites a prompt before encoding (the ``--tipo`` extension point)."""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None: ...

    def __call__(self, prompt: str, params, args: argparse.Namespace) -> str: ...


PROMPT_HOOKS: list[PromptHook] = []


class UsageError(ValueError):
    """A bad command-line value; reported like argparse's own errors (exit code 2)."""


# --------------------------------------------------------------------------- argument types
def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got '{text}'") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got '{text}'") from None


def _seed(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got '{text}'") from None
    if v == -1:
        return -1
    if not 0 <= v < 2**64:
        raise argparse.ArgumentTypeError(f"must be in [0, 2^64) or -1 for a random seed, got {v}")
    return v


def _tile(text: str) -> int | str | None:
    if text in ("auto", "none"):
        return None if text == "none" else "auto"
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'auto', 'none' or a tile size in latent cells, got '{text}'") from None
    if v < 8:
        raise argparse.ArgumentTypeError(f"tile size must be >= 8 latent cells (64 pixels), got {v}")
    return v


# --------------------------------------------------------------------------- generate
def add_generate_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("prompt")
    g.add_argument("--prompt", "-p", help="what to draw (Danbooru tags and/or natural language)")
    g.add_argument("--prompt-file", type=Path, help="a text file with one prompt per line ('#' lines and blank lines are skipped)")
    g.add_argument("--negative", "-n", default="", help="negative prompt (default: empty)")

    g = p.add_argument_group("image")
    g.add_argument("--width", "-W", type=int, default=1024, help="pixels, a multiple of 8 (default 1024)")
    g.add_argument("--height", "-H", type=int, default=1024, help="pixels, a multiple of 8 (default 1024)")
    g.add_argument("--steps", type=_positive_int, default=32, help="sampling steps (default 32; 16-32 work well)")
    g.add_argument("--cfg", type=_float, default=3.0, help="classifier-free guidance scale (default 3.0)")
    g.add_argument("--sampler", choices=sorted(SAMPLERS), default="euler", help="default euler (the reference sampler)")
    g.add_argument("--shift", type=_float, default=1.0, help="timestep shift (default 1 = none, as HDM was used)")
    g.add_argument("--seed", type=_seed, default=-1, help="noise seed (default -1: random, printed and saved)")
    g.add_argument("--batch-size", type=_positive_int, default=1, help="images per sampling run (default 1)")
    g.add_argument("--batch-count", type=_positive_int, default=1, help="sampling runs per prompt; run i uses seed+i")

    g = p.add_argument_group("camera and guidance")
    g.add_argument("--camera-x", type=_float, default=0.0, help="camera x shift, added to the x positions (HDM UI's X Shift, -1..1)")
    g.add_argument("--camera-y", type=_float, default=0.0, help="camera y shift, added to the y positions (HDM UI's Y Shift, -1..1)")
    g.add_argument("--zoom", type=_float, default=1.0, help="> 1 zooms in, < 1 zooms out (default 1)")
    g.add_argument("--no-camera-map", action="store_true", help="no position map: the model's exact grid (as in HDM-ext)")
    g.add_argument("--tread-gamma", type=_float, default=0.0, help="TREAD drop rate of the positive pass (default 0 = off)")
    g.add_argument("--tread-gamma-uncond", type=_float, default=0.5, help="TREAD drop rate of the negative pass (default 0.5)")

    g = p.add_argument_group("weights")
    g.add_argument("--ckpt", help="HDM checkpoint (.safetensors with the XUT and the VAE)")
    g.add_argument("--te", help="Qwen3-0.6B text encoder: a folder (model.safetensors + config.json) or a .safetensors file")
    g.add_argument("--vae", help="a separate VAE file (default: the checkpoint's own)")
    g.add_argument("--models-dir", default="models", help="where to look for (and --download into) weights (default ./models)")
    g.add_argument("--comfyui", help="a ComfyUI folder whose models/ to search (default: $COMFYUI_PATH)")
    g.add_argument("--download", action="store_true", help="fetch missing weights from the Hugging Face hub (needs internet)")

    g = p.add_argument_group("output and runtime")
    g.add_argument("--out", "-o", default="hdm.png", help="output PNG; several images get -0000, -0001 … (default hdm.png)")
    g.add_argument("--device", default="auto", help="auto (default: cuda if available), cpu, cuda, cuda:1, mps")
    g.add_argument("--dtype", choices=["auto", "fp32", "fp16", "bf16"], default="auto", help="model precision (auto: fp16 on GPU; bf16 on CPUs with native bf16 (AMX/AVX512-BF16), else fp32)")
    g.add_argument("--tile", type=_tile, default="auto", help="VAE tiled decode: auto (images above 4 MP), none, or a tile size in latent cells")
    g.add_argument("--compile", action="store_true", help="torch.compile the transformer blocks (GPU: faster steps after a one-time compile)")
    g.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    for hook in PROMPT_HOOKS:
        hook.add_arguments(p)


def read_prompts(args: argparse.Namespace) -> list[str]:
    prompts = []
    if args.prompt is not None:
        prompts.append(args.prompt)
    if args.prompt_file is not None:
        path = Path(args.prompt_file).expanduser()
        if not path.is_file():
            raise UsageError(f"--prompt-file {path}: no such file")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise UsageError(f"--prompt-file {path}: not a UTF-8 text file") from None
        lines = [ln.strip() for ln in text.splitlines()]
        from_file = [ln for ln in lines if ln and not ln.startswith("#")]
        if not from_file:
            raise UsageError(f"--prompt-file {path}: holds no prompts (one per line; '#' lines are comments)")
        prompts += from_file
    if not prompts:
        raise UsageError("give a prompt: --prompt 'TEXT' or --prompt-file FILE")
    return prompts


def _resolve_device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"--device {name}: not a device name (use cpu, cuda, cuda:1, mps or auto)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: this PyTorch build sees no CUDA GPU; use --device cpu")
    return device


def _output_paths(out: str, total: int) -> list[Path]:
    path = Path(out).expanduser()
    if path.suffix.lower() != ".png":
        raise UsageError(f"--out {out}: the output must be a .png file (metadata is stored in PNG text chunks)")
    if total == 1:
        return [path]
    return [path.with_name(f"{path.stem}-{i:04d}{path.suffix}") for i in range(total)]


def build_params(args: argparse.Namespace, prompt: str, seed: int):
    from .pipeline import GenerationParams

    return GenerationParams(
        prompt=prompt, negative=args.negative, width=args.width, height=args.height, steps=args.steps,
        cfg=args.cfg, sampler=args.sampler, seed=seed, batch_size=args.batch_size, shift=args.shift,
        camera_x=args.camera_x, camera_y=args.camera_y, zoom=args.zoom, camera_map=not args.no_camera_map,
        tread_gamma=args.tread_gamma, tread_gamma_uncond=args.tread_gamma_uncond,
    ).validate()


def run_generate(args: argparse.Namespace) -> int:
    import torch

    from .images import save_png
    from .pipeline import HDMPipeline, auto_tile
    from .weights import resolve_weights

    prompts = read_prompts(args)
    base_seed = args.seed if args.seed != -1 else random.randrange(2**32)
    try:
        build_params(args, prompts[0], base_seed)  # fail on bad values before loading anything
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    device = _resolve_device(args.device)
    dtype = {"auto": None, "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    total = len(prompts) * args.batch_count * args.batch_size
    outputs = _output_paths(args.out, total)

    paths = resolve_weights(
        args.ckpt, args.te, args.vae, models_dir=args.models_dir, comfyui=args.comfyui, download=args.download
    )
    log = (lambda *a: None) if args.quiet else (lambda *a: print(*a, file=sys.stderr))
    log(f"loading {paths.ckpt.name} + text encoder {paths.te.name} on {device} …")
    pipe = HDMPipeline.from_files(paths.ckpt, paths.te, paths.vae, device=device, dtype=dtype)
    if args.compile:
        pipe.xut.compile_blocks()

    # Every prompt is expanded and encoded first, then the text encoder is freed: it is the
    # largest model in float32, and sampling + decoding a 1024² image need the room.
    jobs = []
    for prompt in prompts:
        used = prompt
        for hook in PROMPT_HOOKS:
            used = hook(used, build_params(args, used, base_seed), args)
        jobs.append((prompt, used, pipe.encode_contexts(build_params(args, used, base_seed))))
    pipe.release_text_encoder()

    saved = []
    n_runs = len(prompts) * args.batch_count
    run = 0
    for prompt, used, contexts in jobs:
        for k in range(args.batch_count):
            run += 1
            seed = (base_seed + k) % 2**64
            params = build_params(args, used, seed)
            if used != prompt:
                params = replace(params, extra={"prompt_original": prompt})
            bar = _progress(args.steps, f"[{run}/{n_runs}] seed {seed}", args.quiet)
            latents = pipe.sample(params, callback=lambda i, t, x, x0: bar.update(1), contexts=contexts)
            bar.close()
            tile = auto_tile(args.width, args.height) if args.tile == "auto" else args.tile
            images = pipe.decode(latents, tile=tile)
            for j, image in enumerate(images):
                meta = params.to_metadata()
                meta.update(
                    batch_index=j, model=paths.ckpt.name, text_encoder=paths.te.name,
                    vae=paths.vae.name if paths.vae else paths.ckpt.name,
                    device=str(device), dtype=str(pipe.dtype).replace("torch.", ""), hdm_core=__version__,
                )
                out = save_png(image, outputs[len(saved)], meta)
                saved.append(out)
                print(out)
    log(f"saved {len(saved)} image(s)")
    return 0


def _progress(total: int, desc: str, quiet: bool):
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm comes with transformers
        tqdm = None
    if tqdm is not None:
        return tqdm(total=total, desc=desc, file=sys.stderr, disable=quiet, unit="step")

    class _Plain:  # a minimal fallback bar
        n = 0

        def update(self, k: int) -> None:
            self.n += k
            if not quiet:
                print(f"\r{desc}: {self.n}/{total}", end="", file=sys.stderr, flush=True)

        def close(self) -> None:
            if not quiet:
                print(file=sys.stderr)

    return _Plain()


#: Subcommands of ``python -m hdm_core``. Add new ones here.
COMMANDS: dict[str, Command] = {
    "generate": Command(
        help="text-to-image: prompt in, PNG (with every parameter in its metadata) out",
        add_arguments=add_generate_arguments,
        run=run_generate,
    ),
    "tipo": Command(
        help="expand a prompt with TIPO into HDM's layout (prints the prompt)",
        add_arguments=tipo_cli.configure_parser,
        run=tipo_cli.run,
    ),
}
PROMPT_HOOKS.append(tipo_cli.TipoPromptHook())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m hdm_core",
        description="HDM (Home-made Diffusion Model) without ComfyUI.",
        epilog="Weights: ./models/hdm-xut-340M-1024px-note.safetensors and ./models/Qwen3-0.6B/, or pass --download.",
    )
    parser.add_argument("--version", action="version", version=f"hdm_core {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, cmd in COMMANDS.items():
        p = sub.add_parser(name, help=cmd.help, description=cmd.help)
        cmd.add_arguments(p)
        p.set_defaults(_run=cmd.run, _parser=p)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code (0 ok, 1 runtime/weights error, 2 bad arguments)."""
    from .checkpoint import CheckpointError
    from .tipo.errors import TipoError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args._run(args)
    except UsageError as exc:
        args._parser.print_usage(sys.stderr)
        print(f"{parser.prog} {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (CheckpointError, ValueError, TipoError) as exc:  # missing/broken weights, TIPO failures and the like
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
