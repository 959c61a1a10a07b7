"""The page under load: several clients segmenting at once over loopback, as people pressing Segment together.

Starts ``mvpseg serve`` (the default model: the shipped tiny CLIP and world prompts) in a subprocess,
then CLIENTS threads, each its own gradio_client session, send REQUESTS segmentations each of the
same world photo to ``/run``. Every answer's label PNG is compared with what ``mvpseg segment`` writes
for that photo and those classes; a request that raises (a truncated download, a refused request)
counts as failed. Reports p50/p95 latency per request (upload, queue, segmentation and downloads),
the server's peak resident memory (VmHWM of its process), and the failures.

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/web_load_bench.py [--clients 8] [--requests 5]
        [--size 640] [--out benchmarks/results/web_load.json]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
from cpuinfo import cpu_summary
from PIL import Image

from mvpseg.world.patterns import CLASS_NAMES, generate_scene, scene_rng
from mvpseg.world.prompts_asset import WORLD_PROMPTS


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _status(pid: int, field: str) -> int:
    """A memory field of /proc/PID/status, in KiB (VmHWM: peak resident memory)."""
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)




def start_server(port: int, log: Path, extra: list[str]) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with open(log, "w") as output:
        process = subprocess.Popen([sys.executable, "-m", "mvpseg", "serve", "--port", str(port), "--device", "cpu",
                                    "--examples", "0", *extra], stdout=output, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"mvpseg serve exited:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2):
                return process
        except OSError:
            time.sleep(0.2)  # polling a server that is starting
    process.kill()
    raise RuntimeError("mvpseg serve did not answer in 300 s")


def expected_labels(photo: Path, classes: str, work: Path) -> np.ndarray:
    """What ``mvpseg segment --prompts <world prompts>`` writes for the photo."""
    subprocess.run([sys.executable, "-m", "mvpseg", "segment", str(photo), "--prompts", str(WORLD_PROMPTS),
                    "--classes", classes, "--out", str(work / "segment"), "--device", "cpu", "--quiet"], check=True)
    return np.asarray(Image.open(work / "segment" / f"{photo.stem}.png"))


def run_load(url: str, photo: Path, classes: str, clients: int, requests: int, expected: np.ndarray,
             downloads: Path) -> dict[str, Any]:
    from gradio_client import Client, handle_file

    latencies: list[float] = []
    failures: list[str] = []
    wrong = 0
    lock = threading.Lock()
    barrier = threading.Barrier(clients)

    def one_client(index: int) -> None:
        nonlocal wrong
        client = Client(url, verbose=False, download_files=str(downloads / f"client{index}"))
        barrier.wait()  # everyone starts together
        for _ in range(requests):
            start = time.perf_counter()
            try:
                result = client.predict(handle_file(str(photo)), classes, "", 0.0, api_name="/run")
                labels = np.asarray(Image.open(result[6]))
                Image.open(result[0]).load()  # the overlay downloaded whole
                Image.open(result[5]).load()  # the prompt maps
            except Exception as error:  # a failed request is what this benchmark counts
                with lock:
                    failures.append(f"{type(error).__name__}: {str(error)[:200]}")
                continue
            with lock:
                latencies.append(time.perf_counter() - start)
                wrong += int(not np.array_equal(labels, expected))

    threads = [threading.Thread(target=one_client, args=(index,)) for index in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    ordered = sorted(latencies)
    return {
        "clients": clients, "requests_per_client": requests, "requests": clients * requests,
        "answered": len(latencies), "failed": len(failures), "failures": failures[:10],
        "labels_differing_from_segment": wrong,
        "latency_p50_s": round(statistics.median(ordered), 3) if ordered else None,
        "latency_p95_s": round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], 3) if ordered else None,
        "latency_max_s": round(ordered[-1], 3) if ordered else None,
        "wall_s": round(wall, 2), "requests_per_s": round(len(latencies) / wall, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=5, help="requests per client")
    parser.add_argument("--size", type=int, default=640, help="side of the (upscaled) world photo")
    parser.add_argument("--sequential", type=int, default=5, help="requests of one client first, for reference")
    parser.add_argument("--out", default=None, help="write the results here (JSON)")
    parser.add_argument("--serve-args", default="", help="more options for mvpseg serve")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mvpseg-web-load-"))
    photo = work / "photo.png"
    Image.fromarray(generate_scene(scene_rng(0, 1, 5)).image).resize((args.size, args.size), Image.BICUBIC).save(photo)
    classes = ", ".join(CLASS_NAMES)
    expected = expected_labels(photo, classes, work)
    port = _free_port()
    server = start_server(port, work / "server.log", args.serve_args.split())
    try:
        url = f"http://127.0.0.1:{port}/"
        idle_kib = _status(server.pid, "VmRSS")
        results: dict[str, Any] = {"machine": cpu_summary(), "photo": f"{args.size} x {args.size} world scene",
                                   "server_rss_idle_mib": round(idle_kib / 1024, 1)}
        if args.sequential:
            results["sequential"] = run_load(url, photo, classes, 1, args.sequential, expected, work / "seq")
        results["concurrent"] = run_load(url, photo, classes, args.clients, args.requests, expected, work / "load")
        results["server_peak_rss_mib"] = round(_status(server.pid, "VmHWM") / 1024, 1)
        log = (work / "server.log").read_text()
        results["server_log_errors"] = [line for line in log.splitlines() if "Error" in line or "error" in line][:10]
        results["command"] = " ".join(["python benchmarks/web_load_bench.py", *sys.argv[1:]])
    finally:
        server.terminate()
        server.wait(30)
    print(json.dumps(results, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
