"""``mvpseg push``: a prompt or student checkpoint as a model folder, uploaded to the Hugging Face Hub or written locally."""

from __future__ import annotations

import argparse
import sys

from .common import UsageError

__all__ = ["add_parser", "run"]


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "push", help="publish prompts or a student on the Hugging Face Hub (or write the same folder locally)",
        description="Write a model folder (the checkpoint in mvpseg's safetensors format, config.json and a model "
                    "card README.md) and upload it to the Hugging Face Hub model --repo (created when missing; log in "
                    "first with `hf auth login`), or write it to --to FOLDER without uploading. Either loads like a "
                    "Hub id: --prompts ORG/NAME, --student ORG/NAME, or the folder's path.",
    )
    parser.add_argument("source", metavar="RUN_OR_FILE",
                        help="a checkpoint (.safetensors from mvpseg train or transfer) or a run folder "
                             "(its student.safetensors, else its prompts.safetensors)")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--repo", metavar="ORG/NAME", help="the Hugging Face Hub model to upload to")
    target.add_argument("--to", metavar="FOLDER", help="write the folder here instead of uploading")
    parser.add_argument("--metrics", metavar="FILE", help="a metrics.json of mvpseg eval, shown in the model card")
    parser.add_argument("--license", default="mit", help="the licence in the model card's front matter (default: mit)")
    parser.add_argument("--private", action="store_true", help="create the Hub repository private")
    parser.add_argument("--message", help="the Hub commit message (default: 'Upload with mvpseg push')")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from .. import publish

    if args.to is not None:
        folder = publish.save_pretrained(args.source, args.to, metrics=args.metrics, licence=args.license)
        print(f"wrote {folder}: load it with --prompts/--student {folder}", file=sys.stderr)
        return 0
    try:
        url = publish.push_to_hub(args.source, args.repo, metrics=args.metrics, licence=args.license,
                                  private=args.private, message=args.message)
    except Exception as error:
        if not isinstance(error, OSError) and type(error).__module__.split(".")[0] not in {"huggingface_hub", "httpx2"}:
            raise
        raise UsageError(f"upload to {args.repo} failed: {str(error).splitlines()[0] if str(error) else type(error).__name__} "
                         f"(log in with `hf auth login`, check the network)") from error
    print(f"uploaded to {args.repo}: {url}", file=sys.stderr)
    return 0
