"""``tipo`` command: expand (or just lay out) a prompt from the shell.

``add_parser(subparsers)`` adds the subcommand to a bigger CLI (``python -m hdm_core tipo``);
``main()`` runs it on its own (``python -m hdm_core.tipo``). The prompt goes to stdout (JSON
with ``--json``), errors to stderr with exit code 2.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
from collections.abc import Sequence
from pathlib import Path

from .errors import TipoError
from .prompt import HDM_TEMPLATE
from .loader import load_tipo, resolve_model
from .runner import LENGTHS, TipoSettings, expand, format_only

MODELS_ENV = "HDM_TIPO_MODELS"


def default_model_dirs() -> list[Path]:
    """``$HDM_TIPO_MODELS`` (os.pathsep-separated), else ``./models/tipo``."""
    env = os.environ.get(MODELS_ENV, "")
    return [Path(p).expanduser() for p in env.split(os.pathsep) if p] or [Path("models") / "tipo"]


def configure_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    d = TipoSettings()
    parser.add_argument("--tags", default="", help="danbooru tags, comma-separated; (tag:1.2) weights are kept, brackets in names are literal")
    parser.add_argument("--nl", default="", help="natural-language prompt")
    parser.add_argument("--ban", default="", help="comma-separated tags TIPO must not add (whole tags, * wildcards)")
    parser.add_argument("--model", default="", help="TIPO model: a name in the model folders or a path to a TIPO folder / .gguf file (default: the only model found)")
    parser.add_argument("--models-dir", action="append", type=Path, default=None,
                        help=f"folder with TIPO models (repeatable; default ${MODELS_ENV} or ./models/tipo)")  # fmt: skip
    parser.add_argument("--template", default=HDM_TEMPLATE, help="output layout with <|special|>, <|characters|>, <|copyrights|>, <|artist|>, <|general|>, <|extended|>, <|generated|>, <|quality|>, <|rating|>, <|meta|> (default: HDM's)")
    parser.add_argument("--tag-length", choices=LENGTHS, default=d.tag_length, help="how many tags TIPO writes (default %(default)s)")
    parser.add_argument("--nl-length", choices=LENGTHS, default=d.nl_length, help="how much natural language (default %(default)s)")
    parser.add_argument("--width", type=int, default=d.width, help="image width, for TIPO's aspect ratio (default %(default)s)")
    parser.add_argument("--height", type=int, default=d.height, help="image height (default %(default)s)")
    parser.add_argument("--seed", type=int, default=None, help="same seed, same prompt (default: random, printed to stderr)")
    parser.add_argument("--temperature", type=float, default=d.temperature, help="default %(default)s")
    parser.add_argument("--top-p", type=float, default=d.top_p, help="default %(default)s")
    parser.add_argument("--top-k", type=int, default=d.top_k, help="default %(default)s")
    parser.add_argument("--min-p", type=float, default=d.min_p, help="default %(default)s")
    parser.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens, help="per pass (default %(default)s)")
    parser.add_argument("--max-retry", type=int, default=d.max_retry, help="extra passes when a length target is missed (default %(default)s)")
    parser.add_argument("--allow-short", action="store_true", help="accept output shorter than the length target instead of failing")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default %(default)s)")
    parser.add_argument("--dtype", default="auto", choices=("auto", "fp32", "bf16", "fp16"), help="auto: fp32 on CPU, fp16 on GPU")
    parser.add_argument("--no-escape", action="store_true", help="write brackets plain instead of ComfyUI's \\( \\)")
    parser.add_argument("--format-only", action="store_true", help="no model: only sort the tags into the layout and escape")
    parser.add_argument("--json", action="store_true", help="print prompt, unescaped prompt, category map and seed as JSON")
    parser.set_defaults(func=run)
    return parser


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``tipo`` subcommand to an ``argparse`` subparsers object."""
    parser = subparsers.add_parser("tipo", help="expand a prompt with TIPO into HDM's layout", description=__doc__.splitlines()[0])
    return configure_parser(parser)


def run(args: argparse.Namespace) -> int:
    """Run the parsed ``tipo`` command; returns the exit code."""
    try:
        escape = not args.no_escape
        if args.format_only:
            result = format_only(args.tags, args.nl, template=args.template, escape=escape)
        else:
            dirs = args.models_dir or default_model_dirs()
            seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**32)
            settings = TipoSettings(
                tag_length=args.tag_length,
                nl_length=args.nl_length,
                temperature=args.temperature,
                top_p=args.top_p,
                top_k=args.top_k,
                min_p=args.min_p,
                max_new_tokens=args.max_new_tokens,
                max_retry=args.max_retry,
                width=args.width,
                height=args.height,
                ban_tags=args.ban,
                require_length=not args.allow_short,
            )
            backend = load_tipo(resolve_model(args.model, dirs), device=args.device, dtype=args.dtype)
            if args.seed is None:
                print(f"seed: {seed}", file=sys.stderr)
            result = expand(backend, args.tags, args.nl, seed=seed, settings=settings, template=args.template, escape=escape)
    except TipoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        data = {"prompt": result.prompt, "prompt_unescaped": result.prompt_unescaped, "categories": result.categories, "seed": result.seed}
        print(json.dumps(data, ensure_ascii=False, indent=2))
    else:
        print(result.prompt)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = configure_parser(argparse.ArgumentParser(prog="python -m hdm_core.tipo", description=__doc__.splitlines()[0]))
    args = parser.parse_args(argv)
    return args.func(args)


class TipoPromptHook:
    """``generate --tipo MODEL``: expand each prompt with TIPO before it is encoded.

    The generate prompt is read as TIPO's tag input (``--tipo-nl`` adds natural language);
    TIPO's seed is the image seed, so a seed reproduces prompt and image together. The
    headless encoder reads text literally (no prompt weights), so brackets stay plain.
    """

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        d = TipoSettings()
        g = parser.add_argument_group("TIPO prompt expansion (optional)")
        g.add_argument("--tipo", metavar="MODEL", default=None,
                       help=f"expand the prompt with this TIPO model (a name in ${MODELS_ENV} or ./models/tipo, "
                            "or a path to a TIPO folder / .gguf file); the prompt is read as danbooru tags")  # fmt: skip
        g.add_argument("--tipo-nl", default="", help="natural-language part of the TIPO input")
        g.add_argument("--tipo-tag-length", choices=LENGTHS, default=d.tag_length, help="default %(default)s")
        g.add_argument("--tipo-nl-length", choices=LENGTHS, default=d.nl_length, help="default %(default)s")
        g.add_argument("--tipo-ban", default="", help="comma-separated tags TIPO must not add")
        g.add_argument("--tipo-device", default="auto", help="device for TIPO (default %(default)s)")

    def __call__(self, prompt: str, params, args: argparse.Namespace) -> str:
        if not args.tipo:
            return prompt
        from .runner import expand_prompt

        settings = TipoSettings(
            tag_length=args.tipo_tag_length,
            nl_length=args.tipo_nl_length,
            width=params.width,
            height=params.height,
            ban_tags=args.tipo_ban,
        )
        return expand_prompt(
            prompt, args.tipo_nl, model=args.tipo, seed=params.seed % 2**32, model_dirs=default_model_dirs(),
            device=args.tipo_device, settings=settings, escape=False,
        )
