"""mvpseg's ViT dense modes against the authors' own model files, imported unmodified, at 224 px and off it.

::

    python benchmarks/studies/modes_vs_authors.py    # benchmarks/results/modes_vs_authors.{md,json}

Needs the authors' repositories as git directories (``--mirrors``, default /work/.mirror, one
``<owner>+<name>/repo`` each): it is a one-off check, not a test. Each repository's model file is written
unmodified to a scratch folder (``git show HEAD:path``) and imported from there: SCLIP, NACLIP, ResCLIP and
SC-CLIP ``clip/model.py`` (OpenAI's CLIP with their changes), ClearCLIP ``open_clip/transformer.py`` (with its
``utils.py`` and ``pos_embed.py``, as a package of another name beside the installed open_clip). Stand-ins,
only for imports the code paths run here never use: an empty ``cv2`` for ResCLIP (its unused
``calculate_distance_prior``), ResCLIP's own ``pamr.py`` written beside it, an empty ``__init__.py`` for
ClearCLIP's package (its own imports the whole of open_clip).

Each author's ``VisionTransformer`` is built at 224 px and loaded, strictly, with the image tower of a random
open_clip ``ViT-B-16-quickgelu`` (QuickGELU, as OpenAI's weights and all five repositories use): as it is
(``random``), and with peaked attention (``peaked``: every block's query and key weights times 3, biases
N(0, 0.1), positions times 15, as ``tests/test_vit_modes.py`` makes it). mvpseg runs the same tower through
``dense_features(tower, images, mode, DenseOptions(position_resize="authors"))``. Images: one of four flat
regions and noise at 224 x 224, 448 x 448 and 336 x 448 (H x W). Per comparison: the smallest per-token
cosine and the largest absolute difference of the patch features before normalisation; and how far mvpseg's
default resize (``position_resize="grid"``) is from the authors' output.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import open_clip
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # benchmarks/: cpuinfo
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))  # the tests' test weights and images
from cpuinfo import cpu_summary  # noqa: E402
from vit_references import peaked, regions  # noqa: E402

from mvpseg.config import DenseOptions  # noqa: E402
from mvpseg.dense import dense_features  # noqa: E402
from mvpseg.files import write_text  # noqa: E402

RESULTS = Path(__file__).resolve().parent.parent / "results" / "modes_vs_authors.md"
#: name -> (mirror folder, files written unmodified, the package they are written into)
REPOSITORIES = {
    "SCLIP": ("wangf3014+SCLIP", ["clip/model.py"]),
    "NACLIP": ("sinahmr+NACLIP", ["clip/model.py"]),
    "ResCLIP": ("yvhangyang+ResCLIP", ["clip/model.py", "pamr.py"]),
    "SC-CLIP": ("SuleBai+SC-CLIP", ["clip/model.py"]),
    "ClearCLIP": ("mc-lan+ClearCLIP", ["open_clip/transformer.py", "open_clip/utils.py", "open_clip/pos_embed.py"]),
}
#: SC-CLIP's line that places an outlier at (index // rows, index % rows), and the one-line patch of the copy
#: run on non-square grids beside the unmodified file.
SCCLIP_LINE = ("top_indices = [(torch.div(index, feat_w, rounding_mode='trunc'), index % feat_w) "
               "for index in outlier_indices]")
SCCLIP_PATCHED = ("top_indices = [(torch.div(index, feat_h, rounding_mode='trunc'), index % feat_h) "
                  "for index in outlier_indices]")
SIZES = [(224, 224), (448, 448), (336, 448)]


def export(mirrors: Path, scratch: Path) -> dict[str, str]:
    """Write every repository's files unmodified under ``scratch/<name>/``; return name -> commit."""
    commits = {}
    for name, (folder, paths) in REPOSITORIES.items():
        git_dir = mirrors / folder / "repo"
        commits[name] = subprocess.run(["git", "--git-dir", str(git_dir), "rev-parse", "HEAD"], check=True,
                                       capture_output=True, text=True).stdout.strip()
        for path in paths:
            text = subprocess.run(["git", "--git-dir", str(git_dir), "show", f"HEAD:{path}"], check=True,
                                  capture_output=True, text=True).stdout
            target = scratch / name / path.replace("open_clip/", "clearclip_open_clip/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
    (scratch / "ResCLIP" / "cv2.py").write_text('"""Stand-in: ResCLIP imports cv2 for a helper never called here."""\n')
    (scratch / "ClearCLIP" / "clearclip_open_clip" / "__init__.py").write_text(
        '"""Stand-in for ClearCLIP\'s open_clip/__init__.py, which imports the whole package."""\n')
    model = (scratch / "SC-CLIP" / "clip" / "model.py").read_text()
    assert model.count(SCCLIP_LINE) == 1, "SC-CLIP's outlier line moved: update SCCLIP_LINE"
    patched = scratch / "SC-CLIP-patched" / "clip" / "model.py"
    patched.parent.mkdir(parents=True, exist_ok=True)
    patched.write_text(model.replace(SCCLIP_LINE, SCCLIP_PATCHED))
    return commits


def load(path: Path, name: str, extra_path: Path | None = None) -> types.ModuleType:
    if extra_path is not None and str(extra_path) not in sys.path:
        sys.path.insert(0, str(extra_path))
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def towers(scratch: Path, visual: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """Each author's image tower, loaded strictly with ``visual``'s weights."""
    state = visual.state_dict()
    built = {}
    for name in ("SCLIP", "NACLIP", "ResCLIP", "SC-CLIP", "SC-CLIP-patched"):
        module = load(scratch / name / "clip" / "model.py", f"authors_{name.replace('-', '_')}_model",
                      extra_path=scratch / name if name == "ResCLIP" else None)
        tower = module.VisionTransformer(input_resolution=224, patch_size=16, width=768, layers=12, heads=12,
                                         output_dim=512)
        tower.load_state_dict(state, strict=True)
        built[name] = tower.eval()
    built["NACLIP"].set_params("reduced", "naclip", 5.0)  # NACLIP's segmentor defaults (naclip.py l.21)
    built["ResCLIP"].set_params("wo_resi", "resclip", 5.0)  # ResCLIP's segmentor defaults (resclip_segmentor.py l.24)
    load(scratch / "ClearCLIP" / "clearclip_open_clip" / "__init__.py", "clearclip_open_clip")
    clear = load(scratch / "ClearCLIP" / "clearclip_open_clip" / "transformer.py", "clearclip_open_clip.transformer")
    tower = clear.VisionTransformer(image_size=224, patch_size=16, width=768, layers=12, heads=12, mlp_ratio=4.0,
                                    output_dim=512, act_layer=clear.QuickGELU)
    tower.load_state_dict(state, strict=True)
    built["ClearCLIP"] = tower.eval()
    return built


def one_at_a_time(run: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda images: torch.cat([run(image[None]) for image in images])


#: (repository, the authors' call, how it is run, mvpseg's mode, DenseOptions fields)
COMPARISONS: list[tuple[str, str, Callable[[Any, torch.Tensor], torch.Tensor], str, dict[str, Any]]] = [
    ("SCLIP", "csa=True (clip_segmentor.py l.63)", lambda t, x: t(x, return_all=True, csa=True)[:, 1:], "csa", {}),
    ("SCLIP", "csa=False", lambda t, x: t(x, return_all=True, csa=False)[:, 1:], "vanilla", {}),
    ("NACLIP", "arch='reduced', attn_strategy='naclip', gaussian_std=5",
     lambda t, x: t(x, return_all=True)[:, 1:], "naclip", {}),
    ("ResCLIP", "attn_strategy='resclip', use_rcs=True, use_sfr=False, attn_rcs_weights=[2.0, 0.4]",
     lambda t, x: t(x, return_all=True, use_rcs=True, use_sfr=False, attn_rcs_weights=[2.0, 0.4])[:, 1:],
     "resclip", {}),
    ("ResCLIP", "the same with attn_rcs_weights=[2.0, 0.6] (cfg_voc20.py)",
     lambda t, x: t(x, return_all=True, use_rcs=True, use_sfr=False, attn_rcs_weights=[2.0, 0.6])[:, 1:],
     "resclip", {"resclip_lambda": 0.6}),
    ("SC-CLIP", "its defaults (base_config.py), one image at a time",
     lambda t, x: one_at_a_time(lambda image: t(image, return_all=True))(x), "scclip", {}),
    ("SC-CLIP-patched", "the same, its outlier row index // feat_h (one line patched)",
     lambda t, x: one_at_a_time(lambda image: t(image, return_all=True))(x), "scclip", {}),
    ("ClearCLIP", "model_type='ClearCLIP', ignore_residual=True (its paper's)", lambda t, x: t(x, "ClearCLIP", True),
     "qq", {}),
    ("ClearCLIP", "model_type='vanilla', ignore_residual=True (base_config.py)", lambda t, x: t(x, "vanilla", True),
     "qk", {}),
    ("ClearCLIP", "model_type='vanilla', ignore_residual=False", lambda t, x: t(x, "vanilla", False), "vanilla", {}),
    ("ClearCLIP", "model_type='MaskCLIP', ignore_residual=False", lambda t, x: t(x, "MaskCLIP", False),
     "maskclip", {}),
    ("ClearCLIP", "model_type='MaskCLIP', ignore_residual=True", lambda t, x: t(x, "MaskCLIP", True), "value", {}),
    ("ClearCLIP", "model_type='SCLIP', ignore_residual=False", lambda t, x: t(x, "SCLIP", False), "csa", {}),
]


def regions_at(size: tuple[int, int]) -> torch.Tensor:
    """One image (1, 3, H, W) of four flat regions and noise, as tests/test_vit_modes.py cuts it to H x W."""
    return regions(1, max(size))[:, :, : size[0], : size[1]]


def compare(ours: torch.Tensor, theirs: torch.Tensor) -> dict[str, float]:
    tokens = ours.flatten(2).transpose(1, 2)  # (B, D, h, w) -> (B, h*w, D)
    return {"min_cosine": F.cosine_similarity(tokens, theirs, dim=-1).min().item(),
            "max_abs_diff": (tokens - theirs).abs().max().item(), "feature_max": theirs.abs().max().item()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mirrors", type=Path, default=Path("/work/.mirror"))
    parser.add_argument("--scratch", type=Path, default=Path("/tmp/modes_vs_authors"))
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--render", action="store_true", help="rewrite the markdown from the JSON of an earlier run")
    args = parser.parse_args(argv)
    if args.render:
        write_text(args.out, markdown(json.loads(args.out.with_suffix(".json").read_text())))
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    machine = cpu_summary()
    commits = export(args.mirrors, args.scratch)
    torch.manual_seed(0)
    random = open_clip.create_model("ViT-B-16-quickgelu", pretrained=None).eval().visual
    weights = {"random": random, "peaked": peaked(random)}
    rows: list[dict[str, Any]] = []
    start = time.perf_counter()
    for weight_name, visual in weights.items():
        theirs_towers = towers(args.scratch, visual)
        for size in SIZES:
            images = regions_at(size)
            ours_cache: dict[tuple[str, str], torch.Tensor] = {}
            for repository, call, run, mode, fields in COMPARISONS:
                if repository == "SC-CLIP-patched" and size[0] == size[1]:
                    continue  # the patch changes nothing on a square grid
                row: dict[str, Any] = {"weights": weight_name, "size": list(size), "repository": repository,
                                       "authors": call, "mode": mode, "options": fields}
                with torch.no_grad():
                    key = (mode, json.dumps(fields, sort_keys=True))
                    if key not in ours_cache:
                        ours_cache[key] = dense_features(visual, images, mode,
                                                         DenseOptions(position_resize="authors", **fields))
                    try:
                        theirs = run(theirs_towers[repository], images)
                    except Exception as error:  # SC-CLIP's own file on a non-square grid
                        row["error"] = f"{type(error).__name__}: {str(error).splitlines()[0]}"
                        rows.append(row)
                        print(weight_name, size, repository, mode, row["error"], flush=True)
                        continue
                    row.update(compare(ours_cache[key], theirs))
                    if size != (224, 224):
                        by_grid = dense_features(visual, images, mode, DenseOptions(**fields))
                        row["grid_resize_min_cosine"] = compare(by_grid, theirs)["min_cosine"]
                rows.append(row)
                print(weight_name, size, repository, mode, f"{row['min_cosine']:.8f} {row['max_abs_diff']:.2e}",
                      flush=True)
    seconds = time.perf_counter() - start
    record = {"machine": machine, "torch": torch.__version__, "open_clip": open_clip.__version__,
              "commits": commits, "seconds": round(seconds, 1), "rows": rows}
    write_text(args.out.with_suffix(".json"), json.dumps(record, indent=1) + "\n")
    write_text(args.out, markdown(record))


def markdown(record: dict[str, Any]) -> str:
    """The short report: per comparison, the worst agreement over both weight sets, by size."""
    lines = [
        "# mvpseg's ViT modes against the authors' own model files",
        "",
        "Written by `python benchmarks/studies/modes_vs_authors.py` (its docstring says how: each repository's",
        "model file imported unmodified, loaded strictly with one random open_clip ViT-B/16 (QuickGELU) image",
        "tower, as it is and with peaked attention; mvpseg run on that tower with",
        "`DenseOptions(position_resize=\"authors\")`; one image per size). Per cell: the smallest per-token",
        "cosine / the largest absolute difference of the patch features (which reach about 5), the worse of",
        "the two weight sets. The last column: mvpseg's default resize (`position_resize=\"grid\"`) against the",
        "authors' output, the smallest cosine off 224 px.",
        "",
        "| repository | the authors' setting | mvpseg | 224 x 224 | 448 x 448 | 336 x 448 | grid resize |",
        "|---|---|---|---|---|---|---|",
    ]
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in record["rows"]:
        groups.setdefault((row["repository"], row["authors"]), []).append(row)
    for (repository, call), rows in groups.items():
        mode = rows[0]["mode"] + "".join(f", {key}={value}" for key, value in rows[0]["options"].items())
        cells = []
        for size in SIZES:
            at = [row for row in rows if tuple(row["size"]) == size]
            if not at:
                cells.append("(square: as above)")
            elif any("error" in row for row in at):
                cells.append("; ".join(sorted({row["error"] for row in at if "error" in row})))
            else:
                cells.append(f"{min(r['min_cosine'] for r in at):.7f} / {max(r['max_abs_diff'] for r in at):.1e}")
        grid = [row["grid_resize_min_cosine"] for row in rows if "grid_resize_min_cosine" in row]
        grid_cell = f"{min(grid):.4f}" if grid else ""
        lines.append(f"| {repository} | {call} | `{mode}` | " + " | ".join(cells) + f" | {grid_cell} |")
    machine = record["machine"]
    lines += [
        "",
        "SC-CLIP's own file cannot run a non-square grid: it places an outlier token at `(index // feat_w,",
        "index % feat_w)` with `feat_w` the grid's rows (clip/model.py l.275), so on 21 x 28 rows run to",
        "27 and `mean_interpolation` raises the IndexError above (on 28 x 21 the columns overrun instead; a",
        "grid whose outliers all fall inside would read the wrong neighbours silently). The copy with that",
        "one line dividing by the columns (`SC-CLIP-patched`) agrees with mvpseg, which does the same. In the",
        "authors' protocols it never shows: their 224-px windows are square.",
        "",
        "Commits: " + ", ".join(f"{name} {commit[:7]}" for name, commit in record["commits"].items())
        + f". torch {record['torch']}, open_clip {record['open_clip']}, {machine['cpu']}, fp32, "
        f"{record['seconds']:.0f} s.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
