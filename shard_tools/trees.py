"""A Galaxy Zoo decision tree as data: questions, their answers, and the answer that asks each question.

Labels inside gzfast are *cumulative fractions* (Kaggle's convention): an answer's value is the share of a
galaxy's volunteers who gave it, so a question's answers sum to the value of the answer that asks it (to 1
for a question asked of everyone). Vote counts, and a catalogue's per-question fractions, become cumulative
fractions the same way: per question, each answer's share of the question's total, times the cumulative
value of the answer that asks it (0 where the question got no votes: real catalogues' question totals need
not equal the parent's count exactly). Confidence is the largest cumulative fraction of a row.

A tree comes from `load_tree`: a built-in name (`BUILTIN_TREES`, facts in builtin_trees.py) or a small YAML
file (see docs/examples/ring-merger.yaml). A malformed tree is refused in one line naming the file and the
problem. In YAML only `true`/`false` are booleans (YAML 1.2): answers such as `yes` and `no` are words.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from .builtin_trees import BUILTIN
from .errors import UserError

BUILTIN_TREES = tuple(BUILTIN)
FRACTION_KINDS = ("per-question", "cumulative")
_TREE_KEYS = {"name", "questions", "answer_column", "count_column", "fraction_column", "fractions", "id_column",
              "file_column", "allow_unanswered", "description"}
_QUESTION_KEYS = {"name", "text", "answers", "asked_after"}
_DEFAULTS = {"answer_column": "{question}_{answer}", "count_column": "{column}_count",
             "fraction_column": "{column}_fraction", "fractions": "per-question", "id_column": "id_str",
             "file_column": "file_loc", "allow_unanswered": True}


class TreeError(UserError, ValueError):
    """A decision tree that cannot be used (unknown name, unreadable or malformed file)."""


@dataclass(frozen=True)
class Question:
    name: str                  # "Q1".."Q11" for gz2-kaggle; e.g. "smooth-or-featured" for gz-decals
    text: str                  # human text
    columns: tuple[int, ...]   # indices into Tree.columns, in answer order
    parent: int | None         # index (into Tree.columns) of the answer that asks this question; None: everyone


@dataclass(frozen=True)
class Tree:
    name: str
    columns: tuple[str, ...]           # answer names, label order
    questions: tuple[Question, ...]    # every parent's question comes before its children (checked on load)
    # How a catalogue spells the label columns of answer column `c`: counts `count_column.format(column=c)`
    # (None: the tree's catalogues carry no counts), fractions `fraction_column.format(column=c)`, which are
    # per question (each question's answers sum to 1) or already cumulative (gz2-kaggle).
    count_column: str | None = "{column}_count"
    fraction_column: str = "{column}_fraction"
    fractions: str = "per-question"
    id_column: str = "id_str"
    file_column: str | None = "file_loc"   # None: images are <id>.jpg or <id>.png
    # A question may sum to 0 instead of its parent's value when nobody answered it (vote-count catalogues
    # have such rows, e.g. DECaLS' merging question after an all-"artifact" vote). gz2-kaggle: no.
    allow_unanswered: bool = True
    answer_column: str = field(default="{question}_{answer}", compare=False)  # how to_dict names answers

    @property
    def n(self) -> int:
        return len(self.columns)

    @property
    def confidence_definition(self) -> str:
        return f"max of the {self.n} vote fractions of a row"

    def count_columns(self) -> list[str] | None:
        return None if self.count_column is None else [self.count_column.format(column=c) for c in self.columns]

    def fraction_columns(self) -> list[str]:
        return [self.fraction_column.format(column=c) for c in self.columns]

    @cached_property
    def question_of(self) -> tuple[int, ...]:
        """For each answer column, the index of its question."""
        owner = [0] * self.n
        for k, q in enumerate(self.questions):
            for c in q.columns:
                owner[c] = k
        return tuple(owner)

    # --- labels ----------------------------------------------------------------------------------------

    def _rows(self, labels) -> np.ndarray:
        arr = np.asarray(labels, dtype=np.float64)
        if arr.shape[-1:] != (self.n,):
            raise ValueError(f"expected {self.n} label values per row ({self.name} tree), got shape {arr.shape}")
        return arr

    def confidence(self, labels) -> np.ndarray | float:
        """The largest cumulative fraction of a row (or of each row of an N×n array)."""
        c = self._rows(labels).max(axis=-1)
        return float(c) if c.ndim == 0 else c

    def _sums(self, arr: np.ndarray):
        """Per question: (question, its answers' sum per row, the value they must sum to per row)."""
        for q in self.questions:
            total = arr[:, list(q.columns)].sum(axis=1)
            target = np.ones(len(arr)) if q.parent is None else arr[:, q.parent]
            yield q, total, target

    def constraint_errors(self, labels) -> np.ndarray:
        """Per row, the largest |sum of a question's answers - its parent value| (0 for an unanswered question
        where the tree allows it)."""
        arr = np.atleast_2d(self._rows(labels))
        worst = np.zeros(len(arr))
        for _, total, target in self._sums(arr):
            err = np.abs(total - target)
            if self.allow_unanswered:
                err = np.where(total == 0, 0.0, err)
            worst = np.maximum(worst, err)
        return worst

    def check_constraints(self, labels, tol: float = 1e-4) -> np.ndarray:
        """Per row, True where every value is finite and inside [-tol, 1 + tol] and the tree holds within tol."""
        arr = np.atleast_2d(self._rows(labels))
        finite = np.isfinite(arr).all(axis=1)
        in_range = ((arr >= -tol) & (arr <= 1 + tol)).all(axis=1)
        with np.errstate(invalid="ignore"):
            tree_ok = self.constraint_errors(arr) <= tol
        return finite & in_range & tree_ok

    def label_problem(self, row, tol: float = 1e-4) -> str | None:
        """Why one row of cumulative fractions is unusable, in words naming the answer, or None."""
        arr = self._rows(row)
        bad = [self.columns[i] for i in np.flatnonzero(~np.isfinite(arr))]
        if bad:
            return f"non-finite label in {', '.join(bad)}"
        bad = [f"{self.columns[i]}={arr[i]:g}" for i in np.flatnonzero((arr < -tol) | (arr > 1 + tol))]
        if bad:
            return f"label out of [0, 1]: {', '.join(bad)}"
        for q, total, target in self._sums(arr[None]):
            total, target = float(total[0]), float(target[0])
            if abs(total - target) > tol and not (self.allow_unanswered and total == 0):
                what = "1" if q.parent is None else f"{self.columns[q.parent]}={target:.6g}"
                return (f"decision tree violated: {q.name} answers sum to {total:.6g}, expected {what} "
                        f"(tolerance {tol:g})")
        return None

    def _chain(self, values) -> np.ndarray:
        """Per question, each answer's share of the question's total times the parent's cumulative value."""
        arr = self._rows(values)
        rows = np.atleast_2d(arr)
        out = np.zeros_like(rows)
        for q in self.questions:  # parents come first, so out[:, q.parent] is final here
            cols = list(q.columns)
            total = rows[:, cols].sum(axis=1, keepdims=True)
            parent = 1.0 if q.parent is None else out[:, [q.parent]]
            with np.errstate(invalid="ignore", divide="ignore"):
                out[:, cols] = np.where(total > 0, rows[:, cols] / total, 0.0) * parent
        return out.reshape(arr.shape)

    def fractions_from_counts(self, counts) -> np.ndarray:
        """N×n vote counts -> N×n cumulative fractions (0 for the answers of a question nobody answered)."""
        return self._chain(counts)

    def cumulative_from_per_question(self, frac) -> np.ndarray:
        """A catalogue's per-question fractions (NaN where nobody was asked: 0) -> cumulative fractions."""
        return self._chain(np.nan_to_num(np.asarray(frac, dtype=np.float64), nan=0.0))

    def per_question(self, cumulative) -> np.ndarray:
        """Cumulative -> per-question fractions: each question's answers sum to 1 (uniform where its total is 0)."""
        arr = self._rows(cumulative)
        rows = np.atleast_2d(arr).copy()
        for q in self.questions:
            cols = list(q.columns)
            total = rows[:, cols].sum(axis=1, keepdims=True)
            with np.errstate(invalid="ignore", divide="ignore"):
                rows[:, cols] = np.where(total > 0, rows[:, cols] / total, 1.0 / len(cols))
        return rows.reshape(arr.shape)

    # --- what a manifest records -----------------------------------------------------------------------

    def to_dict(self) -> dict:
        """The tree as data (answers spelled as their full column names); `from_dict` reads it back."""
        return {
            "name": self.name, "answer_column": "{answer}", "count_column": self.count_column,
            "fraction_column": self.fraction_column, "fractions": self.fractions, "id_column": self.id_column,
            "file_column": self.file_column, "allow_unanswered": self.allow_unanswered,
            "questions": [{"name": q.name, "text": q.text, "answers": [self.columns[c] for c in q.columns],
                           "asked_after": None if q.parent is None else self.columns[q.parent]} for q in self.questions],
        }

    @classmethod
    def from_dict(cls, d, where: str = "tree") -> Tree:
        """A tree from its data (a YAML file's content, a built-in, or `to_dict()`); TreeError names `where`."""
        return _build(d, where)


# --- building and checking a tree from data ----------------------------------------------------------

def _fail(where: str, problem: str):
    raise TreeError(f"{where}: {problem}")


def _text(value, where: str, what: str, allow_none: bool = False) -> str | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int) or not str(value).strip():
        _fail(where, f"{what} must be a non-empty word, got {value!r}")
    return str(value).strip()


def _format(value, where: str, key: str, placeholders: tuple[str, ...], allow_none: bool = False) -> str | None:
    text = _text(value, where, key, allow_none)
    if text is None:
        return None
    try:
        text.format(**{p: "x" for p in placeholders})
    except (KeyError, IndexError, ValueError) as exc:
        _fail(where, f"{key} {text!r} is not a name pattern with {', '.join('{' + p + '}' for p in placeholders)} "
                     f"({exc!r})")
    if "{" + placeholders[-1] + "}" not in text:
        _fail(where, f"{key} {text!r} must contain {{{placeholders[-1]}}}")
    return text


def _options(d: dict, where: str) -> dict:
    unknown = sorted(set(d) - _TREE_KEYS)
    if unknown:
        _fail(where, f"unknown key(s) {', '.join(map(str, unknown))}; a tree has {', '.join(sorted(_TREE_KEYS))}")
    opts = {**_DEFAULTS, **{k: v for k, v in d.items() if k in _DEFAULTS}}
    out = {"answer_column": _format(opts["answer_column"], where, "answer_column", ("question", "answer")),
           "count_column": _format(opts["count_column"], where, "count_column", ("column",), allow_none=True),
           "fraction_column": _format(opts["fraction_column"], where, "fraction_column", ("column",)),
           "id_column": _text(opts["id_column"], where, "id_column"),
           "file_column": _text(opts["file_column"], where, "file_column", allow_none=True)}
    if opts["fractions"] not in FRACTION_KINDS:
        _fail(where, f"fractions must be one of {', '.join(FRACTION_KINDS)}, got {opts['fractions']!r}")
    if not isinstance(opts["allow_unanswered"], bool):
        _fail(where, f"allow_unanswered must be true or false, got {opts['allow_unanswered']!r}")
    return {**out, "fractions": opts["fractions"], "allow_unanswered": opts["allow_unanswered"]}


def _question_columns(d: dict, where: str, answer_column: str) -> list[tuple[str, str, list[str], str | None]]:
    """Per question: (name, text, answer column names, the answer column that asks it or None)."""
    raw = d.get("questions")
    if not isinstance(raw, list) or not raw:
        _fail(where, "a tree needs a non-empty list of questions")
    out, names = [], set()
    for i, q in enumerate(raw, 1):
        if not isinstance(q, dict):
            _fail(where, f"question {i} is not a mapping with name, text, answers, asked_after")
        unknown = sorted(map(str, set(q) - _QUESTION_KEYS))
        if unknown:
            _fail(where, f"question {i}: unknown key(s) {', '.join(unknown)}; a question has "
                         f"{', '.join(sorted(_QUESTION_KEYS))}")
        name = _text(q.get("name"), where, f"question {i}'s name")
        if name in names:
            _fail(where, f"question name {name} appears twice; give every question its own name")
        names.add(name)
        answers = q.get("answers")
        if not isinstance(answers, list) or len(answers) < 2:
            _fail(where, f"question {name} has {len(answers) if isinstance(answers, list) else 'no list of'} "
                         f"answer(s); a question needs at least 2")
        words = [_text(a, where, f"an answer of question {name}") for a in answers]
        text = _text(q.get("text", name), where, f"question {name}'s text")
        parent = _text(q.get("asked_after"), where, f"question {name}'s asked_after", allow_none=True)
        out.append((name, text, [answer_column.format(question=name, answer=a) for a in words], parent))
    return out


def _check_structure(where: str, specs, owner: dict[str, int]):
    """Unknown parents, cycles and questions listed before their parent's question are refused."""
    for name, _, _, parent in specs:
        if parent is not None and parent not in owner:
            shown = ", ".join(list(owner)[:8]) + (", ..." if len(owner) > 8 else "")
            _fail(where, f"question {name} is asked after {parent}, which is no answer of this tree (answers: {shown})")
    for k, (name, _, _, _) in enumerate(specs):
        path, seen, j = [name], {k}, k
        while specs[j][3] is not None:
            j = owner[specs[j][3]]
            path.append(specs[j][0])
            if j in seen:
                _fail(where, f"questions ask each other in a cycle ({' -> '.join(path)}); one of them must be asked "
                             f"after an answer outside the cycle or of everyone")
            seen.add(j)
    for k, (name, _, _, parent) in enumerate(specs):
        if parent is not None and owner[parent] > k:
            _fail(where, f"question {name} is listed before {specs[owner[parent]][0]}, whose answer {parent} asks it; "
                         f"list every question after the question that asks it")


def _build(d, where: str) -> Tree:
    if not isinstance(d, dict):
        _fail(where, "a tree is a mapping with name and questions")
    name = _text(d.get("name"), where, "the tree's name")
    opts = _options(d, where)
    specs = _question_columns(d, where, opts["answer_column"])
    owner: dict[str, int] = {}
    for k, (qname, _, cols, _) in enumerate(specs):
        for c in cols:
            if c in owner:
                _fail(where, f"answer column {c} appears twice (questions {specs[owner[c]][0]} and {qname}); "
                             f"answer columns must be unique")
            owner[c] = k
    _check_structure(where, specs, owner)
    columns = [c for _, _, cols, _ in specs for c in cols]
    index = {c: i for i, c in enumerate(columns)}
    questions = tuple(Question(qname, text, tuple(index[c] for c in cols), None if parent is None else index[parent])
                      for qname, text, cols, parent in specs)
    return Tree(name, tuple(columns), questions, **{k: v for k, v in opts.items()})


# --- loading -------------------------------------------------------------------------------------------

def _yaml_loader():
    """PyYAML's safe loader with YAML 1.2 booleans: `yes`, `no`, `on`, `off` stay words (answer names)."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    bool_tag = "tag:yaml.org,2002:bool"
    Loader.yaml_implicit_resolvers = {k: [(tag, rx) for tag, rx in v if tag != bool_tag]
                                      for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
    Loader.add_implicit_resolver(bool_tag, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
    return Loader


def read_tree_file(path: str | Path) -> Tree:
    import yaml
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise TreeError(f"{path}: cannot read the tree file ({reason})") from None
    try:
        data = yaml.load(text, Loader=_yaml_loader())  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f"line {mark.line + 1}: " if mark is not None else ""
        raise TreeError(f"{path}: not valid YAML ({at}{getattr(exc, 'problem', None) or exc}); fix the file") from None
    return _build(data, str(path))


_BUILT: dict[str, Tree] = {}


def builtin_tree(name: str) -> Tree:
    if name not in _BUILT:
        _BUILT[name] = _build(BUILTIN[name], f"built-in tree {name}")
    return _BUILT[name]


def load_tree(name_or_path: str | Path) -> Tree:
    """A built-in tree by name, or a tree from a YAML file; TreeError (one line) otherwise."""
    text = str(name_or_path)
    if text in BUILTIN:
        return builtin_tree(text)
    path = Path(text)
    if path.is_file():
        return read_tree_file(path)
    what = "is not a file" if path.exists() else "is neither a built-in tree nor an existing file"
    raise TreeError(f"{text}: {what}; pass one of {', '.join(BUILTIN_TREES)} or a tree's YAML file "
                    f"(e.g. docs/examples/ring-merger.yaml)")


GZ2_KAGGLE = builtin_tree("gz2-kaggle")
