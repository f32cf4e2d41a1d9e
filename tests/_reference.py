"""Where the authors' example outputs are: ``../shared/reference/upstream-example-outputs`` beside the checkout
(CI lays shared/ there), else the sessions' ``/work/shared``."""

from pathlib import Path

_NAME = "shared/reference/upstream-example-outputs"
UPSTREAM = next((p for p in (Path(__file__).resolve().parents[2] / _NAME, Path("/work") / _NAME) if p.is_dir()),
                Path(__file__).resolve().parents[2] / _NAME)
