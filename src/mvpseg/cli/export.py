"""``mvpseg export``: MVP-SEG or an MVP-SEG+ student as an ONNX file (fixed crop size, dynamic batch)."""

from __future__ import annotations

import argparse
import sys

from ..config import InferenceConfig
from .common import UsageError, add_model_flags, model_source
from .flags import add_config_flags, overrides

#: The inference settings a file records.
_SCALE_FIELDS = InferenceConfig.SCALE_FIELDS

__all__ = ["add_parser", "run"]


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "export", help="export MVP-SEG or a student to ONNX (run it with segment --onnx or onnxruntime)",
        description="Export MVP-SEG (dense CLIP features, the K prompt maps, fusion and GPR) or an MVP-SEG+ student "
                    "to ONNX, for any batch size and any window size in whole feature cells. The file records the "
                    "inference settings the checkpoint was made for (the flags below override them), and segment "
                    "--onnx uses them as segment --prompts does. Inputs: images (B, 3, H, W) "
                    "normalised with the CLIP's mean and std, and text (P, C, D) class embeddings (any classes; "
                    "mvpseg computes them) unless --classes bakes them in. Outputs: prompt_maps (B, P, C, h, w), "
                    "fused_logits (B, C, h, w) and, with GPR, presence_logits (B, C). Resizing, windows and "
                    "upsampling stay in mvpseg: `mvpseg segment --onnx FILE` runs it. Needs the export extra "
                    "(pip install 'mvpseg[export]').",
    )
    parser.add_argument("--out", required=True, metavar="FILE", help="the .onnx file to write")
    parser.add_argument("--classes", help='bake these classes in (as segment\'s --classes, e.g. "cat,dog|puppy"); '
                                          "default: class embeddings are an input (open vocabulary)")
    parser.add_argument("--background", metavar="NAME", help="with --classes: the background class (class 0)")
    parser.add_argument("--exporter", choices=("dynamo", "torchscript"), default="dynamo",
                        help="torch's exporter: dynamo (torch.export, the default) or the older TorchScript one")
    add_model_flags(parser, skip=("onnx",))
    add_config_flags(parser, InferenceConfig, skip=[f for f in InferenceConfig.__dataclass_fields__ if f not in _SCALE_FIELDS],
                     title="inference settings recorded in the file (default: the checkpoint's)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..export import OnnxError, export_onnx, require_onnx

    try:
        require_onnx("mvpseg export")
    except OnnxError as error:
        raise UsageError(str(error)) from error
    from ..build import from_pretrained
    from ..vocabulary import Vocabulary, parse_classes

    source = model_source(args)
    typed = {name: value for name, value in overrides(args).items() if name in _SCALE_FIELDS}
    names = None
    if args.classes is not None:
        background = parse_classes(args.background)[0] if args.background else None
        try:
            names = list(Vocabulary.of(parse_classes(args.classes), background, warn=False).names)
        except ValueError as error:
            raise UsageError(str(error)) from error
    elif args.background:
        raise UsageError("--background bakes a class in: give it with --classes")
    model = from_pretrained(source.clip, source.pretrained, source.prompts, device="cpu", student=source.student,
                            vit_mode=source.vit_mode)
    path = export_onnx(model, args.out, classes=names, source=source.student or source.prompts,
                       dynamo=args.exporter == "dynamo",
                       inference=typed)
    from ..export import read_onnx_metadata

    settings = read_onnx_metadata(path)["inference"]
    what = f"{len(names)} classes baked in" if names else "class embeddings as an input"
    scale = ", ".join(f"{name} {value}" for name, value in settings.items() if value is not None)
    print(f"wrote {path} ({what}; inference settings: {scale})", file=sys.stderr)
    return 0
