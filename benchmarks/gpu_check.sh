#!/usr/bin/env bash
# Check the CUDA path of lifelong on one GPU, in under 5 minutes:
#   1. the test suite's CUDA-marked tests (pytest -m cuda): pinned non-blocking copies,
#      LOCAL_RANK -> cuda:i, torchrun + nccl training of MAML and ProtoNet (bf16), ...;
#   2. seconds per meta-iteration on cuda:0 (benchmarks/ddp_scaling.py, one rank):
#      MAML Omniglot 5-way 1-shot 15-query meta-batch 32 (second order), ProtoNet 60-way
#      5-shot 5-query one episode per step, in float32 and bfloat16.
# Results: one JSON file (default benchmarks/results/gpu/gpu_check.json) with the tests'
# outcome and the timings; the pytest log sits next to it. Runs from the checkout (nothing to
# install beyond PyTorch and the test tools). Exit status: 0 when all passed, 1 when tests or
# timings failed, 2 when there is no CUDA device.
#
# Usage: benchmarks/gpu_check.sh [OUT.json]    (PYTHON=... picks the interpreter)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
source benchmarks/interpreter.sh
out=${1:-benchmarks/results/gpu/gpu_check.json}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
log=${out%.json}.pytest.log
speed=${out%.json}.speed.json
mkdir -p "$(dirname "$out")"

if ! "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "gpu_check: no CUDA device: torch.cuda.is_available() is False for $PYTHON" \
        "(a CPU-only PyTorch, no driver, or CUDA_VISIBLE_DEVICES hides the GPUs)" >&2
    exit 2
fi

started=$(date +%s)
echo "gpu_check: pytest -m cuda (log: $log)"
tests_status=0
timeout 180 "$PYTHON" -m pytest -q -m cuda -p no:cacheprovider tests >"$log" 2>&1 \
    || tests_status=$?
tail -n 3 "$log"

echo "gpu_check: seconds per meta-iteration on cuda:0"
speed_status=0
timeout 100 "$PYTHON" benchmarks/ddp_scaling.py --device cuda --ranks 1 --iterations 10 \
    --warmup 3 --algorithms maml protonet protonet_bf16 --protonet-meta-batch 1 \
    --out "$speed" >/dev/null || speed_status=$?

"$PYTHON" - "$out" "$log" "$speed" "$tests_status" "$speed_status" "$started" <<'EOF'
import json, sys, time
from pathlib import Path

import torch

out, log, speed, tests, timing, started = sys.argv[1:]
lines = Path(log).read_text().strip().splitlines()
report = {
    "command": "benchmarks/gpu_check.sh",
    "gpu": torch.cuda.get_device_name(0),
    "torch": torch.__version__,
    "cuda": torch.version.cuda,
    "tests": {"exit_status": int(tests), "summary": lines[-1] if lines else "", "log": log},
    "timing_exit_status": int(timing),
    "speed": json.loads(Path(speed).read_text()) if Path(speed).exists() else None,
    "wall_s": int(time.time()) - int(started),
}
if report["speed"]:
    for run in report["speed"]["runs"]:
        for name, result in run["results"].items():
            print(f"  {name}: {result['median_s_per_iteration'] * 1000:.1f} ms per iteration")
Path(out).write_text(json.dumps(report, indent=2) + "\n")
print(f"gpu_check: wrote {out} ({report['wall_s']} s)")
EOF

if ((tests_status != 0 || speed_status != 0)); then
    echo "gpu_check: FAILED (pytest exit $tests_status, timing exit $speed_status)" >&2
    exit 1
fi
echo "gpu_check: passed"
