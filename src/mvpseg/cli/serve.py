"""``mvpseg serve``: a web page on this machine to segment any photo with any words (the ``web`` extra)."""

from __future__ import annotations

import argparse
import importlib.util
import os
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ..config import ModelSource
from .common import (
    UsageError,
    add_inference_flags,
    add_model_flags,
    inference_overrides,
    model_source,
    protocol_of,
)

if TYPE_CHECKING:
    from ..inference import Segmenter

__all__ = ["add_parser", "load_segmenter", "read_auth", "run"]

def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "serve", help="a web page on this machine: segment any photo with any words",
        description="Serve a web page to segment photos with any class names: upload or drop a photo, type the "
                    "classes (commas between classes, | between a class's synonyms) and see the overlay, each "
                    "class's share, GPR's class scores, each prompt's map, and download the label PNG. With no "
                    "model option it uses the tiny CLIP shipped in mvpseg with prompts trained on its synthetic "
                    "world. Needs the web extra: pip install \"mvpseg[web]\".",
    )
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default: 127.0.0.1, this machine only; 0.0.0.0 opens the page "
                             "to the network, to anyone who can reach this machine: see --auth-file)")
    parser.add_argument("--auth-file", metavar="FILE",
                        help="require a user name and password: FILE holds lines USER:PASSWORD (keep it private)")
    parser.add_argument("--auth", metavar="USER:PASSWORD",
                        help="require this user name and password (visible to other users of this machine in its "
                             "process list: prefer --auth-file)")
    parser.add_argument("--port", type=int, default=7860, help="port to listen on (default: 7860)")
    parser.add_argument("--max-upload-mb", type=float, default=20.0, metavar="MB",
                        help="largest photo accepted, in MiB (default: 20)")
    parser.add_argument("--examples", type=int, default=4, metavar="N",
                        help="scenes of the synthetic world offered as examples (default: 4)")
    add_model_flags(parser, skip=("onnx",), title="model (mvpseg.ModelSource; with no model option: the shipped "
                                                  "world prompts on the tiny CLIP mvpseg-tiny)")
    add_inference_flags(parser, protocol_benchmark=" (default: each setting as most of its benchmarks have it)")
    parser.set_defaults(run=run)


def _default_model(args: argparse.Namespace) -> bool:
    """Whether no model option was given: then the shipped tiny CLIP and world prompts are served."""
    return model_source(args) == ModelSource() and not args.clip_weights


def load_segmenter(args: argparse.Namespace) -> Segmenter:
    """The model the page segments with, loaded once: the model options' (as ``mvpseg segment`` reads them),
    or with none of them the tiny CLIP shipped in mvpseg with its world prompts. Either way at the scale the
    checkpoint was made for, unless inference flags say otherwise (as ``mvpseg segment`` does).

    Args:
        args: the parsed options of ``mvpseg serve``.

    Returns:
        The ready :class:`mvpseg.Segmenter`.
    """
    from ..inference import Segmenter

    if _default_model(args):
        from ..config import TINY_CLIP_NAME
        from ..world.prompts_asset import WORLD_PROMPTS

        return Segmenter.from_pretrained(clip=TINY_CLIP_NAME, pretrained="mvpseg", prompts=WORLD_PROMPTS,
                                         device=args.device, overrides=inference_overrides(args, protocol_of(args)))
    protocol = protocol_of(args)
    return Segmenter.from_source(model_source(args, protocol), device=args.device,
                                 overrides=inference_overrides(args, protocol))


def _check_port(host: str, port: int) -> None:
    """Fail at once, before loading any model, when the address cannot be listened on."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as error:
        raise UsageError(f"--host {host!r} is not an address of this machine ({error.strerror})") from error
    family, kind, protocol, _, address = infos[0]
    with socket.socket(family, kind, protocol) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as error:
            raise UsageError(f"cannot listen on {host}:{port} ({error.strerror}): choose another --port") from error


def read_auth(args: argparse.Namespace) -> list[tuple[str, str]]:
    """The (user, password) pairs of --auth and --auth-file (one line per bad entry, exit 2)."""
    entries: list[tuple[str, str]] = []
    lines = [("--auth", args.auth)] if args.auth else []
    if args.auth_file:
        try:
            text = Path(args.auth_file).read_text(encoding="utf-8")
        except OSError as error:
            raise UsageError(f"--auth-file {args.auth_file}: cannot read it ({error.strerror})") from error
        lines += [(f"--auth-file {args.auth_file}", line) for line in text.splitlines() if line.strip()]
        if not text.strip():
            raise UsageError(f"--auth-file {args.auth_file} is empty: write USER:PASSWORD lines")
    for source, line in lines:
        user, colon, password = line.strip().partition(":")
        if not colon or not user or not password:
            raise UsageError(f"{source}: write USER:PASSWORD (a user name, a colon, a password that is not empty)")
        entries.append((user, password))
    return entries


def web_installed() -> bool:
    """Whether the web extra (gradio) is installed."""
    return importlib.util.find_spec("gradio") is not None


def run(args: argparse.Namespace) -> int:
    if not web_installed():
        print('mvpseg: error: mvpseg serve needs the web extra: pip install "mvpseg[web]" '
              '(from a checkout: pip install -e ".[web]")', file=sys.stderr)
        return 1
    if not 0 < args.max_upload_mb <= 10_000:
        raise UsageError(f"--max-upload-mb must be between 0 and 10000, not {args.max_upload_mb}")
    if args.examples < 0:
        raise UsageError(f"--examples must be 0 or more, not {args.examples}")
    auth = read_auth(args)
    _check_port(args.host, args.port)
    segmenter = load_segmenter(args)
    from ..web import serve

    # The page turns analytics off itself; the environment variable covers anything gradio builds on its
    # own. Both it and the telemetry switch gradio sets are put back when serving ends.
    saved = {name: os.environ.get(name) for name in ("GRADIO_ANALYTICS_ENABLED", "HF_HUB_DISABLE_TELEMETRY")}
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    try:
        serve(segmenter, host=args.host, port=args.port, max_upload_mb=args.max_upload_mb, examples=args.examples,
              auth=auth)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    return 0
