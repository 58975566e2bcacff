"""Peak memory of each model, measured in a fresh process per model.

A fresh process, because a peak cannot be reset: in the benchmark's own process every model would
report the largest peak of the models before it. ``measure_memory`` runs this file as a script
once per model (``python benchmarks/memory.py KEY SETTINGS_JSON``); the worker builds the model,
runs inference twice then two training steps, and prints its peaks as one JSON line.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path
from typing import Dict, Optional, Sequence

import torch

from peers import entries, make_images, make_targets
from timing import make_train_step, run_inference

# What the worker needs of ``speed.parse_args``'s arguments to build the same model and inputs.
WORKER_SETTINGS = ("device", "threads", "size", "tiny_size", "detections", "peers", "tiny_512")


def _proc_status_mb(field: str) -> Optional[float]:
    """A ``/proc/self/status`` memory field (Linux) in MiB, or None."""
    try:
        with open("/proc/self/status") as f:
            for text in f:
                if text.startswith(field + ":"):
                    return int(text.split()[1]) / 2 ** 10  # kB
    except OSError:
        pass
    return None


def rss_mb() -> float:
    """The current resident set size in MiB (Linux; elsewhere the peak so far)."""
    current = _proc_status_mb("VmRSS")
    return peak_rss_mb() if current is None else current


def peak_rss_mb() -> float:
    """The peak resident set size of this process in MiB.

    On Linux ``VmHWM``, the same number as ``getrusage(RUSAGE_SELF).ru_maxrss`` except that
    ru_maxrss survives ``exec``: a worker started by a parent that already holds 2 GB would report
    the parent's 2 GB. Elsewhere ru_maxrss (bytes on macOS, KiB on other systems).
    """
    peak = _proc_status_mb("VmHWM")
    if peak is not None:
        return peak
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2 ** 20 if sys.platform == "darwin" else peak / 2 ** 10


def memory_worker(key: str, settings: argparse.Namespace) -> Dict[str, float]:
    """Build the model ``key`` of ``peers.entries(settings)``, run inference twice then two
    training steps: {``after_build_mb``, ``peak_inference_mb``, ``peak_train_mb``} in MiB
    (CPU: RSS; CUDA: allocated memory)."""
    device = torch.device(settings.device)
    torch.set_num_threads(settings.threads)
    entry = next(e for e in entries(settings) if e.key == key)
    torch.manual_seed(0)
    model = entry.build().to(device).eval()
    images = make_images(entry.size, 1, device)
    batch = make_images(entry.size, 2, device, seed=1)
    targets = make_targets(entry.size, 2, device, entry.torchvision)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        built = torch.cuda.memory_allocated(device) / 2 ** 20
    else:
        built = rss_mb()
    for _ in range(2):
        run_inference(model, images)
    inference = torch.cuda.max_memory_allocated(device) / 2 ** 20 if cuda else peak_rss_mb()
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    step = make_train_step(model, batch, targets)
    for _ in range(2):
        step()
    train = torch.cuda.max_memory_allocated(device) / 2 ** 20 if cuda else peak_rss_mb()
    return {"after_build_mb": built, "peak_inference_mb": inference, "peak_train_mb": train}


def measure_memory(args: argparse.Namespace, keys: Sequence[str]) -> Dict[str, Dict[str, float]]:
    """Model key → ``memory_worker``'s peaks, each model in a fresh process; ``args`` are
    ``speed.parse_args``'s (``WORKER_SETTINGS`` of them are passed on)."""
    settings = json.dumps({name: getattr(args, name) for name in WORKER_SETTINGS})
    out = {}
    for key in keys:
        command = [sys.executable, str(Path(__file__).resolve()), key, settings]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"memory worker {key} failed:\n{done.stderr}")
        out[key] = json.loads(done.stdout.strip().splitlines()[-1])
    return out


if __name__ == "__main__":  # the worker: one model's peaks as the last line of stdout
    key, settings = sys.argv[1], argparse.Namespace(**json.loads(sys.argv[2]))
    print(json.dumps(memory_worker(key, settings)))
