"""Deep Compression's two MNIST tables on the embedded digits, end to end, in one command.

``python -m train.compress_paper [--quick] [--runs runs] [--seed 0]`` trains LeNet-300-100 and
Caffe's LeNet-5 (``RUNS/<arch>``, from ``--seed``), compresses each with :mod:`train.compress`
at the paper's per-layer rates (``RUNS/<arch>_deep``: the file, ``report.json``, ``report.png``),
and writes both tables, next to the paper's Tables 2 and 3, to ``RUNS/deep_compression.md``.
Every step resumes where it stopped. ``--quick`` runs the same pipeline at a token budget (one
epoch of each training) to check it end to end; its figures mean nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from jaxcnn import compress as compress_lib  # noqa: E402
from train import compress  # noqa: E402
from train import main as train_main  # noqa: E402

# The paper's settings (its Tables 2 and 3) but for LeNet-300-100's weight bits: 5, the width
# of every other fully connected layer of the paper, where its Table 2 used 6. On the embedded
# digits 5 bits lose no accuracy and keep the whole file, biases included, over 35x smaller.
NETWORKS = {"lenet_300_100": ("LeNet-300-100", ["--bits", "5"]),
            "lenet5_caffe": ("LeNet-5 (Caffe's)", [])}
QUICK = {"train": ["--epochs", "1"],
         "compress": ["--prune-rounds", "1", "--retrain-epochs", "1", "--finetune-epochs", "1"]}


def section(arch: str, title: str, runs: str) -> str:
    """The Markdown of one network: accuracies, the per-layer table, where its bytes go."""
    out = os.path.join(runs, f"{arch}_deep")
    with open(os.path.join(out, "report.json")) as f:
        report = json.load(f)
    _, stats = compress_lib.read(report["file"]["path"])
    accuracy = report["accuracy"]
    stages = ", ".join(
        f"{name} {values.get('accuracy_retrained', values.get('accuracy_finetuned', 0)):.2f}%"
        for name, values in accuracy.items() if name.startswith(("prune", "quantize")))
    return "\n".join([
        f"### {title}: `{arch}`",
        "",
        f"Test accuracy (1,000 digits): {accuracy['uncompressed']:.2f}% uncompressed; "
        f"after {stages}; {accuracy['encode']['accuracy_decoded']:.2f}% decoded from the file "
        f"({report['file']['bytes']:,} bytes). Settings: `{json.dumps(report['settings'])}`.",
        "",
        compress_lib.markdown_table(stats, compress_lib.PAPER[arch]),
        "",
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m train.compress_paper",
        description="Train LeNet-300-100 and Caffe's LeNet-5 on the embedded digits, compress "
                    "both at the paper's rates and write their tables next to the paper's "
                    "(RUNS/deep_compression.md).")
    parser.add_argument("--runs", default="runs", help="where the runs go (default: runs)")
    parser.add_argument("--quick", action="store_true",
                        help="one epoch per training: checks the pipeline, not the figures")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the two trainings, which the compression runs inherit "
                             "(default: 0); give each seed its own --runs")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args(argv)
    runs = os.path.join(args.runs, "deep_compression_quick") if args.quick else args.runs
    progress = [] if args.progress else ["--no-progress"]
    sections = []
    for arch, (title, flags) in NETWORKS.items():
        workdir = os.path.join(runs, arch)
        code = train_main.main(["--arch", arch, "--workdir", workdir, "--seed", str(args.seed),
                                *progress,
                                *(QUICK["train"] if args.quick else [])])
        if code:
            return code
        code = compress.main(["--workdir", workdir, "--out", f"{workdir}_deep", *flags,
                              *progress, *(QUICK["compress"] if args.quick else [])])
        if code:
            return code
        sections.append(section(arch, title, runs))
    path = os.path.join(runs, "deep_compression.md")
    with open(path, "w") as f:
        f.write("\n".join(sections))
    print("\n".join(sections))
    print(f"written: {path}; figures: "
          + ", ".join(os.path.join(runs, f"{arch}_deep", "report.png") for arch in NETWORKS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
