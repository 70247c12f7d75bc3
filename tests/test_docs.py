"""The user docs (README.md, docs/, results/README.md) against the code: every relative link and
anchor resolves, every `mtkd ...` command line in a code block parses with the real CLI, every config
key is named in docs/configs.md, and the front page's config is configs/demo.yaml."""

from __future__ import annotations

import dataclasses
import re
import shlex
import typing
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCS = [
    ROOT / "README.md",
    *sorted((ROOT / "docs").glob("*.md")),
    ROOT / "results" / "README.md",
    *sorted((ROOT / "results").glob("*/README.md")),
    ROOT / "benchmarks" / "README.md",
]


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip()).lower()  # a link: its text
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.S)
    return {_slug(m) for m in re.findall(r"^#+ (.+)$", text, re.M)}


def _code_lines(text: str):
    """The lines of the code blocks, a line ending in a backslash joined with the next."""
    code, held = False, ""
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            code = not code
        elif code:
            if line.rstrip().endswith("\\"):
                held += line.rstrip()[:-1] + " "
                continue
            yield held + line
            held = ""


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_links_and_anchors_resolve(doc):
    text = re.sub(r"```.*?```", "", doc.read_text(encoding="utf-8"), flags=re.S)
    bad = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue  # http(s), mailto
        path, _, anchor = target.partition("#")
        dest = (doc.parent / path).resolve() if path else doc
        if not dest.exists():
            bad.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            bad.append(f"{target}: no heading #{anchor} in {dest.relative_to(ROOT)}")
    assert not bad, f"{doc.relative_to(ROOT)}: {bad}"


def test_every_quoted_command_parses():
    """Command lines in the docs' code blocks (synopsis brackets dropped, placeholders filled)."""
    from mtkd.cli import build_parser

    parser, lines = build_parser(), []
    for doc in DOCS:
        for line in _code_lines(doc.read_text(encoding="utf-8")):
            m = re.match(r"\s*(?:[A-Z_]+=\S+\s+)*(mtkd\s.*)", line)
            if m:
                lines.append((doc, m.group(1)))
    assert len(lines) > 20
    for doc, line in lines:
        cmd = re.split(r"\s+#", line)[0].rstrip(" \\").replace("--set ...", "--set a.b=1").replace("key=value", "a.b=1")
        argv = shlex.split(cmd.replace("[", "").replace("]", "").replace(" ...", ""))[1:]
        try:
            parser.parse_args(argv)
        except SystemExit:
            pytest.fail(f"{doc.relative_to(ROOT)}: `{line.strip()}` does not parse")


def _keys(cls, prefix: str = "") -> set[str]:
    """The dotted keys of a config section (dataclass or pydantic model), nested sections included."""
    if dataclasses.is_dataclass(cls):
        fields = typing.get_type_hints(cls)
        fields = {f.name: fields[f.name] for f in dataclasses.fields(cls)}
    else:
        fields = {n: f.annotation for n, f in cls.model_fields.items()}
    keys = set()
    for name, tp in fields.items():
        keys.add(prefix + name)
        for sub in (tp, *typing.get_args(tp)):
            if isinstance(sub, type) and (dataclasses.is_dataclass(sub) or hasattr(sub, "model_fields")):
                keys |= _keys(sub, f"{prefix}{name}.")
    return keys


def test_configs_page_names_every_config_key():
    from mtkd.config import RunConfig

    text = (ROOT / "docs" / "configs.md").read_text(encoding="utf-8")
    keys = {k.split(".")[-1] for k in _keys(RunConfig)} - {"override"}  # tasks.<name>: the task's own keys
    missing = sorted(k for k in keys if f"`{k}`" not in text)
    assert not missing, f"docs/configs.md does not name the config keys {missing}"


def test_front_page_config_is_the_demo_config():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    shown = re.search(r"## One config.*?```yaml\n(.*?)```", text, re.S).group(1)
    assert yaml.safe_load(shown) == yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text(encoding="utf-8"))
