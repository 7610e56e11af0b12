"""What every benchmark here shares: memory readings, the machine's matmul rate, random-weight models
of real architectures, variants each in a fresh process, and where results are written.

A benchmark compares settings within one run on one machine (ratios, never absolute targets), so each
result file also says which machine, torch and commit it was measured on (`machine()`).
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

ARCHS = Path(__file__).parent / "archs"


def rss(peak: bool = False) -> int:
    """Bytes of this process now (peak: its high-water mark); on CUDA, allocated device memory."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() if peak else torch.cuda.memory_allocated()
    if peak:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakMemory:
    """Peak memory of this process while the block runs (resident memory sampled every 5 ms; on CUDA, the
    peak allocated device memory): `start` and `peak`, in bytes."""

    def __enter__(self) -> PeakMemory:
        import torch

        self._cuda = torch.cuda.is_available()
        if self._cuda:
            torch.cuda.reset_peak_memory_stats()
        self.start = self.peak = rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _read(self) -> int:
        return rss(peak=self._cuda)

    def _watch(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self._read())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._read())


def matmul_size(device) -> int:
    """The side of the square matmul that measures the peak: a 2048-square one does not fill an H100."""
    return 8192 if device.type == "cuda" else 2048


def matmul_peak(dtype, device=None, seconds: float = 3.0) -> float:
    """FLOP/s of a large square matmul on this device, now, with the threads torch uses."""
    import torch

    device = device or torch.device("cpu")
    n = matmul_size(device)
    a, b = torch.randn(n, n, dtype=dtype, device=device), torch.randn(n, n, dtype=dtype, device=device)
    a @ b
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
        if device.type == "cuda" and count % 10 == 0:
            torch.cuda.synchronize()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 2 * n ** 3 * count / (time.perf_counter() - start)


def arch_model(name: str, tokenizer, dtype: str, device: str):
    """A random-weight model of architecture `name` (a file in benchmarks/archs, or a path to a config.json)."""
    from transformers import AutoConfig

    from seal.core.models import model_from_config, pick_device, resolve_dtype

    path = Path(name) if Path(name).is_file() else ARCHS / f"{name}.json"
    if not path.is_file():
        raise SystemExit(f"--arch {name}: no {path}; choose one of {sorted(p.stem for p in ARCHS.glob('*.json'))}")
    fields = json.loads(path.read_text())
    fields.update(pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                  eos_token_id=tokenizer.eos_token_id)
    config = AutoConfig.for_model(**fields)
    chosen = resolve_dtype(dtype, pick_device(device))
    return model_from_config(config, tokenizer, seed=0, dtype=chosen, device=device)


def run_variants(script: str, names: dict[str, str], chosen: str) -> list[dict]:
    """Run `script` with this command line plus `--variant V` for each chosen variant, each in a fresh
    process (so that its peak memory is its own); its last line of output is its row, as JSON."""
    rows = []
    for v in chosen:
        print(f"running {names[v]} ...", flush=True)
        out = subprocess.run([sys.executable, script, *sys.argv[1:], "--variant", v], capture_output=True, text=True)
        if out.returncode:
            raise SystemExit(out.stderr[-2000:])
        rows.append(dict(variant=names[v], **json.loads(out.stdout.strip().splitlines()[-1])))
    return rows


def machine() -> dict:
    """Which machine a result was measured on: CPU model and its bf16 instructions, cores, torch, the
    GPU if any, and the commit of this checkout."""
    import torch

    flags, model = set(), platform.processor()
    try:
        text = Path("/proc/cpuinfo").read_text()
        model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), model)
        flags = set(next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []))
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent).stdout.strip()
    except OSError:
        commit = ""
    return dict(cpu=model, cores=os.cpu_count(), bf16=sorted(flags & {"avx512_bf16", "amx_bf16", "amx_tile"}),
                avx2="avx2" in flags, torch=torch.__version__, threads=torch.get_num_threads(),
                gpu=torch.cuda.get_device_name() if torch.cuda.is_available() else None, commit=commit)


def save(args, rows, **extra) -> None:
    """Write the result (`args.out`): the command line's arguments, the rows, the machine, and `extra`."""
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(dict(args=vars(args), machine=machine(), rows=rows, **extra), indent=1))
    print(f"written {args.out}")
