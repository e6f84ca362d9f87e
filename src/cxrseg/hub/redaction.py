"""Copies of an output folder's text without secrets or local paths: what may be shared on the Hub.

Absolute paths in a recipe become relative to the working directory, or only their last component when outside it;
the output folder, working directory and home directory are cut out of any text; a token is replaced by
:data:`REDACTED`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml

REDACTED = "<redacted>"


def shareable_recipe(resolved: dict[str, Any], base: str | os.PathLike | None = None) -> tuple[dict[str, Any], list]:
    """A copy of a resolved recipe without local absolute paths, and the keys that were rewritten.

    Absolute paths (and ``~/...``) become relative to ``base`` (the working directory by default) when inside it,
    else only their last component. ``hub_token`` is dropped.
    """
    base = Path(base or Path.cwd()).resolve()
    shared, rewritten = {}, []
    for key, value in resolved.items():
        if key == "hub_token":
            continue
        new = [_relative(v, base) for v in value] if isinstance(value, list) else _relative(value, base)
        if new != value:
            rewritten.append(key)
        shared[key] = new
    return shared, rewritten


def shareable_recipe_text(text: str) -> str:
    """The text of a ``recipe.yaml`` as shared: :func:`shareable_recipe` of it, keeping its first comment line and
    adding one that names the keys rewritten."""
    shared, rewritten = shareable_recipe(yaml.safe_load(text) or {})
    header = text.splitlines()[0] + "\n" if text.startswith("#") else ""
    if rewritten:
        header += f"# Local paths made relative or cut to their last part for sharing: {', '.join(rewritten)}\n"
    return header + yaml.safe_dump(shared, sort_keys=False)


def _relative(value: Any, base: Path) -> Any:
    """``value`` relative to ``base`` if it is an absolute path inside it, its last component if outside, else as is."""
    if not isinstance(value, str) or not os.path.isabs(os.path.expanduser(value)):
        return value
    path = Path(os.path.expanduser(value)).resolve()
    return str(path.relative_to(base)) if path.is_relative_to(base) else path.name


def _local_prefixes(folder: Path) -> list[tuple[str, str]]:
    """(local prefix, replacement), longest first: the output folder, the working directory, the home directory."""
    pairs = {}
    for path, replacement in ((Path.home(), "~"), (Path.cwd(), "."), (folder, ".")):
        for variant in {str(path), str(path.resolve())}:
            if len(Path(variant).parts) > 1:  # never "/" itself
                pairs[variant] = replacement
    return sorted(pairs.items(), key=lambda item: -len(item[0]))


def redact_text(text: str, folder: str | os.PathLike, token: str | None = None) -> str:
    """``text`` with the local prefixes of :func:`_local_prefixes` cut out and ``token`` replaced."""
    for prefix, replacement in _local_prefixes(Path(folder)):
        # Only whole path components: "/tmp/out" must not match inside "/tmp/out2".
        pattern = re.compile(re.escape(prefix) + r"(/|(?![\w.-]))")
        text = pattern.sub(lambda m, r=replacement: (r + "/" if r != "." else "") if m.group(1) else r, text)
    if token:
        text = text.replace(token, REDACTED)
    return text
