#!/usr/bin/env bash
# One call on the lent GPU machine (see ../shared/GPU.md): install the carried wheels, then run the GPU
# parity tests and the GPU benchmarks; every log goes into $OUT/gpu_check.tar.gz (rewritten after each step, so a
# call stopped at its time limit still brings back what ran; the device returns at most 8 files); each step
# prints its summary as it ends.
# Prepare here first (CPU machine), then carry .whl/:
#   echo /.whl/ >> .git/info/exclude
#   MAMBA_SKIP_CUDA_BUILD=TRUE MAMBA_FORCE_BUILD=TRUE pip wheel --no-deps --no-build-isolation \
#       mamba-ssm==2.3.2.post1 -w .whl
#   pip download -d .whl jsonargparse[signatures] datasets  (and their missing dependencies)
set -uo pipefail
OUT=${OUT:-/tmp/out}
LOGS=/tmp/gpu_check
mkdir -p "$OUT" "$LOGS" /tmp/site /tmp/stub
save() { tar -czf "$OUT/gpu_check.tar.gz" -C "$LOGS" .; }
python -m pip install -q --no-deps --target /tmp/site .whl/*.whl > "$LOGS/install.log" 2>&1
# mamba_ssm's __init__ imports the compiled Mamba-1 scan, which the pure-Python wheel lacks and Mamba-2
# never calls: an empty stand-in lets it import (here only, never in the package).
touch /tmp/stub/selective_scan_cuda.py
export PYTHONPATH="$PWD:/tmp/site:/tmp/stub${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader > "$LOGS/gpu.txt" 2>&1
echo "${DIMBA_COMMIT:-$(git rev-parse HEAD 2>/dev/null)}" > "$LOGS/commit.txt"
echo "== $(cat "$LOGS/gpu.txt"), commit $(cat "$LOGS/commit.txt")"; save
# Sized for one call inside a 15-minute lease (start included): each step has its own time limit, the most
# important first, and prints its summary as soon as it ends. The bench grid is trimmed from the GPU defaults
# (5 lengths x 6 step counts x 3 batches, with AR decoding 4096 tokens one at a time, would not fit).
GRID=(--lengths [128,1024] --steps [8,32,128] --batches [1,32] --repeats 3)
timeout 200 python -m pytest -q -m gpu -s tests/test_gpu.py > "$LOGS/parity.log" 2>&1
echo "== parity tests: exit $?"; grep -E "passed|failed|skipped|error|out [0-9]" "$LOGS/parity.log" | tail -12; save
timeout 60 python -m dimba bench-mamba2 --device cuda > "$LOGS/bench_mamba2.txt" 2>&1
echo "== mixer"; grep -E "^\|" "$LOGS/bench_mamba2.txt" | head -8; save
for precision in fp32 bf16; do
  timeout 100 python -m dimba bench --device cuda --precision $precision "${GRID[@]}" \
    --out_dir "$LOGS/bench_$precision" > "$LOGS/bench_$precision.log" 2>&1
  echo "== dimba bench $precision: exit $?"; head -30 "$LOGS/bench_$precision/bench.md" 2>/dev/null; save
done
# Both models through torch.compile (each cell compiles first): the AR baseline at its fastest, batch 1.
timeout 110 python -m dimba bench --device cuda --compile true --lengths [1024] --steps [8,32] --batches [1] \
  --out_dir "$LOGS/bench_compiled" > "$LOGS/bench_compiled.log" 2>&1
echo "== dimba bench --compile: exit $?"
grep -E "^\| (AR|DIMBA) \| [0-9-]+ \| [0-9]+ \| 1 " "$LOGS/bench_compiled/bench.md" 2>/dev/null; save
