"""Figures of the real node and the image (docs/BENCHMARKS.md, "The node and the image").

    scripts/testenv up && eval "$(scripts/testenv env)"
    python benchmarks/node.py [--namespace trailingstop-demo] [--json]

1. ``scripts/testenv up`` with everything running (the warm path every ``make test`` takes).
2. Building the project's image: again with nothing changed (Docker's cache), and after a change
   to the code (a copy of the build context with one module edited, tagged ``...:bench`` and
   removed afterwards, so the real tag is untouched); sizes of the images ``scripts/testenv
   images`` builds.
3. Loading the rebuilt image into the node (``docker save | ctr import``, what ``scripts/testenv
   images`` does after a code change).
4. Memory of every pod in NAMESPACE (default: the one ``make cluster-demo`` leaves installed),
   from the kubelet's summary API (``/api/v1/nodes/NODE/proxy/stats/summary``): the working set
   (what the kubelet and the OOM killer count) and the RSS; and the CPU in use (its last sample).

The cold figures (an empty cache) are not taken here: they need the caches emptied, see
docs/BENCHMARKS.md for the commands used.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
TESTENV = REPO / "scripts" / "testenv"
DOCKER = "/usr/bin/docker"
MIB = 1024 * 1024


def timed(command: list[str], **options: Any) -> tuple[float, subprocess.CompletedProcess[str]]:
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, check=False, **options)
    if done.returncode != 0:
        sys.exit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return time.monotonic() - started, done


def size_mb(image: str) -> float:
    return int(timed([DOCKER, "image", "inspect", "-f", "{{.Size}}", image])[1].stdout) / 1e6


def build(context: Path, tag: str, base: str) -> float:
    secret = ["--secret", "id=pipcert,src=/etc/ssl/certs/ca-certificates.crt"]
    env = {**os.environ, "DOCKER_BUILDKIT": "1"}
    seconds, _ = timed([DOCKER, "build", "--network", "host", *secret, "--build-arg", f"PYTHON_IMAGE={base}",
                        "-t", tag, str(context)], env=env)
    return seconds


def image_figures(image: str, base: str) -> dict[str, Any]:
    unchanged = build(REPO, image, base)
    with tempfile.TemporaryDirectory() as scratch:
        context = Path(scratch) / "context"
        context.mkdir()
        for name in ("pyproject.toml", "README.md", ".dockerignore", "Dockerfile"):
            shutil.copy2(REPO / name, context / name)
        shutil.copytree(REPO / "trailingstop", context / "trailingstop",
                        ignore=shutil.ignore_patterns("__pycache__"))
        module = context / "trailingstop" / "__init__.py"
        module.write_text(module.read_text() + f"\n# benchmark edit {time.time_ns()}\n")
        bench_tag = image.rsplit(":", 1)[0] + ":bench"
        changed = build(context, bench_tag, base)
    try:
        load = load_seconds(bench_tag)
    finally:
        subprocess.run([DOCKER, "image", "rm", bench_tag], capture_output=True, check=False)
    return {
        "rebuild, nothing changed (s)": round(unchanged, 1),
        "rebuild after a code change (s)": round(changed, 1),
        "load of the rebuilt image into the node (s)": load,
        "image size (MB)": round(size_mb(image), 0),
        "stand-in base size (MB)": round(size_mb(base), 0),
    }


def load_seconds(tag: str) -> float | None:
    socket = Path(os.environ["TESTENV_DIR"]) / "node" / "containerd" / "containerd.sock"
    if not socket.exists():
        return None
    started = time.monotonic()
    saved = subprocess.Popen([DOCKER, "save", tag], stdout=subprocess.PIPE)
    subprocess.run(["ctr", "--address", str(socket), "--namespace", "k8s.io", "images", "import", "-"],
                   stdin=saved.stdout, capture_output=True, check=True)
    saved.wait()
    seconds = round(time.monotonic() - started, 1)
    subprocess.run(["ctr", "--address", str(socket), "--namespace", "k8s.io", "images", "rm", f"docker.io/{tag}", tag],
                   capture_output=True, check=False)
    return seconds


def pod_memory(namespace: str, node: str) -> list[dict[str, Any]]:
    kubectl = os.environ.get("TESTENV_KUBECTL", "kubectl")
    summary = json.loads(timed([kubectl, "get", "--raw", f"/api/v1/nodes/{node}/proxy/stats/summary"])[1].stdout)
    rows = []
    for pod in summary["pods"]:
        if pod["podRef"]["namespace"] != namespace:
            continue
        memory = pod.get("memory", {})
        rows.append({"pod": pod["podRef"]["name"],
                     "working set (MiB)": round(memory.get("workingSetBytes", 0) / MIB, 1),
                     "rss (MiB)": round(memory.get("rssBytes", 0) / MIB, 1),
                     "cpu (millicores)": round(pod.get("cpu", {}).get("usageNanoCores", 0) / 1e6, 1)})
    return sorted(rows, key=lambda row: row["pod"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--namespace", default="trailingstop-demo")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    for name in ("TESTENV_DIR", "TESTENV_IMAGE", "TESTENV_NODE_NAME"):
        if not os.environ.get(name):
            sys.exit(f'{name} is not set: scripts/testenv up && eval "$(scripts/testenv env)"')
    up, _ = timed([str(TESTENV), "up"])
    base = "trailingstop.local/python:3.11-bookworm"
    figures = {
        "warm `scripts/testenv up` (s)": round(up, 1),
        **image_figures(os.environ["TESTENV_IMAGE"], base),
        "pods": pod_memory(args.namespace, os.environ["TESTENV_NODE_NAME"]),
    }
    if args.json:
        print(json.dumps(figures, indent=2))
        return
    for key, value in figures.items():
        if key != "pods":
            print(f"{key:48} {value}")
    print(f"\nmemory of the pods in {args.namespace} (kubelet summary API):")
    for row in figures["pods"]:
        print(f"  {row['pod']:44} working set {row['working set (MiB)']:7.1f} MiB   rss {row['rss (MiB)']:7.1f} MiB"
              f"   cpu {row['cpu (millicores)']:6.1f} m")


if __name__ == "__main__":
    main()
