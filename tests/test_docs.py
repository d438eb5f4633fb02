"""The documentation site: its configuration reference, generated from the schemas by
docs/hooks.py, names every group, option and key with a meaning, and ``mkdocs build --strict``
passes (no broken link or anchor, no public API name without a docstring)."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import yaml
from conftest import composing
from omegaconf import OmegaConf

from agop_sweep.config import flatten
from agop_sweep.config.schema import GROUP_SCHEMAS, OPTION_SCHEMAS, Config

ROOT = Path(__file__).resolve().parents[1]


def _hooks() -> ModuleType:
    spec = importlib.util.spec_from_file_location("agop_sweep_docs_hooks", ROOT / "docs" / "hooks.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


HOOKS = _hooks()
REFERENCE = HOOKS.reference_markdown()


def _section(heading: str) -> str:
    """The reference's text under ``heading`` (a whole line), up to the next heading of its
    level or above."""
    level = len(heading.split(" ", 1)[0])
    start = REFERENCE.index(heading + "\n")
    end = re.search(rf"^#{{1,{level}}} ", REFERENCE[start + len(heading):], flags=re.M)
    return REFERENCE[start:start + len(heading) + end.start()] if end else REFERENCE[start:]


def _rows(text: str) -> dict[str, str]:
    """A section's key tables: key -> the row's meaning cell."""
    rows = {}
    for line in text.splitlines():
        m = re.match(r"^\| `([\w.]+)` \| .* \| (.*) \|$", line)
        if m:
            rows[m.group(1)] = m.group(2)
    return rows


def _groups_on_disk() -> dict[str, list[str]]:
    conf = ROOT / "conf"
    return {d.name: sorted(p.stem for p in d.glob("*.yaml")) for d in conf.iterdir() if d.is_dir()
            and list(d.glob("*.yaml"))}


def test_every_group_and_option_of_conf_is_in_the_reference() -> None:
    groups = _groups_on_disk()
    defaults = yaml.safe_load((ROOT / "conf" / "config.yaml").read_text())["defaults"]
    assert sorted(groups) == sorted(next(iter(e)) for e in defaults if isinstance(e, dict))
    for group, options in groups.items():
        section = _section(f"## `{group}`")
        for option in options:
            assert f"`{group}={option}`" in section, f"{group}={option}"
    for group, schemas in OPTION_SCHEMAS.items():
        assert sorted(schemas) == groups[group], group


@pytest.mark.parametrize("group", sorted(OPTION_SCHEMAS))
def test_every_key_of_every_option_schema_has_a_row_with_a_meaning(group: str) -> None:
    for option, cls in OPTION_SCHEMAS[group].items():
        rows = _rows(_section(f"### `{group}={option}` {{#{group}-{option}}}"))
        keys = [f"{group}.{f.name}" for f in dataclasses.fields(cls)]
        assert list(rows) == keys, (option, keys)
        assert all(rows[k].strip() for k in keys), [k for k in keys if not rows[k].strip()]


def test_every_key_of_the_other_schemas_has_a_row_with_a_meaning() -> None:
    schemas = {**GROUP_SCHEMAS, **HOOKS.config_sections()}
    assert sorted(HOOKS.config_sections()) == ["eval", "trainer"]
    for name, cls in schemas.items():
        rows = _rows(_section(f"## `{name}`"))
        keys = [f"{name}.{f.name}" for f in dataclasses.fields(cls)]
        assert list(rows) == keys, name
        assert all(rows[k].strip() for k in keys), [k for k in keys if not rows[k].strip()]
    rows = _rows(_section("## Top-level keys"))
    covered = set(OPTION_SCHEMAS) | set(schemas)
    top = [f.name for f in dataclasses.fields(Config) if f.name not in covered]
    assert list(rows) == top and top == HOOKS.top_level_keys()
    assert all(rows[k].strip() for k in top)


def test_the_reference_lists_every_key_that_cfg_job_shows() -> None:
    """Every key of the composed config (what ``--cfg job`` prints), for every option of every
    group, preset groups included, is a row of the reference."""
    rows = _rows(REFERENCE)
    with composing() as compose:
        for group, options in _groups_on_disk().items():
            for option in options:
                cfg = compose(f"{group}={option}")
                keys = flatten(OmegaConf.to_container(cfg, resolve=True))
                missing = sorted(k for k in keys if k not in rows)
                assert not missing, f"{group}={option}: {missing}"


def test_defaults_and_choices_follow_the_schema() -> None:
    rows = {}
    for line in REFERENCE.splitlines():
        m = re.match(r"^\| `([\w.]+)` \| (.*?) \| (.*?) \| .* \|$", line)
        if m:
            rows.setdefault(m.group(1), (m.group(2), m.group(3)))
    assert rows["trainer.precision"] == ("`fp32`, `tf32`, `bf16`, `fp16`, `fp16_on_cuda`", "`tf32`")
    assert rows["seed"] == ("int", "`1717`")
    assert rows["schedule.epochs"][1] == "required"
    sgd = _rows(_section("### `optimizer=sgd` {#optimizer-sgd}"))
    assert "Run-control key" not in sgd["optimizer.lr"]
    assert "Run-control key" in _rows(_section("## `trainer`"))["trainer.plots"]
    seed = _section("### `experiment=seed` {#experiment-seed}")
    preset = yaml.safe_load((ROOT / "conf" / "experiment" / "seed.yaml").read_text())
    assert f"`trainer.precision={preset['trainer']['precision']}`" in seed


def test_the_hook_fills_the_configuration_page() -> None:
    page = (ROOT / "docs" / "configuration.md").read_text()
    assert page.count(HOOKS.MARKER) == 1
    assert HOOKS.on_page_markdown(page, None, None, None) == page.replace(HOOKS.MARKER, REFERENCE)


def test_every_page_is_in_the_navigation_and_every_figure_is_used() -> None:
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    nav = [next(iter(entry.values())) for entry in config["nav"]]
    pages = sorted(p.name for p in (ROOT / "docs").glob("*.md"))
    assert sorted(nav) == pages
    text = "".join((ROOT / "docs" / p).read_text() for p in pages)
    unused = [p.name for p in (ROOT / "docs" / "img").glob("*.png") if f"img/{p.name}" not in text]
    assert not unused, unused


def test_mkdocs_build_strict(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir",
                           str(tmp_path / "site")], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert proc.returncode == 0, proc.stderr[-5000:]
    reference = (tmp_path / "site" / "configuration" / "index.html").read_text()
    assert "<!-- configuration-reference -->" not in reference and "optimizer.ns_dtype" in reference
    api = (tmp_path / "site" / "api" / "index.html").read_text()
    assert all(name in api for name in ("nfa", "load_model", "load_runs", "load_run", "LayerNFA"))
    assert ":func:" not in api and not (tmp_path / "site" / "hooks.py").exists()

