"""Time and peak memory of ``gradguard report`` on long run logs, each in its own process.

Writes synthetic logs of 100k and 1M steps (a healthy run with a noisy norm, clipping now and
then, a few spikes, alerts and one NaN step skipped, top-5 tensors per step, as JsonlSink
writes them) and a 1M-step log clipped at every step (the most the report keeps per step),
runs ``gradguard report`` on each in a fresh process and reads that process's wall time, CPU
time and peak resident memory (``resource.getrusage``). For comparison, the parser the report
used before (``records.from_json_dict`` per line) is timed on the smallest log. Prints a
markdown table and one summary line of ratios. Targets: a 1M-step log in under 30 s and
500 MB. On a shared machine trust the CPU column: wall time there includes waiting.

Usage: .venv/bin/python benchmarks/report.py [--quick] [--steps N ...]
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path

NAMES = ("rnn.weight_hh_l0", "rnn.weight_ih_l0", "rnn.bias_hh_l0", "fc.weight", "fc.bias")

# Runs in a child process: the command's wall time and its own peak RSS (ru_maxrss of the
# children of this small runner, which has exactly one: the command).
_RUNNER = """
import resource, subprocess, sys, time
start = time.perf_counter()
done = subprocess.run(sys.argv[1:], capture_output=True, text=True)
seconds = time.perf_counter() - start
if done.returncode:
    sys.exit(done.stderr)
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
print(seconds, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024)  # maxrss: KiB on Linux
"""

_OLD_PARSER = """
import json, resource, sys, time
from gradguard.records import StepRecord, from_json_dict
start = time.perf_counter()
with open(sys.argv[1], "rb") as f:
    next(f)
    records = [from_json_dict(StepRecord, json.loads(line)) for line in f]
seconds = time.perf_counter() - start
usage = resource.getrusage(resource.RUSAGE_SELF)
print(seconds, time.process_time(), usage.ru_maxrss / 1024)
"""


def write_log(path: Path, steps: int, clip_every_step: bool = False) -> None:
    """A JsonlSink-shaped log of ``steps`` records, written fast with string formatting.

    ``clip_every_step`` clips every step (a fixed bound below the usual norm, as many large
    runs do): the worst case for what the report keeps per step.
    """
    header = {
        "format": "gradguard-log",
        "schema_version": 1,
        "gradguard_version": "bench",
        "started": "",
        "metadata": {"model": {"cell": "RNN", "num_layers": 1}},
    }
    with path.open("w", encoding="utf-8") as f:
        f.write(json.dumps(header) + "\n")
        for i in range(steps):
            norm = 1.0 + 0.5 * math.sin(i * 0.01) + 0.1 * ((i * 7919) % 13)
            if i % 50_000 == 25_000:
                norm *= 40.0  # a one-step spike: must survive downsampling
            loss = 2.0 / (1.0 + i * 1e-4) + 0.01 * ((i * 31) % 7)
            lr = 1e-3 if i < steps // 2 else 5e-4
            top = ",".join(f'["{n}",{norm / (k + 1):.6g}]' for k, n in enumerate(NAMES))
            if i == steps // 3:
                f.write(
                    f'{{"step":{i},"action":"skip","reason":"nonfinite_grad","message":"NaN '
                    f'gradient in {NAMES[0]}; step skipped","applied":false,"loss":{loss:.6g},'
                    f'"total_norm":"nan","clip_coef":1.0,"lr":{lr},"alerts":[{{"step":{i},'
                    f'"severity":"critical","kind":"nonfinite_grad","message":"NaN gradient",'
                    f'"detector":"nonfinite","culprits":["{NAMES[0]}"]}}],"top":[["{NAMES[0]}",'
                    f'"nan"]],"rolled_back_to":null,"steps_lost":0}}\n'
                )
                continue
            clipped = clip_every_step or norm > 3.0
            bound = 0.5 if clip_every_step else 3.0
            message = f"clipped gradient norm {norm:.3g} to {bound}" if clipped else ""
            alerts = ""
            if i % 50_000 == 25_000:
                alerts = (
                    f'{{"step":{i},"severity":"warning","kind":"grad_norm_spike","message":'
                    f'"gradient norm spike","detector":"spike","culprits":["{NAMES[0]}"],'
                    f'"value":{norm:.6g},"threshold":10.0}}'
                )
            f.write(
                f'{{"step":{i},"action":"{"clip" if clipped else "proceed"}","reason":'
                f'"{"norm_above_bound" if clipped else "healthy"}","message":"{message}",'
                f'"applied":true,'
                f'"loss":{loss:.6g},"total_norm":{norm:.6g},'
                f'"clip_coef":{bound / norm if clipped else 1.0:.6g},"lr":{lr},'
                f'"alerts":[{alerts}],"top":[{top}],"rolled_back_to":null,"steps_lost":0}}\n'
            )


def _measure(code: str, args: list[str]) -> tuple[float, float, float]:
    """Wall seconds, CPU seconds and peak RSS (MB) of ``code`` run in a fresh process."""
    done = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, check=True
    )
    wall, cpu, peak = (float(v) for v in done.stdout.split())
    return wall, cpu, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20k and 100k steps only")
    parser.add_argument("--steps", type=int, nargs="*", help="log lengths to measure")
    options = parser.parse_args()
    sizes = options.steps or ([20_000, 100_000] if options.quick else [100_000, 1_000_000])
    gradguard = str(Path(sys.executable).with_name("gradguard"))
    rows: list[tuple[str, int, float, float, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for steps in sizes:
            log = folder / f"run{steps}.jsonl"
            write_log(log, steps)
            command = [gradguard, "report", str(log), "-o", str(folder / "out")]
            rows.append(("gradguard report (one pass)", steps, *_measure(_RUNNER, command)))
            if steps != sizes[0]:
                log.unlink()  # keep the disk use to one large log at a time
        log = folder / "clipped.jsonl"
        write_log(log, sizes[-1], clip_every_step=True)
        command = [gradguard, "report", str(log), "-o", str(folder / "out")]
        rows.append(("same, every step clipped", sizes[-1], *_measure(_RUNNER, command)))
        log.unlink()
        small = folder / f"run{sizes[0]}.jsonl"
        old = ("old parser only (from_json_dict per line)", sizes[0])
        rows.append((*old, *_measure(_OLD_PARSER, [str(small)])))

    print("| what | steps | wall s | CPU s | peak RSS MB | CPU us per step |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, steps, wall, cpu, peak in rows:
        print(
            f"| {name} | {steps:,} | {wall:.1f} | {cpu:.1f} | {peak:.0f} | "
            f"{cpu / steps * 1e6:.1f} |"
        )
    report = [r for r in rows if r[0].startswith("gradguard")]
    (_, n0, _, c0, m0), (_, n1, w1, c1, m1) = report[0], report[-1]
    clipped_mb = rows[-2][4]
    print(
        f"report: {n1:,} steps {w1:.1f} s wall ({w1 / 30:.2f} of the 30 s target; CPU "
        f"{c1:.1f} s), {m1:.0f} MB ({m1 / 500:.2f} of 500 MB; {clipped_mb / 500:.2f} when every "
        f"step is clipped); {n1 // n0}x the steps costs "
        f"{c1 / c0:.1f}x CPU and {m1 / m0:.2f}x memory; old parser alone / whole new report at "
        f"{n0:,} steps {rows[-1][3] / c0:.1f}x CPU"
    )


if __name__ == "__main__":
    main()
