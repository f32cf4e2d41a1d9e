"""Prompt templates (sandboxed Jinja2, ``*.j2`` in this folder) and the functions that render them.

Templates, one per prompt of the method (docs/method.md), all in our own words:

=========================== ==============================================================================
``mcq_generation_system``   stage 1 system turn
``mcq_generation``          stage 1: description -> 6-10 vision-centric MCQs in the tagged layout
``mcq_reformat``            stage 1: rewrite a reply into the strict tagged layout
``system``                  think / direct system prompt; with ``task`` it adds ``task.j2``: the reasoning
                            type and the requested answer format (``answer_format.j2``)
``vlm_user``                stage 2 user text: question, "Select from the following choices.", options
``reasoning_user``          stage 3 user turn: picture the image from the description, reason as if looking
``reasoning_prefill``       stage 3 pre-filled assistant opening: restates question and options + thought
``benchmark_system``        the paper's evaluation system prompt (think or direct + letter-format sentence)
``benchmark_user``          the paper's evaluation user text
=========================== ==============================================================================

``Prompts(template_dir)`` looks in ``template_dir`` first, so a user's file with the same name (e.g.
``system.j2``) replaces ours; everything else falls back to the built-in files. Templates run in Jinja's
sandbox with ``StrictUndefined`` (a missing variable is an error, not an empty string). A ``Prompts`` reads
each template once, on first use, and does not look for edits on every render: a template edited since needs
a new ``Prompts`` (every stage run makes its own).
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path
from typing import Any, Sequence

import jinja2
from jinja2 import nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.sandbox import SandboxedEnvironment, safe_range

from builder.answers import ANSWER_FORMATS, LETTERS, OPTION_STYLES, format_options

BUILTIN_DIR = Path(__file__).resolve().parent
QUESTION_TYPES = (
    "Recognition",
    "Spatial and Relational Reasoning",
    "Counting and Quantification",
    "Causal and Commonsense Reasoning",
    "Analogical and Goal-Oriented Reasoning",
)
VARIANTS = ("think", "direct")
WORDINGS = ("project", "authors")
"""Whose words the prompts use: ours (the ``*.j2`` files here) or the authors' (:mod:`builder.prompts.authors`,
read from their published example outputs)."""
THINK_PREFILL = "<think>"


class PromptError(ValueError):
    """A template could not be rendered; the message names the template."""


def _fail(message: str) -> None:
    raise PromptError(message)


def options_inline(options: Sequence[str], style: str = "paren") -> str:
    """The options on one line: ``(A) x (B) y`` or ``A. x B. y``."""
    return format_options(options, style).replace("\n", " ")


Messages = list[dict[str, Any]]


MAX_RENDER_CHARS = 2_000_000
"""The longest text a template may produce or build (its output, a ``~`` join, a ``*`` repeat): a template that
grows past it (nested loops, a string doubled in a loop) is stopped, naming it, before it fills the memory."""
MAX_RENDER_SECONDS = 10.0
"""How long one render may take (checked every 256 pieces of output and every 1,000 steps of a ``range`` loop)."""
_deadline = threading.local()  # the running render's deadline (monotonic seconds) and template name, per thread


class RenderLimit(PromptError):
    """A template went past :data:`MAX_RENDER_CHARS` or :data:`MAX_RENDER_SECONDS`."""


def _over(what: str) -> RenderLimit:
    return RenderLimit(f"template {getattr(_deadline, 'name', '?')}: {what}; a prompt template must not build text "
                       f"without bound (loops within loops, a string doubled in a loop)")


def _check_size(n: int) -> None:
    if n > MAX_RENDER_CHARS:
        raise _over(f"builds a text of over {MAX_RENDER_CHARS:,} characters")


def _check_time() -> None:
    if time.monotonic() > getattr(_deadline, "at", float("inf")):
        raise _over(f"ran for over {MAX_RENDER_SECONDS:g} s")


def _bounded_range(*args: int):
    """Jinja's sandboxed ``range`` (at most 100,000 items), checking the render's deadline every 1,000 steps."""
    for i, x in enumerate(safe_range(*args)):
        if not i % 1000:
            _check_time()
        yield x


class _BoundedCodeGenerator(CodeGenerator):
    """Compiles ``a ~ b`` to a join whose result is measured before it is kept (:data:`MAX_RENDER_CHARS`)."""

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:  # noqa: N802 (Jinja's visitor name)
        self.write("environment.bounded_join((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


class _Environment(SandboxedEnvironment):
    """Jinja's sandbox, with a template's globals a plain dict rather than a ``ChainMap`` in front of the
    environment's: every render (and every ``include``) copies them into its context, and copying a ``ChainMap`` key
    by key, in Python, was a third of a render. The environment's globals are set once, before any template is
    loaded (:class:`Prompts`), so the snapshot is the same mapping."""

    code_generator_class = _BoundedCodeGenerator
    intercepted_binops = frozenset({"*"})

    def make_globals(self, d: dict[str, Any] | None) -> dict[str, Any]:
        return {**self.globals, **(d or {})}

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        """``*`` on a text and a count: refused when the repeat would pass :data:`MAX_RENDER_CHARS`."""
        for text, count in ((left, right), (right, left)):
            if isinstance(text, str) and isinstance(count, int):
                _check_size(len(text) * count)
        return super().call_binop(context, operator, left, right)

    @staticmethod
    def bounded_join(parts: Sequence[Any]) -> str:
        text = "".join(map(str, parts))
        _check_size(len(text))
        return text


class Prompts:
    """Renders the project's prompts; ``template_dir`` holds ``*.j2`` files that override ours by name;
    ``wording="authors"`` puts the authors' words in place of ours (learnt from their published files in
    ``authors_dir``, by default the example outputs the package ships)."""

    def __init__(self, template_dir: str | os.PathLike | None = None, wording: str = "project",
                 authors_dir: str | os.PathLike | None = None) -> None:
        _check(wording, WORDINGS, "wording")
        search = [str(BUILTIN_DIR)]
        if template_dir is not None:
            if not Path(template_dir).is_dir():
                raise FileNotFoundError(f"template directory {template_dir} does not exist")
            search.insert(0, str(template_dir))
        self.template_dir = template_dir
        self.search = search
        self.wording = wording
        # the authors' words (builder.prompts.authors) stand between a user's files and ours
        self.authors = authors_templates(authors_dir) if wording == "authors" else {}
        loaders: list[jinja2.BaseLoader] = [jinja2.FileSystemLoader(search[:-1]), jinja2.DictLoader({f"{k}.j2": v for k, v in self.authors.items()}),
                                            jinja2.FileSystemLoader(search[-1])]
        self.env = _Environment(
            loader=jinja2.ChoiceLoader(loaders),
            undefined=jinja2.StrictUndefined,
            autoescape=False,
            keep_trailing_newline=False,
            auto_reload=False,  # no stat of the template file on every render
            cache_size=-1,  # a plain dict of the loaded templates (a dozen), no LRU bookkeeping on every render
        )
        self.env.globals["fail"] = _fail
        self.env.globals["range"] = _bounded_range
        self._users: dict[tuple, str] = {}  # recent stage-3 user turns (see reasoning_user_text)

    # ------------------------------------------------------------------------------------------- generic

    def fingerprint(self) -> str:
        """A hash of the templates in effect (a user's that override ours, and ours): the rows of a stage depend
        on them, so a run resumed after a template was edited must notice."""
        folders = [Path(d) for d in self.search]
        h = hashlib.sha256()
        for name in sorted({p.name for d in folders for p in d.glob("*.j2")} | {f"{n}.j2" for n in self.authors}):
            # in the loaders' order: a user's file, then the authors' words, then ours
            path = next((d / name for d in folders[:-1] if (d / name).is_file()), None)
            if path is None and name[:-3] in self.authors:
                source = self.authors[name[:-3]].encode()
            else:
                source = (path or folders[-1] / name).read_bytes()
            h.update(name.encode() + b"\0" + source + b"\0")
        return h.hexdigest()[:16]

    def render(self, name: str, **variables: Any) -> str:
        """Render ``<name>.j2`` with ``variables`` (surrounding whitespace stripped)."""
        try:
            template = self.env.get_template(f"{name}.j2")
            _deadline.name, _deadline.at = f"{name}.j2", time.monotonic() + MAX_RENDER_SECONDS
            parts, size = [], 0
            for part in template.generate(**variables):
                parts.append(part)
                size += len(part)
                if size > MAX_RENDER_CHARS or not len(parts) % 256:
                    _check_size(size)
                    _check_time()
            return "".join(parts).strip()
        except jinja2.TemplateNotFound:
            raise PromptError(f"no template {name}.j2 in {self.search}") from None
        except (jinja2.UndefinedError, jinja2.TemplateSyntaxError, jinja2.exceptions.SecurityError) as e:
            raise PromptError(f"template {name}.j2: {type(e).__name__}: {e}") from None
        except (MemoryError, OverflowError, RecursionError) as e:
            raise _over(f"{type(e).__name__}") from None
        finally:
            _deadline.at = float("inf")

    # ----------------------------------------------------------------------------------------- stage 1

    def mcq_generation(self, description: str, *, min_questions: int = 6, max_questions: int = 10,
                       question_types: Sequence[str] = QUESTION_TYPES) -> Messages:
        """System + user turns asking a text LLM for MCQs about the described image (no system turn where the
        system template renders nothing, as the authors' words have none)."""
        system = self.render("mcq_generation_system")
        user = self.render("mcq_generation", description=description.strip(), min_questions=min_questions,
                           max_questions=max_questions, question_types=list(question_types))
        return [*([{"role": "system", "content": system}] if system else []), {"role": "user", "content": user}]

    def mcq_reformat(self, text: str) -> Messages:
        """A user turn asking to rewrite ``text`` into the strict tagged layout (stage 1's second call)."""
        return [{"role": "user", "content": self.render("mcq_reformat", text=text.strip())}]

    # ----------------------------------------------------------------------------- system / VLM (stage 2)

    def system(self, variant: str = "think", question_type: str = "", answer_format: str = "paren",
               *, task: bool = True) -> str:
        """The think/direct system prompt; with ``task`` it names the question type and answer format."""
        _check(variant, VARIANTS, "variant")
        _check(answer_format, ANSWER_FORMATS, "answer_format")
        return self.render("system", variant=variant, question_type=question_type or "",
                           answer_format=answer_format, task=task)

    def vlm_user_text(self, question: str, options: Sequence[str], option_style: str = "paren") -> str:
        """Question, "Select from the following choices." and the options, one a line."""
        return self.render("vlm_user", question=question.strip(), options_text=_options(options, option_style))

    def vlm_messages(self, question: str, options: Sequence[str], *, image: Any, question_type: str = "",
                     option_style: str = "paren", answer_format: str = "paren", variant: str = "think",
                     prefill: str | None = THINK_PREFILL) -> Messages:
        """Stage 2 chat: system, user (image first, then text) and, with ``prefill``, the assistant's start."""
        msgs: Messages = [
            {"role": "system", "content": self.system(variant, question_type, answer_format)},
            {"role": "user", "content": [{"type": "image", "image": image},
                                         {"type": "text", "text": self.vlm_user_text(question, options,
                                                                                      option_style)}]},
        ]
        if prefill is not None:
            msgs.append({"role": "assistant", "content": prefill})
        return msgs

    # ------------------------------------------------------------------------------ reasoning (stage 3)

    def reasoning_user_text(self, description: str, question: str, options: Sequence[str], *,
                            question_type: str = "", answer_format: str = "paren",
                            option_style: str = "paren") -> str:
        """The reasoning model's single user turn (no system turn, as R1 recommends).

        The simple CoTs of one question come one after another (stage 3 takes them in ``mcq_id`` order) and share
        this turn, so the last few hundred are kept rather than rendered again."""
        key = (description, question, tuple(options), question_type, answer_format, option_style)
        text = self._users.get(key)
        if text is None:
            _check(answer_format, ANSWER_FORMATS, "answer_format")
            text = self.render("reasoning_user", description=description.strip(), question=question.strip(),
                               options_text=_options(options, option_style), question_type=question_type or "",
                               answer_format=answer_format)
            if len(self._users) >= 256:
                self._users.clear()
            self._users[key] = text
        return text

    def reasoning_opening(self, question: str, options: Sequence[str], thought: str, *,
                          option_style: str = "paren") -> str:
        """The pre-filled assistant opening: restates question and options, then the simple thought.

        The thought is used as it is (the original code lower-cased all of it: docs/method.md, defect 3).
        """
        thought = thought.strip()
        return self.render("reasoning_prefill", question=question.strip(),
                           options_inline=options_inline(options, option_style), thought=thought)

    def reasoning_prefill(self, question: str, options: Sequence[str], thought: str, *, cue: str,
                          separator: str = " ", option_style: str = "paren") -> str:
        """Opening + simple thought, a full stop if it lacks one, ``separator`` ("\\n" or " ") and the cue."""
        return join_cue(self.reasoning_opening(question, options, thought, option_style=option_style),
                        cue, separator)

    def reasoning_messages(self, description: str, question: str, options: Sequence[str], thought: str, *,
                           cue: str, separator: str = " ", question_type: str = "", answer_format: str = "paren",
                           option_style: str = "paren") -> Messages:
        """Stage 3 chat: the user turn and the pre-filled assistant turn the model continues."""
        return self.reasoning_chats(description, question, options, thought, [(cue, separator)],
                                    question_type=question_type, answer_format=answer_format,
                                    option_style=option_style)[0]

    def reasoning_chats(self, description: str, question: str, options: Sequence[str], thought: str,
                        cues: Sequence[tuple[str, str]], *, question_type: str = "", answer_format: str = "paren",
                        option_style: str = "paren") -> list[Messages]:
        """:meth:`reasoning_messages` for each ``(cue, separator)`` of ``cues``, all on one simple thought: the
        user turn and the opening are rendered once."""
        user = self.reasoning_user_text(description, question, options, question_type=question_type,
                                        answer_format=answer_format, option_style=option_style)
        opening = self.reasoning_opening(question, options, thought, option_style=option_style)
        return [[{"role": "user", "content": user}, {"role": "assistant", "content": join_cue(opening, cue, sep)}]
                for cue, sep in cues]

    # --------------------------------------------------------------------------------------- benchmark

    def benchmark_system(self, variant: str = "think") -> str:
        """The paper's evaluation system prompt: think/direct + "Format the answer with the letter ..."."""
        _check(variant, VARIANTS, "variant")
        return self.render("benchmark_system", variant=variant)

    def benchmark_user_text(self, question: str, options: Sequence[str]) -> str:
        """Question, "Select from the following choices." and the options as ``(A) text``, one a line."""
        return self.render("benchmark_user", question=question.strip(), options_text=_options(options, "paren"))

    def benchmark_messages(self, question: str, options: Sequence[str], image: Any = None,
                           variant: str = "think") -> Messages:
        """System + user turns of the paper's evaluation; the image part comes first in the user turn.

        With ``image=None`` (text-only benchmarks such as MMLU-Pro) the user content is a plain string.
        """
        text = self.benchmark_user_text(question, options)
        user: Any = text if image is None else [{"type": "image", "image": image}, {"type": "text", "text": text}]
        return [{"role": "system", "content": self.benchmark_system(variant)}, {"role": "user", "content": user}]


def join_cue(text: str, cue: str, separator: str = " ") -> str:
    """``text`` ending in a full stop (added if missing), then ``separator`` and ``cue`` (docs/method.md, stage 3)."""
    if separator not in ("\n", " "):
        raise ValueError(f"separator must be a newline or a space, got {separator!r}")
    text = text.rstrip()
    if not text.endswith("."):
        text += "."
    return text + separator + cue


def _options(options: Sequence[str], style: str) -> str:
    _check(style, OPTION_STYLES, "option_style")
    if not 2 <= len(options) <= len(LETTERS):
        raise PromptError(f"need 2 to {len(LETTERS)} options, got {len(options)}")
    return format_options(options, style)


def _check(value: str, allowed: Sequence[str], what: str) -> None:
    if value not in allowed:
        raise PromptError(f"{what} must be one of {tuple(allowed)}, got {value!r}")


from .authors import AuthorsWordsError, authors_templates  # noqa: E402  (it uses options_inline above)

__all__ = ["AuthorsWordsError", "BUILTIN_DIR", "MAX_RENDER_CHARS", "MAX_RENDER_SECONDS", "RenderLimit", "WORDINGS", "authors_templates", "Messages", "PromptError", "Prompts", "QUESTION_TYPES", "THINK_PREFILL", "VARIANTS",
           "join_cue", "options_inline"]
