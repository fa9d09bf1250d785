"""Foreign weights for registered variants: by name, as Orbax checkpoints, into a new head.

Above the registry: :func:`load_pretrained` finds a variant's declared converters and runs the
engine of :mod:`jaxcnn.weights` on them; :func:`save_converted`/:func:`load_converted` store the
result; :func:`transfer` moves it into a network with another classifier. The command line
converts a file once for the trainer:

    python -m jaxcnn.convert resnet50-0676ba61.pth --arch resnet50 --out weights/resnet50
    python -m train.main --arch resnet50 --pretrained weights/resnet50 --num-classes 10

The output directory holds the variables (``params``, ``batch_stats``) as an Orbax PyTree
checkpoint, written atomically by Orbax, and ``jaxcnn.json`` naming the architecture, the number
of classes and the source, so a loader can refuse weights of another architecture.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
from typing import Any, Mapping

import numpy as np
from flax import traverse_util

from jaxcnn import registry, weights
from jaxcnn.spec import Converter, WeightMismatchError
from jaxcnn.summary import init_shapes

META = "jaxcnn.json"

# What loading foreign or converted weights raises for a bad file or a misfit; each message
# names the file and the fix.
LOAD_ERRORS = (weights.WeightFileError, WeightMismatchError)


def converters_for(name: str) -> tuple[Converter, ...]:
    """The reference implementations whose weights variant ``name`` can read."""
    return registry.model_info(name).converters


def load_pretrained(
    name: str,
    source: str | os.PathLike | Mapping[str, Any],
    *,
    input_shape: tuple[int, ...] | None = None,
    from_: str | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """Builds variables for variant ``name`` from a weights file or mapping.

    ``from_`` picks the reference framework (``"torchvision"``, ``"timm"``, ``"keras"``); by
    default, every converter the variant declares is tried on the arrays' names and the one
    that accounts for all of them is used.
    """
    state = weights.load_state_dict(source)
    template = init_shapes(name, input_shape, **overrides)
    declared = converters_for(name)
    candidates = [c for c in declared if from_ is None or c.source == from_]
    if not candidates:
        raise WeightMismatchError(
            f"{name} declares no converter from {from_!r}; it reads: "
            + ", ".join(f"{c.source} {c.reference}" for c in declared) + "."
        )
    errors = []
    for conv in candidates:
        try:
            return weights.convert(state, template, conv)
        except WeightMismatchError as err:
            errors.append(str(err))
    raise WeightMismatchError("\n".join(errors))


def save_converted(directory: str | os.PathLike, variables: Any, *, arch: str, source: str,
                   num_classes: int) -> pathlib.Path:
    """Writes ``variables`` and their description to ``directory`` (which must not exist)."""
    import orbax.checkpoint as ocp

    directory = pathlib.Path(directory).absolute()
    if directory.exists():
        raise FileExistsError(f"{directory} exists; choose a new --out directory.")
    directory.mkdir(parents=True)
    ocp.PyTreeCheckpointer().save(directory / "variables", variables)
    meta = {"arch": registry.resolve(arch), "num_classes": num_classes, "source": source}
    (directory / META).write_text(json.dumps(meta, indent=2))
    return directory


def load_converted(directory: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any]]:
    """Reads what :func:`save_converted` wrote: ``(variables, meta)``."""
    import orbax.checkpoint as ocp

    directory = pathlib.Path(directory).absolute()
    meta_path = directory / META
    if not meta_path.exists():
        raise weights.WeightFileError(
            f"{directory} is not a converted-weights directory (no {META}). Create one with "
            "python -m jaxcnn.convert SRC --arch NAME --out DIR."
        )
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as err:
        raise weights.WeightFileError(
            f"{meta_path} cannot be read ({type(err).__name__}: {err}): it is corrupt or "
            "incomplete. Convert the weights again into a new --out directory."
        ) from None
    try:
        variables = ocp.PyTreeCheckpointer().restore(directory / "variables")
    except Exception as err:  # Orbax raises several types for damaged files
        raise WeightMismatchError(
            f"The checkpoint in {directory} cannot be read ({type(err).__name__}: {err}). "
            "It may be incomplete or corrupt: convert the weights again."
        ) from err
    return variables, meta


def transfer(pretrained: Any, fresh: Any, num_classes: int) -> tuple[dict[str, Any], list[str]]:
    """Copies ``pretrained`` into ``fresh``; a classifier of another width keeps its new init.

    Returns the variables and the names left at their initial value. Only arrays whose last
    axis is the classifier width may differ; any other difference is an architecture mismatch.
    A classifier of the same width (a later fine-tuning stage) is carried over.
    """
    flat_new = traverse_util.flatten_dict(fresh)
    flat_old = traverse_util.flatten_dict(pretrained)
    out, kept_new, wrong = {}, [], []
    for key, new in flat_new.items():
        name = "/".join(key)
        old = flat_old.get(key)
        if old is not None and tuple(np.shape(old)) == tuple(np.shape(new)):
            out[key] = np.asarray(old)
        elif old is not None and np.shape(new)[-1:] == (num_classes,):
            out[key] = new
            kept_new.append(name)
        else:
            wrong.append(f"{name} {np.shape(old) if old is not None else 'missing'} vs "
                         f"{np.shape(new)}")
    extra = sorted("/".join(k) for k in set(flat_old) - set(flat_new))
    if wrong or extra:
        raise WeightMismatchError(
            "The pretrained weights do not fit this architecture: "
            + "; ".join(wrong[:10] + [f"unused {e}" for e in extra[:10]])
            + ". Use the --arch the weights were converted for."
        )
    return traverse_util.unflatten_dict(out), kept_new


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jaxcnn.convert",
        description="Convert torchvision/timm/Keras weights into a jaxcnn Orbax checkpoint.",
    )
    parser.add_argument("source", help="weights file: .pth/.pt (torch), .safetensors, .npz, "
                        "or Keras .h5/.weights.h5")
    parser.add_argument("--arch", required=True, help="jaxcnn variant the weights belong to")
    parser.add_argument("--out", required=True, help="new directory for the checkpoint")
    parser.add_argument("--from", dest="from_", choices=weights.SOURCES, default=None,
                        help="reference framework (default: try every converter of --arch)")
    parser.add_argument("--num-classes", type=int, default=None,
                        help="classes of the weights' classifier (default: the variant's)")
    args = parser.parse_args(argv)
    try:
        info = registry.model_info(args.arch)
        if os.path.exists(args.out):  # before the slow part
            raise FileExistsError(f"{os.path.abspath(args.out)} exists; choose a new --out "
                                  f"directory.")
        num_classes = args.num_classes or info.num_classes
        variables = load_pretrained(args.arch, args.source, from_=args.from_,
                                    num_classes=num_classes)
        out = save_converted(args.out, variables, arch=args.arch,
                             source=f"{args.from_ or 'auto'}:{os.path.basename(args.source)}",
                             num_classes=num_classes)
    except (registry.UnknownModelError, FileExistsError, *LOAD_ERRORS) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    n = sum(np.size(v) for v in traverse_util.flatten_dict(variables).values())
    print(f"wrote {n:,} numbers of {info.name} ({num_classes} classes) to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
