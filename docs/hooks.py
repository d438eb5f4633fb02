"""MkDocs hooks of the documentation site (registered in mkdocs.yml ``hooks:``).

- The configuration reference is generated at every build from the structured-config schemas
  (``agop_sweep/config/schema.py``) and the option files under ``conf/``: every group, option
  and key with its type or choices, its default and its meaning, where a key's meaning is the
  comment written next to (or right above) its field in the schema, a class's the class
  docstring, an option's the header comment of its YAML file. The page
  ``configuration.md`` holds the marker ``<!-- configuration-reference -->`` where it goes.
- A public name of the Python API without a docstring is a warning, so ``mkdocs build
  --strict`` fails on it.

``reference_markdown()`` is importable on its own (tests/test_docs.py loads this file).
"""

from __future__ import annotations

import ast
import dataclasses
import enum
import inspect
import io
import json
import logging
import re
import textwrap
import tokenize
import typing
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from agop_sweep.config import schema
from agop_sweep.config.store import is_run_control_key

MARKER = "<!-- configuration-reference -->"
# The checkout's conf/, beside the package (as the editable install and the wheel map it).
CONF = Path(schema.__file__).resolve().parents[2] / "conf"
# The groups in the order of conf/config.yaml's defaults list, then the Config sections.
PRESET_GROUPS = ("hparams_search", "cluster", "experiment")

log = logging.getLogger(f"mkdocs.plugins.{__name__}")


# -- the schema's comments ---------------------------------------------------------------------


@cache
def _module_tree() -> tuple[ast.Module, dict[int, str], list[str]]:
    """schema.py parsed, its comments by line number, and its lines."""
    source = inspect.getsource(schema)
    comments: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
    return ast.parse(source), comments, source.splitlines()


@cache
def _class_nodes() -> dict[str, ast.ClassDef]:
    tree, _, _ = _module_tree()
    return {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}


def _comment_of(stmt: ast.stmt) -> str:
    """The comment lines right above ``stmt`` (no blank line between) and the comments on its
    own lines, in that order, as one text."""
    _, comments, lines = _module_tree()
    above = []
    line = stmt.lineno - 1
    while line >= 1 and lines[line - 1].strip().startswith("#"):
        above.insert(0, comments[line])
        line -= 1
    inline = [comments[n] for n in range(stmt.lineno, (stmt.end_lineno or stmt.lineno) + 1) if n in comments]
    return " ".join(above + inline).strip()


def _statement_comments(cls: type) -> dict[str, str]:
    """Field (or enum member) name -> its comment, for the class itself (not its bases)."""
    node = _class_nodes().get(cls.__name__)
    out: dict[str, str] = {}
    if node is None:
        return out
    for stmt in node.body:
        if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
            out[stmt.target.id] = _comment_of(stmt)
        elif isinstance(stmt, ast.Assign) and isinstance(stmt.targets[0], ast.Name):
            out[stmt.targets[0].id] = _comment_of(stmt)
    return out


def class_doc(cls: type) -> str:
    """The class's own docstring as one paragraph ("" when it has none: a dataclass's
    generated signature does not count)."""
    node = _class_nodes().get(cls.__name__)
    doc = ast.get_docstring(node) if node is not None else None
    return " ".join((doc or "").split())


def field_meaning(cls: type, name: str) -> str:
    """The comment of field ``name``, from the nearest class in ``cls``'s MRO that declares it
    with a comment ("" when none does)."""
    for klass in cls.__mro__:
        text = _statement_comments(klass).get(name)
        if text:
            return text
    return ""


def enum_meanings(enum_cls: type[enum.Enum]) -> dict[str, str]:
    """Every member name (aliases included) -> its comment ("" when it has none)."""
    comments = _statement_comments(enum_cls)
    return {name: comments.get(name, "") for name in enum_cls.__members__}


# -- rendering -----------------------------------------------------------------------------------


def _code(text: str) -> str:
    return f"`{text}`"


def _text(text: str) -> str:
    """A comment or docstring as markdown: reST's ``code`` as `code`; outside code, ``<`` and
    ``>`` as entities (``<run dir>`` is no HTML tag) and ``|`` escaped (it would end a table cell)."""
    text = re.sub(r"``(.+?)``", r"`\1`", text)
    parts = text.split("`")
    for i in range(0, len(parts), 2):
        parts[i] = (parts[i].replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
                    .replace("|", "\\|"))
    return "`".join(parts)


def _yaml_value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, enum.Enum):
        return str(value.value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value if value else '""'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_yaml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return json.dumps(value)
    return str(value)


def _default(f: dataclasses.Field[Any]) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def _enum_type(tp: Any) -> type[enum.Enum] | None:
    return tp if isinstance(tp, type) and issubclass(tp, enum.Enum) else None


def _type_text(tp: Any) -> str:
    choices = _enum_type(tp)
    if choices is not None:
        return ", ".join(_code(name) for name in choices.__members__)
    if isinstance(tp, type) and not typing.get_args(tp):
        return tp.__name__
    return str(tp).replace("typing.", "")


def key_rows(cls: type, prefix: str) -> list[tuple[str, str, str, str]]:
    """(key, type or choices, default, meaning) for every field of dataclass ``cls``, the key
    dotted under ``prefix``, the meaning as markdown with line breaks between its parts."""
    hints = typing.get_type_hints(cls, vars(schema))
    rows = []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        key = f"{prefix}.{f.name}" if prefix else f.name
        parts = [_text(field_meaning(cls, f.name))]
        choices = _enum_type(tp)
        if choices is not None:
            for name, text in enum_meanings(choices).items():
                value = choices.__members__[name].value
                if name != value:
                    parts.append(f"{_code(name)}: another name of {_code(value)}")
                elif text:
                    parts.append(f"{_code(name)}: {_text(text)}")
        if is_run_control_key(key):
            parts.append("*Run-control key*: it may differ when the run is resumed.")
        default = _default(f)
        shown = "required" if default == "???" else _code(_yaml_value(default))
        rows.append((key, _type_text(tp), shown, "\n".join(p for p in parts if p)))
    return rows


def _key_table(rows: list[tuple[str, str, str, str]]) -> list[str]:
    out = ["| key | type or choices | default | meaning |", "| --- | --- | --- | --- |"]
    out += [f"| {_code(k)} | {t} | {d} | {m.replace(chr(10), '<br>')} |" for k, t, d, m in rows]
    return out


# -- conf/ ------------------------------------------------------------------------------------


def default_options() -> dict[str, str | None]:
    """Group -> the option conf/config.yaml selects (None: no option by default), in the order
    of its defaults list."""
    config = yaml.safe_load((CONF / "config.yaml").read_text())
    out: dict[str, str | None] = {}
    for entry in config["defaults"]:
        if isinstance(entry, dict):
            out.update(entry)
    return out


def options(group: str) -> list[str]:
    """A group's options: the default first, then the schema's order (or the files' names)."""
    names = sorted(p.stem for p in (CONF / group).glob("*.yaml"))
    order = list(schema.OPTION_SCHEMAS.get(group, {}))
    names.sort(key=lambda n: order.index(n) if n in order else len(order))
    default = default_options().get(group)
    return sorted(names, key=lambda n: n != default)


def option_header(group: str, option: str) -> list[tuple[str, str]]:
    """An option file's header comment as blocks in order: ("text", a paragraph) and ("code",
    the command lines, indented by two or more spaces). The line that points at the schema is
    left out: this page is that pointer."""
    blocks: list[tuple[str, str]] = []
    for line in (CONF / group / f"{option}.yaml").read_text().splitlines():
        if not line.startswith("#"):
            break
        body = line[1:]
        if body.strip().startswith(("@package", "Keys and defaults:")) or not body.strip():
            continue
        kind = "code" if body.startswith("   ") else "text"
        piece = body[1:] if kind == "code" else body.strip()
        if blocks and blocks[-1][0] == kind:
            blocks[-1] = (kind, blocks[-1][1] + ("\n" if kind == "code" else " ") + piece)
        else:
            blocks.append((kind, piece))
    return [(kind, textwrap.dedent(text) if kind == "code" else text) for kind, text in blocks]


def option_summary(group: str, option: str) -> str:
    """An option's header as table-cell markdown: its text, its commands as code."""
    parts = []
    for kind, text in option_header(group, option):
        if kind == "code":
            parts += [_code(" ".join(text.replace("\\\n", " ").split()))]
        else:
            parts.append(_text(text))
    return "<br>".join(parts)


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in node.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            out.update(_flatten(value, dotted))
        else:
            out[dotted] = value
    return out


def option_settings(group: str, option: str, package_global: bool) -> list[str]:
    """What an option file sets, as ``key=value``, the options its defaults list overrides first."""
    data = yaml.safe_load((CONF / group / f"{option}.yaml").read_text()) or {}
    out = []
    for entry in data.pop("defaults", []) or []:
        if isinstance(entry, dict):
            for key, value in entry.items():
                if key.startswith("override "):
                    out.append(f"{key.removeprefix('override ').lstrip('/')}={value}")
    for key, value in _flatten(data).items():
        dotted = key if package_global else f"{group}.{key}"
        out.append(f"{dotted}={_yaml_value(value)}")
    return out


# -- the page ------------------------------------------------------------------------------------


def _options_line(group: str, default: str | None, tail: str) -> str:
    names = ", ".join(_code(o) for o in options(group))
    return f"Options: {names}; the default: {_code(default) if default else 'none'}. {tail}"


def _option_group(group: str, schemas: dict[str, type], default: str | None) -> list[str]:
    out = [f"## `{group}`", "", _options_line(group, default, "Each option has a schema of its own: "
                                              "a key of another option is refused at composition."), ""]
    out += ["| option | schema | what it is |", "| --- | --- | --- |"]
    for option in options(group):
        out.append(f"| [{_code(f'{group}={option}')}](#{group}-{option}) | `{schemas[option].__name__}` "
                   f"| {option_summary(group, option)} |")
    out.append("")
    for option in options(group):
        cls = schemas[option]
        out += [f"### `{group}={option}` {{#{group}-{option}}}", ""]
        doc = class_doc(cls)
        if doc:
            out += [_text(doc), ""]
        settings = option_settings(group, option, package_global=False)
        if settings:
            out += ["The option sets " + ", ".join(_code(s) for s in settings) + ".", ""]
        out += [*_key_table(key_rows(cls, group)), ""]
    return out


def _shared_group(group: str, cls: type, default: str | None) -> list[str]:
    out = [f"## `{group}`", ""]
    doc = class_doc(cls)
    if doc:
        out += [_text(doc), ""]
    out += [_options_line(group, default, f"Every option has the schema `{cls.__name__}` and sets "
                                          "some of its keys."), ""]
    out += ["| option | sets | what it is |", "| --- | --- | --- |"]
    for option in options(group):
        settings = option_settings(group, option, package_global=False)
        shown = ", ".join(_code(s) for s in settings) or "nothing"
        out.append(f"| {_code(f'{group}={option}')} | {shown} | {option_summary(group, option)} |")
    out += ["", *_key_table(key_rows(cls, group)), ""]
    return out


def _preset_group(group: str) -> list[str]:
    out = [f"## `{group}`", "", _options_line(group, None, "A preset has no schema: it sets keys of "
                                              "other groups, and Hydra's own (`hydra.*`), at once."), ""]
    for option in options(group):
        out += [f"### `{group}={option}` {{#{group}-{option}}}", ""]
        for kind, text in option_header(group, option):
            out += (["```bash", text, "```"] if kind == "code" else [_text(text)]) + [""]
        settings = option_settings(group, option, package_global=True)
        out += ["It sets:", ""] + [f"- {_code(s)}" for s in settings] + [""]
    return out


def _section(name: str, cls: type) -> list[str]:
    out = [f"## `{name}`", ""]
    doc = class_doc(cls)
    if doc:
        out += [_text(doc), ""]
    return out + _key_table(key_rows(cls, name)) + [""]


def config_sections() -> dict[str, type]:
    """Config's own sections that are not groups (``eval``, ``trainer``): key -> dataclass."""
    hints = typing.get_type_hints(schema.Config, vars(schema))
    return {f.name: hints[f.name] for f in dataclasses.fields(schema.Config)
            if dataclasses.is_dataclass(hints[f.name]) and f.name not in schema.OPTION_SCHEMAS
            and f.name not in schema.GROUP_SCHEMAS}


def top_level_keys() -> list[str]:
    """Config's own keys that are neither a group nor a section (``seed``, ``device``, ...)."""
    hints = typing.get_type_hints(schema.Config, vars(schema))
    return [f.name for f in dataclasses.fields(schema.Config) if not dataclasses.is_dataclass(hints[f.name])]


def reference_markdown() -> str:
    """The configuration reference: every group, option and key of the schema, as markdown."""
    defaults = default_options()
    out: list[str] = []
    for group in defaults:
        if group in schema.OPTION_SCHEMAS:
            out += _option_group(group, schema.OPTION_SCHEMAS[group], defaults[group])
        elif group in schema.GROUP_SCHEMAS:
            out += _shared_group(group, schema.GROUP_SCHEMAS[group], defaults[group])
        elif group in PRESET_GROUPS:
            out += _preset_group(group)
    for name, cls in config_sections().items():
        out += _section(name, cls)
    rows = [r for r in key_rows(schema.Config, "") if r[0] in top_level_keys()]
    out += ["## Top-level keys", "", _text(class_doc(schema.Config)), "", *_key_table(rows)]
    return "\n".join(out).rstrip() + "\n"


# -- the public API's docstrings ---------------------------------------------------------------------


def _has_docstring(obj: Any) -> bool:
    doc = inspect.getdoc(obj) or ""
    if inspect.isclass(obj) and dataclasses.is_dataclass(obj) and doc.startswith(f"{obj.__name__}("):
        return False  # the signature dataclasses writes when a class has no docstring
    return bool(doc.strip())


def undocumented_api() -> list[str]:
    """Public names of the Python API (``agop_sweep.api.__all__``, which ``agop_sweep``
    re-exports) and their public methods and properties, that lack a docstring."""
    import importlib

    try:
        module = importlib.import_module("agop_sweep.api")
    except ImportError as err:
        return [f"agop_sweep.api ({err})"]
    missing = []
    for name in getattr(module, "__all__", []):
        obj = getattr(module, name)
        if not _has_docstring(obj):
            missing.append(name)
        if inspect.isclass(obj):
            for attr, member in vars(obj).items():
                routine = inspect.isfunction(member) or isinstance(member, property)
                if not attr.startswith("_") and routine and not _has_docstring(member):
                    missing.append(f"{name}.{attr}")
    return [f"agop_sweep.api.{name}" for name in missing]


# -- MkDocs' hooks ---------------------------------------------------------------------------------


def on_pre_build(config: Any) -> None:
    for name in undocumented_api():
        log.warning("The Python API's %s has no docstring", name)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    if MARKER in markdown:
        return markdown.replace(MARKER, reference_markdown())
    return markdown
