"""One lighteval task file per benchmark (``vstar.py``, ``cvbench.py`` …), each in lighteval's shape: a metadata
docstring, ``parse`` (dataset row -> :class:`eval_tasks.common.Item`), one ``prompt(line, task) -> Doc``, the whole
``LightevalTaskConfig`` in ``task()``, ``TASKS_TABLE`` at the bottom.

A new file here is a new benchmark: :mod:`eval_tasks.catalog` finds every module of this folder (its ``NAME``,
``TITLE``, ``HF_*`` and ``PAPER_QWEN25_VL_7B`` constants), and :mod:`eval_tasks.tasks` gathers their tasks.
"""
