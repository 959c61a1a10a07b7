"""The parts demo's rows on several world seeds, both measures of where the prompts look, and issue 24's check.

::

    for seed in 0 1 2; do mvpseg demo --world parts --seed $seed --out runs/parts-demo-s$seed; done
    python benchmarks/studies/views_rows.py runs/parts-demo-s0 runs/parts-demo-s1 runs/parts-demo-s2 \
        --json benchmarks/results/views_rows_parts_demo.json

For each demo output folder (one world seed each; or a ``views_study.py`` folder, whose settings are its rows): every row's mIoU(S) / mIoU(U) / hIoU (means over prompt seeds),
the range of mIoU(U) over prompt seeds, part JS and which-prompt-leads JS (means over prompt seeds) with their
ranges, differ of both, and the world seed's ceilings. The check, per world seed, for a view row against MVP-SEG:
lead JS at least 0.7 of its ceiling and 1.5 times MVP-SEG's, mIoU(U) no lower than MVP-SEG's by more than
MVP-SEG's own range over prompt seeds.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from mvpseg.files import write_text

_VIEW_ROWS = ("mvp-seg+views", "mvp-seg+overlap")


def row_figures(row: dict[str, Any]) -> dict[str, Any]:
    """One row's figures: means, the prompt seeds' ranges, both measures."""
    unseen = [run["miou_unseen"] for run in row["seeds"]]
    figures: dict[str, Any] = {key: row[key] for key in ("miou_seen", "miou_unseen", "hiou")}
    figures["miou_unseen_range"] = [min(unseen), max(unseen)]
    figures["miou_unseen_seeds"] = unseen
    if row.get("views"):
        for key in ("js", "lead_js"):
            values = [run["views"]["summary"][key] for run in row["seeds"]]
            figures[key] = row["views"][key]
            figures[f"{key}_seeds"] = values
        for key in ("differ", "lead_differ", "ceiling_js", "ceiling_lead_js"):
            figures[key] = row["views"].get(key)
    return figures


def check(rows: dict[str, dict[str, Any]], name: str) -> dict[str, Any]:
    """Issue 24's "done" for the view row ``name`` against MVP-SEG on one world seed."""
    row, base = rows[name], rows["mvp-seg"]
    spread = base["miou_unseen_range"][1] - base["miou_unseen_range"][0]
    result = {"lead_js_over_ceiling": row["lead_js"] / row["ceiling_lead_js"],
              "lead_js_over_mvp_seg": row["lead_js"] / base["lead_js"],
              "miou_unseen_drop": base["miou_unseen"] - row["miou_unseen"], "mvp_seg_unseen_range": spread}
    result["done"] = bool(result["lead_js_over_ceiling"] >= 0.7 and result["lead_js_over_mvp_seg"] >= 1.5
                          and result["miou_unseen_drop"] <= spread)
    return result


def study_rows(study: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The rows of a ``benchmarks/studies/views_study.py`` result in :func:`row_figures`' form (settings as rows)."""
    rows = {}
    for name, setting in study["settings"].items():
        mean = setting["mean"]
        rows[name] = {**{key: mean[key] for key in ("miou_seen", "miou_unseen", "hiou", "js", "lead_js", "differ",
                                                     "lead_differ")},
                      "miou_unseen_range": mean["miou_unseen_range"],
                      "miou_unseen_seeds": [run["miou_unseen"] for run in setting["runs"]],
                      "lead_js_seeds": [run["views"]["lead_js"] for run in setting["runs"]],
                      "ceiling_js": study["ceiling"]["js"], "ceiling_lead_js": study["ceiling"]["lead_js"]}
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("outs", nargs="+", help="mvpseg demo --world parts output folders, or views_study.py "
                                                 "output folders (their views_study.json)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    report: dict[str, Any] = {}
    for out in map(Path, args.outs):
        if (out / "views_study.json").exists():  # a study: its settings are the rows, "overlap" and "views*" view rows
            study = json.loads((out / "views_study.json").read_text())
            rows, seed, seconds = study_rows(study), study["config"]["seed"], None
            view_rows = [name for name in rows if name != "mvp-seg" and "@" not in name
                         and study["settings"][name].get("row", "mvp-seg") == "mvp-seg"]
        else:
            info = json.loads((out / "run_info.json").read_text())
            rows = {row["name"]: row_figures(row) for row in json.loads((out / "results.json").read_text())}
            seed, seconds, view_rows = info["config"]["seed"], info["seconds"], [n for n in _VIEW_ROWS if n in rows]
        entry = {"source": str(out), "seconds": seconds, "rows": rows,
                 "checks": {name: check(rows, name) for name in view_rows if "mvp-seg" in rows}}
        report[str(seed)] = entry
        print(f"world seed {seed}" + (f" ({seconds / 60:.1f} min)" if seconds else ""))
        for name, figures in rows.items():
            lead = f"  JS {figures['js']:.3f}  lead JS {figures['lead_js']:.3f}" if figures.get("lead_js") is not None else ""
            low, high = figures["miou_unseen_range"]
            print(f"  {name}: {figures['miou_seen']:.1f} / {figures['miou_unseen']:.1f} / {figures['hiou']:.1f}"
                  f" ({low:.1f}-{high:.1f}){lead}")
        for name, result in entry["checks"].items():
            print(f"  check {name}: " + "  ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}"
                                                  for k, v in result.items()))
    if args.json:
        write_text(Path(args.json), json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
