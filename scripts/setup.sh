#!/usr/bin/env bash
# Sets up a fresh machine: .venv (the toolkit, PyTorch, the source frameworks used as parity
# oracles, test tools) and .venv-mxnet (mxnet 1.9.1, which needs numpy<1.24 and so cannot share
# an environment with TensorFlow). Idempotent: re-running only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3

if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
# torch/torchvision pinned to the releases this machine kind keeps on disk (a fresh resolve would
# download a multi-GB CUDA build); tf-keras (Keras 2) goes in without deps beside Keras 3.
.venv/bin/pip install -q --disable-pip-version-check "torch==2.14.1" "torchvision==0.29.1" 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/pip install -q --disable-pip-version-check -e ".[test]" 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/pip install -q --disable-pip-version-check --no-deps "tf-keras~=2.21.0" 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import converters, torch, tensorflow, onnxruntime, cv2, h5py" 2>/dev/null \
  || { echo "setup: the main environment did not install" >&2; exit 1; }

if [ "${CONVERTERS_SKIP_MXNET:-0}" != 1 ]; then
  if [ ! -x .venv-mxnet/bin/python ]; then
    "$PY" -m venv .venv-mxnet
  fi
  .venv-mxnet/bin/pip install -q --disable-pip-version-check "mxnet==1.9.1" "numpy<1.24" 2>&1 | grep -v "^WARNING: Location" || true
  # GluonCV (for the resnet50_v1b table's tests) without its opencv/matplotlib/pandas extras
  .venv-mxnet/bin/pip install -q --disable-pip-version-check --no-deps "gluoncv==0.10.5.post0" tqdm portalocker \
    pyyaml yacs Pillow "scipy<1.12" 2>&1 | grep -v "^WARNING: Location" || true
  .venv-mxnet/bin/python -c "import mxnet, gluoncv" 2>/dev/null || { echo "setup: mxnet/gluoncv did not install" >&2; exit 1; }
fi
echo "setup: ready (.venv, .venv-mxnet)"
