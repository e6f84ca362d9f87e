"""The documentation cannot drift: every command in the bash blocks of the README, CONTRIBUTING.md and docs/*.md
parses against the code it names, every `from cxrseg... import` in their Python blocks resolves, and every
relative link (and its #anchor) points at something that exists in the repository."""

from __future__ import annotations

import ast
import importlib
import re
import shlex
from pathlib import Path

import pytest

from cxrseg.cli import build_parser
from cxrseg.config import parse_recipe

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^[ \t]*```(\w*)\n(.*?)^[ \t]*```", flags=re.S | re.M)


def page_id(page: Path) -> str:
    return str(page.relative_to(ROOT))


def blocks(page: Path, language: str) -> list[str]:
    return [body for lang, body in FENCE.findall(page.read_text()) if lang == language]


COMMANDS = [
    pytest.param(line.strip(), id=f"{page_id(page)}: {line.strip()[:70]}")
    for page in PAGES
    for block in blocks(page, "bash")
    for line in block.splitlines()
    if line.strip() and not line.strip().startswith("#")
]
PYTHON = [
    pytest.param(block, id=f"{page_id(page)}: python block {i}")
    for page in PAGES
    for i, block in enumerate(blocks(page, "python"))
]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def test_the_readme_has_commands():
    text = (ROOT / "README.md").read_text()
    bash = [body for lang, body in FENCE.findall(text) if lang == "bash"]
    commands = [line.split("#")[0].strip() for body in bash for line in body.splitlines()]
    assert any(c.startswith("cxrseg ") for c in commands) and any("run_train.py" in c for c in commands)
    assert "make demo" in commands and "make test" in commands


def test_the_readme_maps_every_docs_page():
    readme = (ROOT / "README.md").read_text()
    for page in (ROOT / "docs").glob("*.md"):
        assert f"](docs/{page.name})" in readme, f"README.md's map of the docs does not link docs/{page.name}"


@pytest.mark.parametrize("command", COMMANDS)
def test_command_parses(command):
    tokens = shlex.split(command, comments=True)
    while tokens and re.fullmatch(r"[A-Z_]+=\S*", tokens[0]):  # environment assignments
        tokens = tokens[1:]
    if tokens[0] == "make":
        targets = re.findall(r"^([a-z-]+):", (ROOT / "Makefile").read_text(), flags=re.M)
        assert tokens[1] in targets
    elif tokens[:2] == ["cxrseg", "train"] or tokens[:4] == ["accelerate", "launch", "-m", "cxrseg"]:
        parse_recipe(tokens[tokens.index("train") + 1 :])  # `cxrseg train` hands its words to the recipe parser
    elif tokens[0] == "cxrseg":
        build_parser(tokens[1:]).parse_args(tokens[1:])
    elif "run_train.py" in tokens:
        if "--config_file" in tokens:
            assert (ROOT / tokens[tokens.index("--config_file") + 1]).is_file()
        parse_recipe(tokens[tokens.index("run_train.py") + 1 :])
    elif tokens[0] == "sbatch":
        script = next(t for t in tokens if t.endswith(".sh"))
        assert (ROOT / script).is_file()
        recipe_args = tokens[tokens.index(script) + 1 :]
        parse_recipe(["--config", *recipe_args])
    elif tokens[0] == "python" and tokens[1].endswith(".py"):
        assert (ROOT / tokens[1]).is_file()
    elif tokens[:3] == ["python", "-m", "pytest"]:
        paths = [t.split("::")[0] for t in tokens[3:] if t.startswith("tests/")]
        assert all((ROOT / p).exists() for p in paths), paths
    elif tokens[0] in ("pip", "python", "wandb", "tensorboard"):
        pass  # third-party tools
    else:
        pytest.fail(f"command not understood by this test: {command}")


@pytest.mark.parametrize("block", PYTHON)
def test_python_block_imports_resolve(block):
    tree = ast.parse(block)  # the block is valid Python
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "cxrseg":
            module = importlib.import_module(node.module)
            for alias in node.names:
                assert hasattr(module, alias.name), f"{node.module} has no {alias.name}"


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation and emoji dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text())
    return {slug(m) for m in re.findall(r"^#{1,6} (.+)$", text, flags=re.M)}


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_links_point_inside_the_repository(page):
    text = FENCE.sub("", page.read_text())
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        assert linked.is_relative_to(ROOT), f"{page_id(page)} links outside the repository: {target}"
        assert linked.exists(), f"{page_id(page)} links to a missing file: {target}"
        if anchor and linked.suffix == ".md":
            assert anchor in anchors(linked), f"{page_id(page)}: no heading #{anchor} in {path or page.name}"


def resolve(dotted: str):
    """The object a dotted name like `cxrseg.inference.segmenter.load_segmenter` names (AttributeError if none)."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
            break
        except ModuleNotFoundError:
            continue
    for attr in parts[i:]:
        obj = getattr(obj, attr)
    return obj


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_named_modules_and_paths_exist(page):
    """`cxrseg.x.y` names and repository paths written in a page exist, so a moved module cannot leave a stale name."""
    text = page.read_text()
    for dotted in sorted(set(re.findall(r"`(cxrseg(?:\.\w+)+)", text))):
        resolve(dotted)
    folders = "src|tests|bench|scripts|recipe|accelerate_configs|notebooks|docs"
    for path in set(re.findall(rf"`((?:{folders})/[\w./-]+)", text)):
        assert (ROOT / path).exists(), f"{page_id(page)} names a missing path: {path}"
