"""The README's table of networks, made from the registry's published figures.

``python -m jaxcnn.zoo`` rewrites the table between the ``zoo-table`` markers of README.md.
Every figure in it is a published one (with its source); tests/test_param_counts.py asserts
that the networks have them exactly.
"""

from __future__ import annotations

import pathlib
import sys

from jaxcnn import registry

START, END = "<!-- zoo-table:start -->", "<!-- zoo-table:end -->"


def _figure(info, metric: str) -> str:
    for p in info.published:
        if p.metric == metric and not p.overrides:
            return f"{int(p.value):,}"
    return ""


def _sources(info) -> str:
    seen: list[str] = []
    for p in info.published:
        if p.metric in ("params", "keras_total") and p.source not in seen:
            seen.append(p.source)
    return "; ".join(seen)


def markdown_table() -> str:
    """One row per registered variant: input, published counts, what it follows, sources."""
    lines = [
        "| variant | input (H, W, C) | params | Keras total | follows | figures from |",
        "|---|---|---:|---:|---|---|",
    ]
    for name in registry.list_models():
        info = registry.model_info(name)
        h, w, c = info.input_shape
        lines.append(
            f"| `{name}` | {h}x{w}x{c} | {_figure(info, 'params')} | "
            f"{_figure(info, 'keras_total')} | {info.reference} | {_sources(info)} |"
        )
    aliases = ", ".join(f"`{a}` = `{t}`" for a, t in sorted(registry.ALIASES.items()))
    lines.append("")
    lines.append(f"Aliases: {aliases}.")
    return "\n".join(lines)


def update_readme(path: str | pathlib.Path = "README.md") -> None:
    """Replaces the table between the markers in ``path``."""
    path = pathlib.Path(path)
    text = path.read_text()
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    path.write_text(f"{head}{START}\n{markdown_table()}\n{END}{tail}")


if __name__ == "__main__":
    update_readme(sys.argv[1] if len(sys.argv) > 1 else "README.md")
