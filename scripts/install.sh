#!/usr/bin/env bash
# Install everything lowrank needs on a Debian-like machine (idempotent, quiet when done before).
#  - Fashion-MNIST from Debian's package dataset-fashion-mnist (needs root or sudo);
#  - PyTorch: if torch is not importable, `pip install torch==2.13.0` (on this project's
#    machines that resolves to a local CPU wheel; elsewhere install torch for your platform
#    first, and this step is skipped);
#  - the package itself, editable, with its test and optional extras (onnx: onnx + onnxruntime CPU wheels).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO="sudo"
  if command -v apt-get >/dev/null; then
    echo "[install] apt-get install dataset-fashion-mnist" >&2
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null
  else
    echo "[install] no apt-get: put Fashion-MNIST's four .gz files in \$LOWRANK_DATA/fashion-mnist" >&2
  fi
fi

if ! $PY -c "import torch" 2>/dev/null; then
  echo "[install] pip install torch==2.13.0" >&2
  $PY -m pip install -q "torch==2.13.0"
fi

if ! $PY -c "import lowrank, pytest, hypothesis, tomli_w, tokenizers, transformers, openpyxl, scipy, PIL, tensorboard, safetensors, onnx, onnxruntime" 2>/dev/null \
   || [ pyproject.toml -nt "$($PY -c 'import lowrank,os;print(os.path.dirname(lowrank.__file__))' 2>/dev/null || echo /nonexistent)" ]; then
  echo "[install] pip install -e .[test,text,kinetics,onnx]" >&2
  $PY -m pip install -q -e ".[test,text,kinetics,onnx]" 2>&1 | grep -v "Running pip as the 'root' user" || true
fi
