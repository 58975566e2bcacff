"""How the benchmark measures time: synchronised wall and CPU clocks, medians of interleaved runs,
a per-stage clock, and the arithmetic (GFLOP) of a call.

Every number of ``speed.py`` comes from here, so that all models are timed the same way.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections import defaultdict
from typing import Callable, Dict, List, Sequence

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode


def synchronize(device: torch.device) -> None:
    """Wait for queued CUDA work (a no-op on CPU), so that a clock reading covers it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_inference(model: nn.Module, images: Sequence[Tensor]) -> List[Dict]:
    """``model(images)`` under ``torch.inference_mode()``: images N × [3, H, W] → N dicts."""
    with torch.inference_mode():
        return model(images)


def make_train_step(model: nn.Module, images: Sequence[Tensor],
                    targets: List[Dict]) -> Callable[[], None]:
    """A callable doing one forward + backward + SGD step on ``images`` N × [3, H, W] and their
    ``targets``. The tiny learning rate keeps the weights (and so the work of the next step)
    practically unchanged across repeats."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=1e-6, momentum=0.9, weight_decay=1e-4)

    def step():
        model.train()
        optimizer.zero_grad(set_to_none=True)
        losses = model(images, targets)
        sum(losses.values()).backward()
        optimizer.step()
    return step


def count_flops(task: Callable[[], object]) -> float:
    """GFLOP of one call of ``task`` (forward, and backward when it trains), as
    ``torch.utils.flop_counter.FlopCounterMode`` counts them: convolutions, matrix products and
    attention, two per multiply-add; elementwise work, norms, RoIAlign and NMS are not counted."""
    with FlopCounterMode(display=False) as counter:
        task()
    return counter.get_total_flops() / 1e9


def interleaved_medians(tasks: Dict[str, Callable[[], object]], warmup: int, repeats: int,
                        device: torch.device) -> Dict[str, Dict[str, float]]:
    """Run the tasks in turn ``warmup + repeats`` times, so that a change in the machine's load
    hits all of them alike. Per task key: ``median_ms`` and ``min_ms`` of the wall time,
    ``cpu_median_ms`` (CPU time of the process, all threads) and ``runs``."""
    wall: Dict[str, List[float]] = defaultdict(list)
    cpu: Dict[str, List[float]] = defaultdict(list)
    for round_ in range(warmup + repeats):
        for key, task in tasks.items():
            synchronize(device)
            start, start_cpu = time.perf_counter(), time.process_time()
            task()
            synchronize(device)
            if round_ >= warmup:
                wall[key].append(1000 * (time.perf_counter() - start))
                cpu[key].append(1000 * (time.process_time() - start_cpu))
    return {k: {"median_ms": statistics.median(v), "min_ms": min(v),
                "cpu_median_ms": statistics.median(cpu[k]), "runs": len(v)}
            for k, v in wall.items()}


class StageClock:
    """``with clock("stage"):`` adds the stage's wall and CPU time (synchronised on CUDA) to the
    current run; ``lap()`` ends a run; ``medians()`` gives each stage's median over the runs."""

    def __init__(self, device: torch.device):
        self.device = device
        self.times: Dict[str, List[float]] = defaultdict(list)
        self.cpu_times: Dict[str, List[float]] = defaultdict(list)
        self._current: Dict[str, List[float]] = {}

    @contextlib.contextmanager
    def __call__(self, name: str):
        synchronize(self.device)
        start, start_cpu = time.perf_counter(), time.process_time()
        yield
        synchronize(self.device)
        wall, cpu = self._current.setdefault(name, [0.0, 0.0])
        self._current[name] = [wall + 1000 * (time.perf_counter() - start),
                               cpu + 1000 * (time.process_time() - start_cpu)]

    def lap(self, keep: bool = True) -> None:
        """End one run; ``keep=False`` drops it (a warm-up run)."""
        if keep:
            for name, (wall, cpu) in self._current.items():
                self.times[name].append(wall)
                self.cpu_times[name].append(cpu)
        self._current = {}

    def medians(self) -> Dict[str, Dict[str, float]]:
        """Stage name → {``ms``: median wall time, ``cpu_ms``: median CPU time}, in the order
        the stages first ran."""
        return {name: {"ms": statistics.median(wall),
                       "cpu_ms": statistics.median(self.cpu_times[name])}
                for name, wall in self.times.items()}
