#!/usr/bin/env bash
# One call on the lent GPU machine (see ../shared/GPU.md): install the carried wheels, then run the GPU
# parity tests and the GPU benchmarks, logs under $OUT and a short summary last.
# Prepare here first (CPU machine), then carry .whl/:
#   echo /.whl/ >> .git/info/exclude
#   MAMBA_SKIP_CUDA_BUILD=TRUE MAMBA_FORCE_BUILD=TRUE pip wheel --no-deps --no-build-isolation \
#       mamba-ssm==2.3.2.post1 -w .whl
#   pip download -d .whl jsonargparse[signatures] datasets  (and their missing dependencies)
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT" /tmp/site /tmp/stub
pip install --no-deps --target /tmp/site .whl/*.whl > "$OUT/install.log" 2>&1
# mamba_ssm's __init__ imports the compiled Mamba-1 scan, which the pure-Python wheel lacks and Mamba-2
# never calls: an empty stand-in lets it import (here only, never in the package).
touch /tmp/stub/selective_scan_cuda.py
export PYTHONPATH="$PWD:/tmp/site:/tmp/stub${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total --format=csv > "$OUT/gpu.txt" 2>&1
git rev-parse HEAD > "$OUT/commit.txt" 2>/dev/null || true
python -m pytest -q -m gpu -s tests/test_gpu.py > "$OUT/parity.log" 2>&1; parity=$?
python -m dimba.eval.bench_mamba2 --device cuda > "$OUT/bench_mamba2.txt" 2>&1
python -m dimba bench --device cuda --out_dir "$OUT/bench" > "$OUT/bench.log" 2>&1
python -m dimba bench --device cuda --precision bf16 --out_dir "$OUT/bench_bf16" > "$OUT/bench_bf16.log" 2>&1
# Both models through torch.compile (each cell compiles first): the AR baseline at its fastest, batch 1.
timeout 300 python -m dimba bench --device cuda --compile --lengths 128,1024,4096 --steps 8,32 --batches 1 \
  --out_dir "$OUT/bench_compiled" > "$OUT/bench_compiled.log" 2>&1
echo "== $(cat "$OUT/gpu.txt" | tail -1), commit $(cat "$OUT/commit.txt")"
echo "== parity tests: exit $parity"; grep -E "passed|failed|out [0-9]" "$OUT/parity.log" | tail -12
echo "== mixer"; grep -E "^\|" "$OUT/bench_mamba2.txt" | head -8
echo "== dimba bench"; head -30 "$OUT/bench/bench.md" 2>/dev/null
echo "== dimba bench --compile"; grep -E "^\| (AR|DIMBA) \| [0-9-]+ \| [0-9]+ \| 1 " "$OUT/bench_compiled/bench.md" 2>/dev/null
