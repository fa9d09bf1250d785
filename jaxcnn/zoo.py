"""The README's table of networks: exact counts of each network and its published figures.

``python -m jaxcnn.zoo`` rewrites the table between the ``zoo-table`` markers of README.md. The
params and Keras total columns are the networks' own counts (:func:`jaxcnn.init_shapes`,
shapes only); the published column says which of them a source publishes exactly (tests/
test_param_counts.py asserts each) and shows a figure the source rounds as the source gives it.
"""

from __future__ import annotations

import pathlib
import sys

from jaxcnn import registry
from jaxcnn.spec import Published
from jaxcnn.summary import count_params, init_shapes

START, END = "<!-- zoo-table:start -->", "<!-- zoo-table:end -->"
COUNTS = {"params": ("params", "params"), "keras_total": ("keras", "Keras total")}
"""Published metric -> (counting convention, column name)."""


def _published(name: str, figures: tuple[Published, ...], counts: dict[str, int]) -> str:
    """The counts a source publishes: the column's name when exact, the figure when rounded."""
    shown = []
    counted = [fig for fig in figures if fig.metric in COUNTS and not fig.overrides]
    for fig in sorted(counted, key=lambda fig: list(COUNTS).index(fig.metric)):
        convention, column = COUNTS[fig.metric]
        if fig.rounded:
            shown.append(f"{fig.value / 1e6:g}M {column} (rounded)")
        elif fig.value == counts[convention]:
            shown.append(column)
        else:
            raise ValueError(f"{name}: the published {column} {fig.value:,} is not the network's "
                             f"{counts[convention]:,}; fix the figure or the network.")
    return ", ".join(dict.fromkeys(shown)) or "none"


def _sources(figures: tuple[Published, ...]) -> str:
    return "; ".join(dict.fromkeys(fig.source for fig in figures if fig.metric in COUNTS))


def markdown_table() -> str:
    """One row per registered variant: input, exact counts, published counts, what it follows,
    sources."""
    lines = [
        "| variant | input (H, W, C) | params | Keras total | published | follows | figures from |",
        "|---|---|---:|---:|---|---|---|",
    ]
    for name in registry.list_models():
        info = registry.model_info(name)
        variables = init_shapes(name)
        counts = {c: count_params(variables, c) for c in ("params", "keras")}
        keras_published = any(fig.metric == "keras_total" for fig in info.published)
        keras = (f"{counts['keras']:,}" if counts["keras"] != counts["params"] or keras_published
                 else "")
        h, w, c = info.input_shape
        lines.append(
            f"| `{name}` | {h}x{w}x{c} | {counts['params']:,} | {keras} | "
            f"{_published(name, info.published, counts)} | {info.reference} | "
            f"{_sources(info.published)} |"
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
