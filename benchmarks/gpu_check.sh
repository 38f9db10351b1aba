#!/usr/bin/env bash
# The GPU check's device side (benchmarks/gpu_check.py prepares what it reads and says how to call it):
#   gpu_check.sh piece NN   a piece of the onnxruntime-gpu wheel has arrived (the first also reports the machine)
#   gpu_check.sh run        join the pieces, check, install beside the image's onnxruntime, measure
# DEVICE=cpu runs the measuring half on the CPU provider (the suite's check of this script).
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${GPU_CHECK_DIR:-.gpu_check}
OUT=${OUT:-$DIR/out}
case "${1:-}" in
  piece)
    piece="$DIR/pieces/$2"
    [ -f "$piece" ] || { echo "piece $2 did not arrive ($piece)" >&2; exit 2; }
    echo "piece $2: $(stat -c %s "$piece") bytes, sha256 $(sha256sum "$piece" | cut -c1-16)"
    if [ "$2" = 00 ]; then
      python3 --version
      nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "no nvidia-smi"
      python3 -c "import numpy, jinja2; print('numpy', numpy.__version__, 'jinja2', jinja2.__version__)"
    fi
    ;;
  run)
    plan="$DIR/plan/plan.json"
    wheel="$DIR/wheel/$(python3 -c "import json; print(json.load(open('$plan'))['wheel'])")"
    mkdir -p "$DIR/wheel" "$OUT"
    pieces=$(python3 -c "import json; print(' '.join(json.load(open('$plan'))['pieces']))")
    (cd "$DIR/pieces" && cat $pieces) > "$wheel"
    want=$(python3 -c "import json; print(json.load(open('$plan'))['wheel_sha256'])")
    [ "$(sha256sum "$wheel" | cut -d' ' -f1)" = "$want" ] || { echo "the joined wheel's sha256 is not the plan's" >&2; exit 2; }
    rm -rf "$DIR/site" "$DIR/py" && mkdir -p "$DIR/py"
    start=$(date +%s)
    python3 -m pip install -q --no-deps --no-index --target "$DIR/site" "$wheel"
    echo "installed in $(( $(date +%s) - start )) s"
    ln -s "$PWD/runtime" "$DIR/py/gemma_runtime"
    PYTHONPATH="$DIR/site:$DIR/py" python3 benchmarks/gpu_check_device.py "$plan" "$OUT/gpu_check.json" \
      --device "${DEVICE:-cuda}"
    ;;
  *) echo "usage: $0 piece NN | run" >&2; exit 2 ;;
esac
