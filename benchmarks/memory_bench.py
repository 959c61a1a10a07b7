"""Peak memory of ``Segmenter.predict``, each case in a fresh process.

On the CPU the figure is the process's peak resident set (``VmHWM``: CLIP, MVP-SEG, the image and
every temporary); on CUDA also ``torch.cuda.max_memory_allocated``. The parent writes the
calibrated BatchNorm statistics and the vocabulary's text embeddings to a file, so that the child
builds the very same model without running the text tower (``--encode-text`` runs it in the child,
and its memory then counts too).

    python benchmarks/memory_bench.py --clip RN50 --side 4096 --classes 171 [--encode-text]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

HERE = Path(__file__).resolve().parent


def status_mib(field: str) -> float:
    """A memory field of /proc/self/status (VmRSS, VmHWM) in MiB; NaN where there is no /proc."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux: write 5 to /proc/self/clear_refs); False if not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def save_inputs(folder: Path, clip: Any, text: torch.Tensor) -> Path:
    """The parent's model state a child needs: BatchNorm statistics of the tower and text embeddings."""
    tensors = {f"visual.{name}": buffer.detach().cpu().contiguous()
               for name, buffer in clip.model.visual.named_buffers()}
    tensors["text"] = text.detach().cpu().contiguous()
    path = folder / f"inputs-{clip.name}.safetensors"
    save_file(tensors, str(path))
    return path


def child(args: argparse.Namespace) -> dict[str, Any]:
    """Build the model, segment one ``side`` x ``side`` scene, report memory."""
    if args.threads:
        torch.set_num_threads(args.threads)
    sys.path.insert(0, str(HERE))
    from common import build_model, scene, vocabulary

    import mvpseg

    device = torch.device(args.device)
    result: dict[str, Any] = {"rss_after_imports_mib": status_mib("VmRSS")}
    torch.manual_seed(0)
    clip = mvpseg.load_clip(args.clip, None, device=device)
    inputs = load_file(args.inputs) if args.inputs else {}
    buffers = {name[len("visual."):]: value for name, value in inputs.items() if name.startswith("visual.")}
    if buffers:
        clip.model.visual.load_state_dict(buffers, strict=False)
    model = build_model(clip)
    seg = mvpseg.Segmenter(model, device=device)
    names = vocabulary(args.classes)
    if args.encode_text:
        result["rss_after_load_mib"] = status_mib("VmRSS")
        seg.text_embeddings(names)
    else:
        seg.cache_text_embeddings(names, inputs["text"][:, : args.classes])
        result["rss_after_load_mib"] = status_mib("VmRSS")
    image = scene(args.side, args.side, seed=args.side)
    peak_before = status_mib("VmHWM")
    result["peak_reset"] = reset_peak()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seg.predict(image, names)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        result["cuda_max_allocated_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    result["predict_peak_rss_mib"] = status_mib("VmHWM")
    # Not getrusage's ru_maxrss: Linux carries the parent's RSS at fork into it.
    result["peak_rss_mib"] = max(peak_before, result["predict_peak_rss_mib"])
    result.update(clip=args.clip, side=args.side, classes=args.classes, device=str(device),
                  text_encoded_here=args.encode_text)
    return result


def measure(clip: str, side: int, classes: int, inputs: Path | None, device: str, threads: int | None = None,
            encode_text: bool = False) -> dict[str, Any]:
    """Run one case in a fresh Python process and return what it reports."""
    command = [sys.executable, str(Path(__file__).resolve()), "--child", "--clip", clip, "--side", str(side),
               "--classes", str(classes), "--device", device]
    if inputs is not None:
        command += ["--inputs", str(inputs)]
    if threads:
        command += ["--threads", str(threads)]
    if encode_text:
        command.append("--encode-text")
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    completed = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if completed.returncode != 0:
        raise RuntimeError(f"memory case {clip} {side} {classes} failed:\n{completed.stderr[-3000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clip", default="RN50")
    parser.add_argument("--side", type=int, default=4096)
    parser.add_argument("--classes", type=int, default=171)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--inputs", default=None, help="BatchNorm statistics and text embeddings (from the parent)")
    parser.add_argument("--encode-text", action="store_true", help="run the text tower in this process")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    if args.inputs is None and not args.encode_text:
        # Standalone: make the inputs here (random CLIP, calibrated), then measure in a fresh process.
        sys.path.insert(0, str(HERE))
        from common import build_model, random_clip, segmenter, vocabulary

        device = torch.device(args.device)
        clip = random_clip(args.clip, device)
        seg = segmenter(clip, build_model(clip), device)
        with tempfile.TemporaryDirectory() as folder:
            inputs = save_inputs(Path(folder), clip, seg.text_embeddings(vocabulary(171)))
            print(json.dumps(measure(args.clip, args.side, args.classes, inputs, args.device, args.threads), indent=2))
        return
    inputs = Path(args.inputs) if args.inputs else None
    print(json.dumps(measure(args.clip, args.side, args.classes, inputs, args.device, args.threads,
                             args.encode_text), indent=2))


if __name__ == "__main__":
    main()
