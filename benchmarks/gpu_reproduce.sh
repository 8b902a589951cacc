#!/usr/bin/env bash
# One GPU session in one command: benchmarks/gpu_check.sh (CUDA tests, seconds per iteration
# alone on the GPU), then the MAML Omniglot rows of `lifelong reproduce`, all at once on the
# same GPU, trained for whatever is left of the session's deadline and tested as the rows say.
#
# Results in OUT_DIR (default benchmarks/results/gpu):
#   gpu_check.json (+ .pytest.log, .speed.json)  what gpu_check.sh writes
#   reproduce_gpu.jsonl                          one `lifelong reproduce` record per row (test
#                                                accuracy, iterations, validation curve, GPU)
#   rows.tgz                                     each row's metrics.csv and log
# Exit status: 0 when every step passed, 1 otherwise, 2 without a CUDA device.
#
# Usage: benchmarks/gpu_reproduce.sh DATA_ROOT [OUT_DIR]
#   DEADLINE_S (default 540): seconds from start by which everything has ended;
#   TEST_S (default 90): of those, the seconds kept after training for start-up and the rows'
#   tests (Reptile's test, 1000 episodes of 50 Adam steps, took about 130 s on a CPU thread);
#   ROWS (default: the MAML Omniglot conv rows); DEVICE (default cuda; cpu for a dry run);
#   PYTHON (default: .venv/bin/python, else python3).
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
data=${1:?usage: benchmarks/gpu_reproduce.sh DATA_ROOT [OUT_DIR]}
out=${2:-benchmarks/results/gpu}
deadline=$((SECONDS + ${DEADLINE_S:-540}))
rows=${ROWS:-maml-omniglot-5w1s maml-recipe-omniglot-5w1s maml-omniglot-5w5s maml-omniglot-20w1s maml-omniglot-20w5s}
device=${DEVICE:-cuda}
source benchmarks/interpreter.sh
export PYTHON PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
mkdir -p "$out"
runs=$(mktemp -d)
status=0

# Decode Omniglot into the cache once, on the CPU, while the GPU checks run.
"$PYTHON" -c "import sys; from lifelong.data.omniglot import load_omniglot
load_omniglot(sys.argv[1], class_split='random')" "$data" >"$runs/cache.log" 2>&1 &
cache=$!

if [[ $device == cuda ]]; then
    benchmarks/gpu_check.sh "$out/gpu_check.json"
    check=$?
    ((check == 2)) && exit 2
    ((check != 0)) && status=1
fi
wait $cache || { cat "$runs/cache.log"; exit 1; }

# Training minutes: what is left, less TEST_S for start-up and the 1000-episode tests.
minutes=$("$PYTHON" -c "print(round(max(0.5, ($deadline - $SECONDS - ${TEST_S:-90}) / 60), 2))")
echo "gpu_reproduce: ${rows// /, } at once on $device, $minutes training minutes each"
pids=()
for row in $rows; do
    mkdir -p "$runs/$row"
    OMP_NUM_THREADS=2 timeout $((deadline - SECONDS)) "$PYTHON" -m lifelong reproduce "$row" \
        --device "$device" --time-limit "$minutes" --data-root "$data" --quiet \
        --out "$runs/$row" --results "$out/reproduce_gpu.jsonl" >"$runs/$row/log.txt" 2>&1 &
    pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid" || status=1; done

tar -czf "$out/rows.tgz" -C "$runs" --exclude='*.safetensors' --exclude='*.pt' .
for row in $rows; do tail -n 2 "$runs/$row/log.txt"; done  # each row's result, as reproduce says it
rm -rf "$runs"
echo "gpu_reproduce: $([[ $status == 0 ]] && echo passed || echo FAILED) in $SECONDS s"
exit $status
