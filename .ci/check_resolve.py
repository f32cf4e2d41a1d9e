"""Fail when a pip --dry-run report would install anything but the project itself (constraints.txt drifted)."""

import json
import sys

report = json.load(open(sys.argv[1], encoding="utf-8"))
changes = [f"{i['metadata']['name']}=={i['metadata']['version']}" for i in report.get("install", [])
           if i["metadata"]["name"] != "longperceptualthoughts"]
if changes:
    sys.exit(f"installing the extras again would change: {', '.join(changes)} (regenerate constraints.txt)")
print("constraints.txt holds: installing every extra again changes nothing")
