"""Experiments that put the papers' claims to the test on the embedded digits: one command each.

``python -m train.experiments stn [--budget EPOCHS] [--seeds N] [--out DIR]``
    Jaderberg et al. 2015, Table 1: test error of a CNN and of the same CNN behind an affine
    spatial transformer (``cnn_mnist``, ``stn_cnn_mnist``), trained alike on the distorted
    digits ``mnist_sample/r``, ``/rts``, ``/p``, ``/e``. The claim: the ST-CNN's error is below
    the CNN's on every distortion. Also draws the paper's Fig. 3: test digits next to what the
    trained transformer makes of them.

``python -m train.experiments swwae [--budget EPOCHS] [--seeds N] [--out DIR]``
    Zhao et al. 2016, semi-supervised MNIST: test error of ``whatwhere_mnist`` trained with the
    SWWAE objective on 100 and 1,000 labelled digits (the other training digits unlabelled),
    against the same encoder and classifier trained on the labelled digits alone (the same
    objective with the reconstruction weights at 0: the unlabelled images then contribute
    nothing). The claim: the reconstruction terms lower the error when labels are few.

``python -m train.experiments stn-speed [--out DIR]``
    Images/s of a training step (forward and backward) of the CNN with and without the spatial
    transformer at 42x42 and 224x224, and of the grid generator and bilinear sampler alone.

Each experiment trains every (setting, seed) once through ``train.train.train_and_evaluate``,
in ``DIR/runs/<run>`` (run again, the command resumes: finished runs are only evaluated), and
writes ``DIR/results.json``, ``DIR/results.md`` (the table, the paper's figures beside ours,
mean and standard deviation over the seeds, every seed's figure) and PNGs. ``--budget`` is the
number of epochs of every run; ``--max-steps`` cuts every run short, for smoke tests.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import time
from typing import Any, Callable, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from train.configs.default import Config, get_config  # noqa: E402

STN_PAPER = "Jaderberg et al. 2015, Table 1 (60,000 training digits; CNN and ST-CNN Aff)"
# Test error (%) on R / RTS / P / E, Jaderberg et al. 2015, Table 1: CNN, then ST-CNN (affine).
STN_PAPER_ERRORS: dict[str, tuple[float, float]] = {
    "r": (1.2, 0.7), "rts": (0.8, 0.5), "p": (1.5, 0.8), "e": (1.4, 1.2)}
DISTORTION_NAMES = {"r": "R", "rts": "RTS", "p": "P", "e": "E"}


@dataclasses.dataclass(frozen=True)
class Arm:
    """One setting of an experiment: its label in the table and the config it trains."""

    label: str
    changes: tuple[tuple[str, Any], ...]

    def config(self, base: Config, seed: int, workdir: str) -> Config:
        return base.replace(**dict(self.changes), seed=seed, workdir=workdir)


@dataclasses.dataclass
class Outcome:
    """The test errors (%) of an arm over the seeds, and where its runs live."""

    arm: Arm
    group: str
    seeds: list[int]
    errors: list[float]
    workdirs: list[str]
    seconds: list[float]

    def summary(self) -> dict[str, Any]:
        return {"group": self.group, "label": self.arm.label, "seeds": self.seeds,
                "test_error_percent": self.errors, "mean": statistics.fmean(self.errors),
                "std": statistics.stdev(self.errors) if len(self.errors) > 1 else None,
                "settings": dict(self.arm.changes), "seconds": self.seconds}


def cell(values: Sequence[float]) -> str:
    """``"1.23 ± 0.10"`` (sample standard deviation over the seeds), or one figure."""
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.fmean(values):.2f} ± {statistics.stdev(values):.2f}"


def run_all(groups: Sequence[tuple[str, Sequence[Arm]]], base: Config, seeds: Sequence[int],
            out: str, say: Callable[[str], None] = print) -> list[Outcome]:
    """Trains every arm of every group with every seed (skipping nothing: a finished run in
    its workdir is only evaluated again); returns the outcomes, in order."""
    from tqdm.auto import tqdm

    from train import train as train_lib

    total = sum(len(arms) for _, arms in groups) * len(seeds)
    bar = tqdm(total=total, desc="runs", unit="run", file=sys.stderr, dynamic_ncols=True)
    outcomes = []
    try:
        for group, arms in groups:
            for arm in arms:
                outcome = Outcome(arm, group, [], [], [], [])
                for seed in seeds:
                    name = f"{group}_{arm.label}_seed{seed}".replace(" ", "_").replace("/", "_")
                    workdir = os.path.join(out, "runs", name)
                    start = time.time()
                    result = train_lib.train_and_evaluate(arm.config(base, seed, workdir),
                                                          print_fn=lambda _: None)
                    error = 100 * (1 - result.eval_metrics["top1"])
                    outcome.seeds.append(seed)
                    outcome.errors.append(error)
                    outcome.workdirs.append(workdir)
                    outcome.seconds.append(round(time.time() - start, 1))
                    bar.update()
                    with tqdm.external_write_mode(file=sys.stderr):
                        say(f"{group} {arm.label} seed {seed}: test error {error:.2f}% "
                            f"({outcome.seconds[-1]:.0f}s, step {result.step})")
                outcomes.append(outcome)
    finally:
        bar.close()
    return outcomes


def write_results(out: str, name: str, payload: dict[str, Any], table: str) -> None:
    """``out/results.json`` and ``out/results.md``."""
    os.makedirs(out, exist_ok=True)
    payload = {"experiment": name, "machine": f"{platform.machine()} {platform.system()}",
               **payload}
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(payload, f, indent=2)
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(table)


def _bars(path: str, title: str, groups: Sequence[str], series: dict[str, list[Sequence[float]]],
          ylabel: str, references: dict[str, list[float | None]] | None = None) -> str:
    """A bar chart: per group, one bar per series (mean, the seeds as dots), and the paper's
    figures as hollow markers."""
    import numpy as np
    from matplotlib.figure import Figure

    from train import metrics as metrics_lib

    fig = Figure(figsize=(1.8 + 1.6 * len(groups) * max(1, len(series)) / 2, 3.8))
    ax = fig.subplots()
    width = 0.8 / max(1, len(series))
    for k, (label, values) in enumerate(series.items()):
        xs = np.arange(len(groups)) + (k - (len(series) - 1) / 2) * width
        means = [statistics.fmean(v) for v in values]
        errs = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in values]
        bars = ax.bar(xs, means, width * 0.9, yerr=errs, capsize=3, label=label, alpha=0.8)
        for x, v in zip(xs, values):
            ax.plot([x] * len(v), v, "k.", markersize=3)
        paper = [(x, r) for x, r in zip(xs, (references or {}).get(label, [])) if r is not None]
        if paper:
            ax.plot(*zip(*paper), "D", mfc="white", mec=bars.patches[0].get_facecolor(),
                    mew=2, label=f"{label} (paper)")
    ax.set_xticks(np.arange(len(groups)), groups)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return metrics_lib.save_figure(fig, path)


# ----------------------------------------------------------------------------------------------
# Spatial transformers on distorted digits.


def stn_arms() -> list[Arm]:
    common = (("augment", "none"),)
    return [Arm("CNN", (("arch", "cnn_mnist"), *common)),
            Arm("ST-CNN", (("arch", "stn_cnn_mnist"), *common))]


def stn_experiment(args: argparse.Namespace) -> dict[str, Any]:
    distortions = args.distortions.split(",")
    unknown = set(distortions) - set(STN_PAPER_ERRORS)
    if unknown:
        raise SystemExit(f"--distortions: {', '.join(sorted(unknown))} unknown; use some of "
                         f"{', '.join(STN_PAPER_ERRORS)}.")
    base = _base_config(args)
    groups = [(d, [dataclasses.replace(arm, changes=(*arm.changes,
                                                     ("dataset", f"mnist_sample/{d}")))
                   for arm in stn_arms()]) for d in distortions]
    outcomes = run_all(groups, base, args.seeds, args.out)
    by = {(o.group, o.arm.label): o for o in outcomes}
    rows = ["| distortion | CNN (ours) | ST-CNN (ours) | ST-CNN below CNN | CNN (paper) | "
            "ST-CNN (paper) |", "|---|---|---|---|---|---|"]
    for d in distortions:
        cnn, stn = by[d, "CNN"], by[d, "ST-CNN"]
        wins = sum(s < c for s, c in zip(stn.errors, cnn.errors))
        better = statistics.fmean(stn.errors) < statistics.fmean(cnn.errors)
        paper = STN_PAPER_ERRORS[d]
        rows.append(f"| {DISTORTION_NAMES[d]} | {cell(cnn.errors)} | {cell(stn.errors)} | "
                    f"{'yes' if better else 'no'} ({wins}/{len(cnn.errors)} seeds) | "
                    f"{paper[0]} | {paper[1]} |")
    table = (f"Test error (%) on the 1,000 test digits of mnist_sample, distorted, after "
             f"{args.budget} epochs on its 4,000 training digits; mean ± standard deviation over "
             f"seeds {', '.join(map(str, args.seeds))}. Paper: {STN_PAPER}.\n\n"
             + "\n".join(rows) + "\n")
    png = _bars(os.path.join(args.out, "stn_errors.png"),
                f"CNN vs ST-CNN on distorted digits ({args.budget} epochs, 4,000 digits)",
                [DISTORTION_NAMES[d] for d in distortions],
                {label: [by[d, label].errors for d in distortions] for label in ("CNN", "ST-CNN")},
                "test error (%)",
                {label: [STN_PAPER_ERRORS[d][k] for d in distortions]
                 for k, label in enumerate(("CNN", "ST-CNN"))})
    figure = draw_transformed(os.path.join(args.out, "stn_transformed.png"), distortions,
                              [by[d, "ST-CNN"] for d in distortions], base.data_dir)
    write_results(args.out, "stn", {
        "claim": "ST-CNN test error below the CNN's on every distortion",
        "paper": {"source": STN_PAPER, "errors": {d: dict(zip(("CNN", "ST-CNN"), e))
                                                   for d, e in STN_PAPER_ERRORS.items()}},
        "budget_epochs": args.budget, "max_steps": args.max_steps, "seeds": args.seeds,
        "rows": [o.summary() for o in outcomes], "figures": [png, figure]}, table)
    return {"table": table, "figures": [png, figure]}


def draw_transformed(path: str, distortions: Sequence[str], outcomes: Sequence[Outcome],
                     data_dir: str | None, count: int = 8) -> str:
    """The paper's Fig. 3: for each distortion, test digits and the first seed's trained
    transformer's output (its theta applied by the grid generator and the sampler)."""
    import jax
    import numpy as np

    from jaxcnn import conv
    from jaxcnn.stn import affine_grid, bilinear_sample
    from train import checkpoints as checkpoints_lib
    from train import input_pipeline
    from train import metrics as metrics_lib
    from train.train import build_model

    rows = []
    for d, outcome in zip(distortions, outcomes):
        workdir = outcome.workdirs[0]
        ckpts = checkpoints_lib.Checkpoints(os.path.join(workdir, "checkpoints"), read_only=True)
        try:
            step = ckpts.latest_step()
            config = Config.from_dict(ckpts.stored_config(step))
            variables = ckpts.restore_variables(step)
        finally:
            ckpts.close()
        batch = next(input_pipeline.eval_iterator(
            config.dataset, data_dir=data_dir, global_batch_size=count,
            image_size=config.image_size))
        images = batch["image"]
        model = build_model(config)
        variables = {k: v for k, v in variables.items() if k in ("params", "batch_stats") and v}
        sow = conv.jit(lambda v, x: model.apply(v, x, mutable=["intermediates"]),
                       inference=True)
        _, sown = sow(variables, images)
        theta = sown["intermediates"]["stn"]["theta"][0]
        out = bilinear_sample(images, affine_grid(theta, images.shape))
        name = DISTORTION_NAMES[d]
        rows += [(f"{name} input", np.asarray(images)),
                 (f"{name} transformed", np.asarray(out))]
    return metrics_lib.draw_image_rows(
        path, rows, "distorted test digits and the spatial transformer's output (ST-CNN)")


# ----------------------------------------------------------------------------------------------
# SWWAE, semi-supervised.


def swwae_arms(labels: int, soft: bool) -> list[Arm]:
    arms = [Arm("SWWAE", (("arch", "whatwhere_mnist"), ("labelled", labels))),
            Arm("labelled alone", (("arch", "whatwhere_mnist"), ("labelled", labels),
                                   ("lambda_rec", 0.0), ("lambda_mid", 0.0)))]
    if soft:
        arms.insert(1, Arm("SWWAE soft", (("arch", "whatwhere_mnist_soft"),
                                          ("labelled", labels))))
    return arms


def swwae_experiment(args: argparse.Namespace) -> dict[str, Any]:
    labels = [int(n) for n in args.labels.split(",")]
    base = _base_config(args)
    groups = [(f"{n} labels", swwae_arms(n, args.soft)) for n in labels]
    outcomes = run_all(groups, base, args.seeds, args.out)
    labels_of = {o.arm.label for o in outcomes}
    order = [a.label for a in swwae_arms(labels[0], args.soft) if a.label in labels_of]
    by = {(o.group, o.arm.label): o for o in outcomes}
    head = " | ".join(f"{label} (ours)" for label in order)
    rows = [f"| labels | {head} | reconstruction helps |", "|---" * (len(order) + 2) + "|"]
    for n in labels:
        group = f"{n} labels"
        swwae, alone = by[group, "SWWAE"], by[group, "labelled alone"]
        wins = sum(s < a for s, a in zip(swwae.errors, alone.errors))
        better = statistics.fmean(swwae.errors) < statistics.fmean(alone.errors)
        cells = " | ".join(cell(by[group, label].errors) for label in order)
        rows.append(f"| {n:,} | {cells} | {'yes' if better else 'no'} "
                    f"({wins}/{len(swwae.errors)} seeds) |")
    table = (f"Test error (%) on the 1,000 test digits of mnist_sample after {args.budget} epochs "
             f"over its 4,000 training digits, of which only the given number keep their labels "
             f"(stratified, chosen by the seed); whatwhere_mnist, SWWAE objective (lambda_rec "
             f"and lambda_mid at their defaults) against the same network with both at 0, which "
             f"learns from the labelled digits alone. Mean ± standard deviation over seeds "
             f"{', '.join(map(str, args.seeds))}.\n\n" + "\n".join(rows) + "\n")
    png = _bars(os.path.join(args.out, "swwae_errors.png"),
                f"SWWAE vs the labelled digits alone ({args.budget} epochs)",
                [f"{n:,} labels" for n in labels],
                {label: [by[f"{n} labels", label].errors for n in labels] for label in order},
                "test error (%)")
    figures = [png]
    first = by[f"{labels[0]} labels", "SWWAE"].workdirs[0]
    pictures = sorted(os.listdir(os.path.join(first, "reconstructions")))
    if pictures:
        figures.append(os.path.join(first, "reconstructions", pictures[-1]))
    write_results(args.out, "swwae", {
        "claim": "the reconstruction terms lower the test error when labels are few",
        "budget_epochs": args.budget, "max_steps": args.max_steps, "seeds": args.seeds,
        "rows": [o.summary() for o in outcomes], "figures": figures}, table)
    return {"table": table, "figures": figures}


# ----------------------------------------------------------------------------------------------
# The spatial transformer's cost.


def stn_speed(args: argparse.Namespace) -> dict[str, Any]:
    """Images/s of a train step (forward + backward) with and without the transformer, and of
    the grid generator and sampler alone (forward + backward to theta)."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    import jaxcnn
    from jaxcnn import conv
    from jaxcnn.stn import affine_grid, bilinear_sample

    def rate(fn, *inputs, batch: int) -> float:
        jax.block_until_ready(fn(*inputs))  # compile
        best = float("inf")
        for _ in range(args.windows):
            start = time.perf_counter()
            for _ in range(args.steps):
                out = fn(*inputs)
            jax.block_until_ready(out)
            best = min(best, (time.perf_counter() - start) / args.steps)
        return batch / best

    results = []
    for size, batch in ((42, args.batch_42), (224, args.batch_224)):
        x = jax.random.normal(jax.random.key(0), (batch, size, size, 1))
        labels = jnp.arange(batch) % 10
        row = {"size": size, "batch": batch}
        for arch in ("cnn_mnist", "stn_cnn_mnist"):
            model = jaxcnn.create_model(arch)
            params = jax.jit(model.init)(jax.random.key(1), x)["params"]

            def loss(params, x, model=model):
                logits = model.apply({"params": params}, x, train=True)
                return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

            row[arch] = rate(conv.jit(jax.grad(loss)), params, x, batch=batch)
        rng = np.random.default_rng(0)
        theta = jnp.asarray(np.eye(2, 3)[None] + 0.1 * rng.standard_normal((batch, 2, 3)),
                            jnp.float32)
        sampler = jax.jit(jax.grad(
            lambda t, x: jnp.sum(bilinear_sample(x, affine_grid(t, x.shape)) ** 2)))
        row["grid_and_sampler"] = rate(sampler, theta, x, batch=batch)
        row["transformer_share"] = 1 - row["stn_cnn_mnist"] / row["cnn_mnist"]
        row["sampler_share"] = row["stn_cnn_mnist"] / row["grid_and_sampler"]
        results.append(row)
        print(f"{size}x{size}, batch {batch}: CNN {row['cnn_mnist']:,.0f} img/s, ST-CNN "
              f"{row['stn_cnn_mnist']:,.0f} img/s (the transformer takes "
              f"{100 * row['transformer_share']:.0f}% of a step), grid and sampler alone "
              f"{row['grid_and_sampler']:,.0f} img/s ({100 * row['sampler_share']:.0f}% of an "
              f"ST-CNN step)")
    rows = ["| input | batch | CNN img/s | ST-CNN img/s | ST-CNN / CNN time | grid + sampler "
            "img/s | grid + sampler share of an ST-CNN step |", "|---|---|---|---|---|---|---|"]
    for r in results:
        rows.append(f"| {r['size']}x{r['size']} | {r['batch']} | {r['cnn_mnist']:,.0f} | "
                    f"{r['stn_cnn_mnist']:,.0f} | {r['cnn_mnist'] / r['stn_cnn_mnist']:.2f} | "
                    f"{r['grid_and_sampler']:,.0f} | {100 * r['sampler_share']:.0f}% |")
    table = ("Training step (forward and backward, float32, batch as given) of cnn_mnist and "
             "stn_cnn_mnist, and of the grid generator and bilinear sampler alone (forward and "
             f"backward to theta), best of {args.windows} windows of {args.steps} steps, on "
             f"{jax.device_count()} {jax.default_backend()} device(s).\n\n" + "\n".join(rows)
             + "\n")
    write_results(args.out, "stn-speed", {"rows": results}, table)
    return {"table": table}


# ----------------------------------------------------------------------------------------------
# Command line.


def _base_config(args: argparse.Namespace) -> Config:
    return get_config().replace(epochs=args.budget, max_steps=args.max_steps,
                                data_dir=args.data_dir, progress=False, tensorboard=False,
                                log_every=10_000)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m train.experiments",
        description="Reproduce the papers' claims on the embedded digits; write the tables "
                    "(JSON, Markdown) and PNGs to --out.")
    commands = parser.add_subparsers(dest="experiment", required=True)

    def common(p: argparse.ArgumentParser, budget: int, out: str) -> None:
        p.add_argument("--budget", type=int, default=budget,
                       help=f"epochs of every run (default: {budget})")
        p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                       help="seeds of the runs of each setting (default: 0 1 2)")
        p.add_argument("--max-steps", type=int, default=None,
                       help="cut every run short after this many steps (smoke tests)")
        p.add_argument("--data-dir", default=None, help="TFDS data directory")
        p.add_argument("--out", default=out, help=f"output directory (default: {out})")

    stn = commands.add_parser("stn", help="CNN vs ST-CNN on distorted digits (Table 1)")
    common(stn, 10, "results/stn")
    stn.add_argument("--distortions", default="r,rts,p,e",
                     help="comma-separated configs of mnist_sample (default: r,rts,p,e)")
    swwae = commands.add_parser("swwae", help="SWWAE with few labels vs the labels alone")
    common(swwae, 20, "results/swwae")
    swwae.add_argument("--labels", default="100,1000",
                       help="comma-separated numbers of labelled digits (default: 100,1000)")
    swwae.add_argument("--soft", action="store_true",
                       help="also train the soft-pooling variant (whatwhere_mnist_soft)")
    speed = commands.add_parser("stn-speed", help="the spatial transformer's cost, images/s")
    speed.add_argument("--batch-42", type=int, default=64)
    speed.add_argument("--batch-224", type=int, default=8)
    speed.add_argument("--steps", type=int, default=5, help="steps per timed window")
    speed.add_argument("--windows", type=int, default=3, help="timed windows (the best counts)")
    speed.add_argument("--out", default="results/stn_speed")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    run = {"stn": stn_experiment, "swwae": swwae_experiment, "stn-speed": stn_speed}
    from train import train as train_lib

    try:
        result = run[args.experiment](args)
    except train_lib.USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(result["table"])
    for figure in result.get("figures", []):
        print(f"figure: {figure}")
    print(f"results: {os.path.join(args.out, 'results.json')}, "
          f"{os.path.join(args.out, 'results.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
