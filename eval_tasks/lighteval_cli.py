"""``lpt-lighteval``: lighteval's own command line, with the project's offline fixes applied first.

``lighteval custom … --custom-tasks eval_tasks.tasks`` imports lighteval's ~660 built-in tasks before it imports
any task or model file of ours, so nothing in this package can run early enough to stop what those imports do
offline (``nltk.download`` errors, a ``FutureWarning`` from ``huggingface_hub``, the ``tinyBenchmarks.pkl``
fetch). This launcher applies :func:`eval_tasks._offline.prepare_lighteval` and then hands every argument to
lighteval's CLI unchanged: ``lpt-lighteval custom MODEL eval_tasks/model.py TASKS --custom-tasks eval_tasks.tasks``
behaves as ``lighteval custom …`` does, minus that noise, and a task whose data cannot load stops in one line.
"""

from __future__ import annotations


def main() -> None:
    from eval_tasks._offline import no_hub_future_warnings, prepare_lighteval

    no_hub_future_warnings()
    prepare_lighteval()
    from lighteval.__main__ import app

    app(prog_name="lpt-lighteval")


if __name__ == "__main__":
    main()
