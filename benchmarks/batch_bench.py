"""Large batch runs of ``mvpseg segment`` on world images: a killed then resumed run, shards, a failed
process under torchrun, and Ray Data against ``segment`` (images per second).

Every run is the real command line in a subprocess, on N world scenes (128 x 128) with the shipped tiny
CLIP and world prompts, on the CPU.

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/batch_bench.py [--images 300] [--shards 3]
        [--kill-after 100] [--no-ray] [--out benchmarks/results/batch.json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from cpuinfo import cpu_summary
from PIL import Image

from mvpseg.world.patterns import CLASS_NAMES, generate_scene, scene_rng
from mvpseg.world.prompts_asset import WORLD_PROMPTS

CLASSES = ",".join(CLASS_NAMES)




def segment_argv(folder: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "mvpseg", "segment", str(folder), "--prompts", str(WORLD_PROMPTS), "--classes",
            CLASSES, "--out", str(out), "--device", "cpu", *extra]


def run(argv: list[str], env: dict[str, str] | None = None) -> tuple[int, float, str]:
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, env=env)
    return done.returncode, time.perf_counter() - start, done.stderr


def summary(stderr: str) -> dict[str, Any]:
    """The numbers of segment's summary line."""
    match = re.search(r"segmented (\d+) of (\d+) images .*\((\d+) skipped: already done; (?:\d+ redone: made differently; )?(\d+) failed\) in "
                      r"([\d.]+) s, ([\d.]+) images/s", stderr)
    if not match:
        raise RuntimeError(f"no summary line in:\n{stderr[-2000:]}")
    done, total, skipped, failed, seconds, rate = match.groups()
    return {"done": int(done), "total": int(total), "skipped": int(skipped), "failed": int(failed),
            "loop_seconds": float(seconds), "images_per_s": float(rate)}


def files(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()
            and not p.name.startswith(".")}


def killed_and_resumed(folder: Path, work: Path, reference: dict[str, bytes], kill_after: int) -> dict[str, Any]:
    out = work / "resumed"
    start = time.perf_counter()
    process = subprocess.Popen(segment_argv(folder, out, "--quiet"), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    while len(list(out.glob("*.json"))) < kill_after and process.poll() is None:
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    first_seconds = time.perf_counter() - start
    whole_before = len(list(out.glob("*.json")))
    leftovers = len(list(out.glob(".*.tmp")))
    code, seconds, stderr = run(segment_argv(folder, out, "--skip-existing"))
    result = files(out)
    return {"killed_after_s": round(first_seconds, 2), "summaries_before_kill": whole_before,
            "temporary_files_left_by_the_kill": leftovers, "resume_exit": code, "resume_wall_s": round(seconds, 2),
            **{f"resume_{key}": value for key, value in summary(stderr).items()},
            "outputs_equal_an_uninterrupted_run": result == reference, "outputs": len(result)}


def shards(folder: Path, work: Path, reference: dict[str, bytes], count: int) -> dict[str, Any]:
    out = work / "sharded"
    rows = []
    for index in range(count):
        code, seconds, stderr = run(segment_argv(folder, out, "--shard", f"{index}/{count}"))
        rows.append({"shard": f"{index}/{count}", "exit": code, "wall_s": round(seconds, 2), **summary(stderr)})
    result = files(out)
    return {"shards": rows, "images_over_shards": sum(row["done"] for row in rows),
            "outputs_equal_the_whole_run": result == reference, "outputs": len(result)}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def failed_process(folder: Path, work: Path, torchrun: bool) -> dict[str, Any]:
    """Two processes segment; once the first outputs exist one of them is SIGKILLed: when does the other exit?"""
    out = work / ("torchrun" if torchrun else "two-processes")
    if torchrun:
        argv = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                str(_free_port()), "-m", "mvpseg", *segment_argv(folder, out, "--quiet")[3:]]
        launcher = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        processes = [launcher]
    else:  # no launcher that kills the others: the processes' own watch must stop the survivor
        port = _free_port()
        processes = [subprocess.Popen(segment_argv(folder, out, "--quiet"), stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE, text=True,
                                      env={**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
                                           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
                     for rank in range(2)]
    while len(list(out.glob("*.json"))) < 10:
        time.sleep(0.02)
    if torchrun:
        children = subprocess.run(["pgrep", "-P", str(launcher.pid)], capture_output=True, text=True).stdout.split()
        victim = int(children[-1])
    else:
        victim = processes[1].pid
    os.kill(victim, signal.SIGKILL)
    killed = time.perf_counter()
    survivor = processes[0]
    _, stderr = survivor.communicate(timeout=600)
    waited = time.perf_counter() - killed
    for process in processes[1:]:
        process.wait()
    last = [line for line in stderr.splitlines() if "mvpseg: error" in line or "ERROR" in line][-1:]
    return {"launcher": "torchrun (its agent stops the rest)" if torchrun else "none (PeerWatch alone)",
            "survivor_exit": survivor.returncode, "survivor_exited_after_s": round(waited, 2),
            "outputs_written": len(list(out.glob("*.json"))), "survivor_message": last}


def ray_run(folder: Path, work: Path, reference: dict[str, bytes], cpus: int) -> dict[str, Any]:
    import ray

    from mvpseg.integrations.ray import SegmentBatch, image_rows

    start = time.perf_counter()
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)
    ready = time.perf_counter()
    try:
        ray.data.DataContext.get_current().enable_progress_bars = False
        rows = image_rows([str(folder)])
        kwargs = {"classes": list(CLASS_NAMES), "prompts": str(WORLD_PROMPTS), "device": "cpu",
                  "out": str(work / "ray"), "with_labels": False}
        dataset = ray.data.from_items(rows).map_batches(SegmentBatch, batch_size=16, fn_constructor_kwargs=kwargs,
                                                        compute=ray.data.ActorPoolStrategy(size=cpus), num_cpus=1)
        statuses = [row["status"] for row in dataset.select_columns(["status"]).iter_rows()]
        finished = time.perf_counter()
    finally:
        ray.shutdown()
    return {"actors": cpus, "ray_init_s": round(ready - start, 2), "pipeline_s": round(finished - ready, 2),
            "images": len(statuses), "done": statuses.count("done"),
            "images_per_s_pipeline": round(len(statuses) / (finished - ready), 2),
            "outputs_equal_segment": files(work / "ray") == reference}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--shards", type=int, default=3)
    parser.add_argument("--kill-after", type=int, default=100, help="summaries written before the SIGKILL")
    parser.add_argument("--no-ray", action="store_true")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mvpseg-batch-"))
    folder = work / "world"
    folder.mkdir()
    for index in range(args.images):
        Image.fromarray(generate_scene(scene_rng(0, 2, index)).image).save(folder / f"scene{index:05d}.png")
    results: dict[str, Any] = {"machine": cpu_summary(), "images": f"{args.images} world scenes, 128 x 128",
                               "command": " ".join(["python benchmarks/batch_bench.py", *sys.argv[1:]])}
    code, seconds, stderr = run(segment_argv(folder, work / "whole"))
    reference = files(work / "whole")
    results["segment"] = {"exit": code, "wall_s": round(seconds, 2), **summary(stderr), "outputs": len(reference)}
    results["killed_and_resumed"] = killed_and_resumed(folder, work, reference, args.kill_after)
    results["shards"] = shards(folder, work, reference, args.shards)
    results["failed_process"] = [failed_process(folder, work, torchrun=False), failed_process(folder, work, True)]
    if not args.no_ray:
        results["ray"] = ray_run(folder, work, reference, cpus=2)
    results["machine"]["load_average_at_end"] = round(os.getloadavg()[0], 2)
    print(json.dumps(results, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
