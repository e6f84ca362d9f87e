"""Every command in the README's bash blocks parses against the code it names, so the README cannot drift."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from cxrseg.cli import build_parser
from cxrseg.config import parse_recipe

README = Path("README.md").read_text()
COMMANDS = [
    line.strip()
    for block in re.findall(r"```bash\n(.*?)```", README, flags=re.S)
    for line in block.splitlines()
    if line.strip() and not line.strip().startswith("#")
]


def test_the_readme_has_commands():
    assert any(c.startswith("cxrseg ") for c in COMMANDS) and any("run_train.py" in c for c in COMMANDS)
    plain = [c.split("#")[0].strip() for c in COMMANDS]
    assert "make demo" in plain and "make test" in plain


@pytest.mark.parametrize("command", COMMANDS)
def test_readme_command_parses(command):
    tokens = shlex.split(command, comments=True)
    while tokens and re.fullmatch(r"[A-Z_]+=\S*", tokens[0]):  # environment assignments
        tokens = tokens[1:]
    if tokens[0] == "make":
        targets = re.findall(r"^([a-z-]+):", Path("Makefile").read_text(), flags=re.M)
        assert tokens[1] in targets
    elif tokens[0] == "cxrseg":
        build_parser(tokens[1:]).parse_args(tokens[1:])
    elif "run_train.py" in tokens:
        if "--config_file" in tokens:
            assert Path(tokens[tokens.index("--config_file") + 1]).is_file()
        parse_recipe(tokens[tokens.index("run_train.py") + 1 :])
    elif tokens[0] == "sbatch":
        script = next(t for t in tokens if t.endswith(".sh"))
        assert Path(script).is_file()
        recipe_args = tokens[tokens.index(script) + 1 :]
        parse_recipe(["--config", *recipe_args])
    elif tokens[0] == "python" and tokens[1].endswith(".py"):
        assert Path(tokens[1]).is_file()
    elif tokens[0] in ("pip", "python", "wandb", "tensorboard"):
        pass  # third-party tools
    else:
        pytest.fail(f"README command not understood by this test: {command}")
