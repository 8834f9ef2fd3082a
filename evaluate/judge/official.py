"""The ``videochatgpt`` protocol: the messages Video-ChatGPT's own scoring scripts send.

redvillm ships none of their text. The user points ``--official-scripts`` at their copy of
Video-ChatGPT's ``quantitative_evaluation/`` folder; for each criterion we read one script
with Python's ``ast`` (the scripts are never imported or run) and rebuild, for every row,
the exact system and user messages that script would send for it, plus its request keywords
(the model name, and a temperature if the script sets one).

What the parser expects of each script (the layout of the public release):
- a function ``annotate`` containing one call with a ``messages=[...]`` keyword: a list of
  ``{"role": ..., "content": ...}`` dict literals whose content is made of string literals
  and f-strings (implicitly concatenated or joined with ``+``), whose placeholders are plain
  variable names;
- in ``annotate``, each such variable is read from the per-row dict, ``name = qa_set['q']``;
- in ``main``, that dict is built as a literal, ``{"q": question, ...}``, from variables read
  from the prediction row, ``question = sample['Q']``; the row fields the prompts may use are
  Q, A, pred (QA and criteria 1-4) and Q1, Q2, A, pred1, pred2 (consistency).
A script that does not match names its file and what was expected, in one line.
"""

from __future__ import annotations

import ast
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from redvillm.errors import UserError
from redvillm.evaluate.judge.protocols import Message, check_criterion

SCRIPTS = {
    "qa": "evaluate_activitynet_qa.py",
    "ci": "evaluate_benchmark_1_correctness.py",
    "do": "evaluate_benchmark_2_detailed_orientation.py",
    "cu": "evaluate_benchmark_3_context.py",
    "tu": "evaluate_benchmark_4_temporal.py",
    "co": "evaluate_benchmark_5_consistency.py",
}
# The peer's prediction-row fields -> our item fields (protocols.item_fields).
ROW_FIELDS = {"Q": "question", "A": "answer", "pred": "pred", "Q1": "question1", "Q2": "question2",
              "pred1": "pred1", "pred2": "pred2"}
_CONVERSIONS = {-1: lambda v: format(v, ""), ord("s"): str, ord("r"): repr, ord("a"): ascii}


class ScriptLayoutError(Exception):
    """A script that does not have the expected layout (the message says what was expected)."""


@dataclass(frozen=True)
class Template:
    """A message's content: literal text and placeholders ("field", our item field, conversion)."""

    parts: tuple[tuple[str, str, int], ...]

    def render(self, fields: Mapping[str, Any]) -> str:
        # An f-string formats each value with format(value, "") (or its !s/!r/!a conversion).
        return "".join(text if kind == "text" else _CONVERSIONS[conv](fields[text])
                       for kind, text, conv in self.parts)


@dataclass(frozen=True)
class OfficialScript:
    criterion: str
    path: str
    sha256: str
    roles: tuple[str, ...]
    templates: tuple[Template, ...]
    request: dict  # the call's other keywords: model, and temperature etc. when the script sets them

    def messages(self, fields: Mapping[str, Any]) -> list[Message]:
        return [{"role": role, "content": t.render(fields)} for role, t in zip(self.roles, self.templates)]


def load_script(directory: str | Path, criterion: str) -> OfficialScript:
    """Parse the official script of ``criterion`` in ``directory`` (never executed)."""
    check_criterion(criterion)
    folder = Path(directory)
    if not folder.is_dir():
        raise UserError(f"--official-scripts {folder}: not a directory; give your copy of Video-ChatGPT's "
                        "quantitative_evaluation/ folder")
    path = folder / SCRIPTS[criterion]
    if not path.is_file():
        raise UserError(f"{path}: not found; --official-scripts must hold Video-ChatGPT's {SCRIPTS[criterion]} "
                        f"(the script of criterion {criterion})")
    source = path.read_bytes()
    try:
        tree = ast.parse(source, filename=str(path))
        roles, templates, request = _parse(tree)
    except SyntaxError as err:
        raise UserError(f"{path}: not parseable Python ({err.msg}, line {err.lineno})") from None
    except ScriptLayoutError as err:
        raise UserError(f"{path}: {err}") from None
    return OfficialScript(criterion, str(path), hashlib.sha256(source).hexdigest(), roles, templates, request)


def _parse(tree: ast.Module) -> tuple[tuple[str, ...], tuple[Template, ...], dict]:
    annotate, main = _function(tree, "annotate"), _function(tree, "main")
    call = _chat_call(annotate)
    request = {}
    for kw in call.keywords:
        if kw.arg != "messages":
            try:
                request[kw.arg] = ast.literal_eval(kw.value)
            except ValueError:
                raise ScriptLayoutError(f"expected a literal value for the chat call's {kw.arg}= keyword") from None
    if "model" not in request:
        raise ScriptLayoutError("expected a model= keyword in the chat call of annotate()")
    messages = next(kw.value for kw in call.keywords if kw.arg == "messages")
    if not isinstance(messages, ast.List) or not messages.elts:
        raise ScriptLayoutError("expected messages=[...] to be a list literal of message dicts")
    resolve = _field_resolver(annotate, main)
    roles, templates = [], []
    for node in messages.elts:
        role, content = _message(node)
        roles.append(role)
        templates.append(Template(tuple(
            (kind, resolve(text) if kind == "field" else text, conv) for kind, text, conv in _parts(content, role))))
    return tuple(roles), tuple(templates), request


def _function(tree: ast.Module, name: str) -> ast.FunctionDef:
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == name:
            return node
    raise ScriptLayoutError(f"expected a top-level function {name}()")


def _chat_call(annotate: ast.FunctionDef) -> ast.Call:
    calls = [n for n in ast.walk(annotate) if isinstance(n, ast.Call) and any(k.arg == "messages" for k in n.keywords)]
    if len(calls) != 1:
        raise ScriptLayoutError(f"expected exactly one chat call with messages= in annotate(), found {len(calls)}")
    return calls[0]


def _message(node: ast.AST) -> tuple[str, ast.AST]:
    if not isinstance(node, ast.Dict) or not all(isinstance(k, ast.Constant) for k in node.keys):
        raise ScriptLayoutError('expected each message to be a dict literal {"role": ..., "content": ...}')
    entries = {k.value: v for k, v in zip(node.keys, node.values)}
    role = entries.get("role")
    if set(entries) != {"role", "content"} or not (isinstance(role, ast.Constant) and isinstance(role.value, str)):
        raise ScriptLayoutError('expected each message to have exactly a literal "role" and a "content"')
    return role.value, entries["content"]


def _parts(node: ast.AST, role: str) -> list[tuple[str, str, int]]:
    """Literal text and placeholders of a string expression, in order."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [("text", node.value, -1)]
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return _parts(node.left, role) + _parts(node.right, role)
    if isinstance(node, ast.JoinedStr):
        out = []
        for value in node.values:
            if isinstance(value, ast.FormattedValue):
                if not isinstance(value.value, ast.Name) or value.format_spec is not None:
                    raise ScriptLayoutError(f"expected the {role} message's f-string placeholders to be plain "
                                            f"variable names, found {{{ast.unparse(value.value)}...}}")
                out.append(("field", value.value.id, value.conversion))
            else:
                out.extend(_parts(value, role))
        return out
    raise ScriptLayoutError(f"expected the {role} message's content to be string literals and f-strings, "
                            f"found {type(node).__name__}")


def _subscript_assignments(function: ast.FunctionDef) -> dict[str, tuple[str, str]]:
    """``name = container['key']`` in ``function``: name -> (container, key)."""
    found = {}
    for node in ast.walk(function):
        if (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
                and isinstance(node.value, ast.Subscript) and isinstance(node.value.value, ast.Name)
                and isinstance(node.value.slice, ast.Constant) and isinstance(node.value.slice.value, str)):
            found[node.targets[0].id] = (node.value.value.id, node.value.slice.value)
    return found


def _row_dict(main: ast.FunctionDef) -> dict[str, str]:
    """The per-row dict literal built in main(): its key -> the variable it holds."""
    for node in ast.walk(main):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict) and node.value.keys and all(
                isinstance(k, ast.Constant) and isinstance(k.value, str) for k in node.value.keys) and all(
                isinstance(v, ast.Name) for v in node.value.values):
            return {k.value: v.id for k, v in zip(node.value.keys, node.value.values)}
    raise ScriptLayoutError('expected main() to build each row\'s dict as a literal, e.g. {"q": question, ...}')


def _field_resolver(annotate: ast.FunctionDef, main: ast.FunctionDef):
    in_annotate, in_main, row_dict = _subscript_assignments(annotate), _subscript_assignments(main), None

    def resolve(variable: str) -> str:
        nonlocal row_dict
        if variable not in in_annotate:
            raise ScriptLayoutError(f"expected annotate() to read {variable} from the row dict "
                                    f"({variable} = qa_set['...'])")
        row_key = in_annotate[variable][1]
        row_dict = row_dict if row_dict is not None else _row_dict(main)
        if row_key not in row_dict or row_dict[row_key] not in in_main:
            raise ScriptLayoutError(f"expected main() to fill the row dict's {row_key!r} from a prediction-row "
                                    "field (x = sample['...'])")
        field = in_main[row_dict[row_key]][1]
        if field not in ROW_FIELDS:
            raise ScriptLayoutError(f"the prompt uses prediction-row field {field!r}; expected one of "
                                    f"{', '.join(ROW_FIELDS)}")
        return ROW_FIELDS[field]

    return resolve


class VideoChatGPTProtocol:
    """Video-ChatGPT's messages, read from the user's copy of its scripts."""

    name = "videochatgpt"

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self._scripts: dict[str, OfficialScript] = {}

    def script(self, criterion: str) -> OfficialScript:
        if criterion not in self._scripts:
            self._scripts[criterion] = load_script(self.directory, criterion)
        return self._scripts[criterion]

    def messages(self, criterion: str, fields: Mapping[str, Any], attempt: int = 0) -> list[Message]:
        script = self.script(criterion)
        try:
            return script.messages(fields)
        except KeyError as err:  # the consistency script asked to judge a QA row, or the reverse
            raise UserError(f"{script.path}: its prompt needs field {err.args[0]!r}, which criterion "
                            f"{criterion}'s rows do not have") from None

    def describe(self, criterion: str) -> dict:
        script = self.script(criterion)
        return {"name": self.name, "criterion": criterion, "script": script.path, "script_sha256": script.sha256,
                "official_request": script.request}
