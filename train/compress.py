"""Deep Compression of a trained network: ``python -m train.compress --workdir W --out O``.

Han, Mao & Dally's pipeline (ICLR 2016) on a training run's best checkpoint, with the trainer
doing every retraining (its data pipeline, recipe, progress bars and Orbax checkpoints), and
:mod:`jaxcnn.compress` the pruning, the weight sharing and the file:

1. ``prune``: ``--prune-rounds`` rounds of magnitude pruning and retraining (Han et al. 2015's
   iterative pruning), each a training run in ``OUT/prune<r>`` that starts from the previous
   one (``--pretrained``) with :func:`jaxcnn.compress.keep_pruned` chained after the recipe's
   optimizer. The fraction of weights kept falls geometrically to the target over the rounds.
2. ``quantize``: k-means weight sharing of the pruned network and fine-tuning of the shared
   weights, a training run in ``OUT/quantize`` through :func:`jaxcnn.compress.share_weights`.
3. ``encode``: the Huffman-coded file ``OUT/<arch>.jxdc``, decoded again and evaluated; the
   paper's per-layer table on stdout and in ``OUT/report.json``, and ``OUT/report.png`` (the
   weights before and after pruning with the shared weights before and after fine-tuning, and
   the distributions of the coded indices: the paper's Figs. 4 and 5).

Every stage is resumable: a finished stage is recorded in ``OUT/compress.json`` and not run
again; an interrupted retraining resumes from its latest checkpoint. The source workdir is only
read. Each stage hands on, and reports, the checkpoint ``--pretrained`` takes from a workdir
(the best by eval accuracy), the same rule by which the uncompressed network is measured.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from typing import Any, Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from absl import logging as absl_logging  # noqa: E402

from jaxcnn import compress  # noqa: E402
from train import checkpoints as checkpoints_lib  # noqa: E402
from train import train as train_lib  # noqa: E402
from train.configs.default import Config, ConfigError  # noqa: E402
from train.parallel import JitParallel  # noqa: E402
from train.plan import resolve_config  # noqa: E402

STAGES = ("prune", "quantize", "encode")
RECORD = "compress.json"


@dataclasses.dataclass(frozen=True)
class Settings:
    """What a compression run was asked for; a rerun into the same ``--out`` must agree."""

    sparsity: Any  # fraction removed per layer (layer name, conv, fc or *), or None
    quality: Any  # threshold in standard deviations per layer, or None
    bits: Any  # weight bits per layer
    index_bits: Any  # relative index bits per layer
    prune_rounds: int
    retrain_epochs: int
    retrain_lr_scale: float
    finetune_epochs: int
    finetune_lr_scale: float


def parse_spec(text: str | None, cast: Callable[[str], Any], flag: str) -> Any:
    """``"0.9"`` -> 0.9 for every layer; ``"conv=0.5,fc=0.9,head=0.8"`` -> a mapping
    (:func:`jaxcnn.compress.per_layer`); ``"paper"`` and ``None`` stay as they are."""
    if text is None or text == "paper":
        return text
    try:
        if "=" not in text:
            return cast(text)
        spec = {}
        for part in text.split(","):
            key, value = part.split("=")
            spec[key.strip()] = cast(value)
        return spec
    except ValueError:
        raise compress.CompressionError(
            f"{flag} {text!r}: give one number for every layer, or LAYER=VALUE pairs separated "
            f"by commas (LAYER: a layer name, conv, fc or *), or 'paper'.") from None


def _whole(text: str) -> int:
    if not text.strip().lstrip("-").isdigit():
        raise ValueError(text)
    return int(text)


def resolve_settings(arch: str, layers: dict[str, tuple[int, ...]], args: argparse.Namespace
                     ) -> Settings:
    """The settings of ``args`` for ``arch``, with "paper" (the default for the networks of the
    paper's tables) read from :data:`jaxcnn.compress.PAPER`, checked for every layer."""
    paper = compress.PAPER.get(arch)

    def from_paper(value: Any, attribute: str, flag: str, fallback: Any) -> Any:
        if value is None:
            value = "paper" if paper else fallback
        if value != "paper":
            return value
        if paper is None:
            raise compress.CompressionError(
                f"{flag} paper: the paper has no table for {arch} (it has "
                f"{', '.join(compress.PAPER)}); give the values, e.g. {flag} 0.9.")
        return getattr(paper, attribute)

    sparsity = parse_spec(args.sparsity, float, "--sparsity")
    quality = parse_spec(args.quality, float, "--quality")
    if sparsity is None and quality is None:
        sparsity = "paper"
    if sparsity is not None and quality is not None:
        raise compress.CompressionError("--sparsity and --quality are two pruning rules; give "
                                        "one of them.")
    if sparsity is not None:
        sparsity = from_paper(sparsity, "sparsity", "--sparsity", None)
        compress.check_fractions(compress.per_layer(sparsity, layers, "--sparsity"), "--sparsity")
    if quality is not None:
        bad = {k: q for k, q in compress.per_layer(quality, layers, "--quality").items() if q < 0}
        if bad:
            raise compress.CompressionError(f"--quality must be >= 0 (a multiple of the "
                                            f"layer's standard deviation); got {bad}.")
    bits = from_paper(parse_spec(args.bits, _whole, "--bits"), "bits", "--bits",
                      compress.DEFAULT_BITS)
    index_bits = from_paper(parse_spec(args.index_bits, _whole, "--index-bits"), "index_bits",
                            "--index-bits", compress.DEFAULT_INDEX_BITS)
    compress.check_bits(compress.per_layer(bits, layers, "--bits"), "--bits")
    compress.check_bits(compress.per_layer(index_bits, layers, "--index-bits"), "--index-bits")
    for flag, value in (("--prune-rounds", args.prune_rounds),
                        ("--retrain-epochs", args.retrain_epochs),
                        ("--finetune-epochs", args.finetune_epochs)):
        if value < (0 if flag == "--prune-rounds" else 1):
            raise compress.CompressionError(f"{flag} must be at least "
                                            f"{0 if flag == '--prune-rounds' else 1}; got {value}.")
    for flag, value in (("--retrain-lr-scale", args.retrain_lr_scale),
                        ("--finetune-lr-scale", args.finetune_lr_scale)):
        if not value > 0:
            raise compress.CompressionError(f"{flag} must be positive; got {value}.")
    return Settings(sparsity, quality, bits, index_bits, args.prune_rounds, args.retrain_epochs,
                    args.retrain_lr_scale, args.finetune_epochs, args.finetune_lr_scale)


def round_rule(settings: Settings, round_: int) -> dict[str, Any]:
    """The pruning rule of round ``round_`` (1 .. rounds): the kept fraction of each layer falls
    geometrically from 1 to its target; a quality threshold is the same every round."""
    if settings.quality is not None:
        return {"quality": settings.quality}
    share = round_ / settings.prune_rounds

    def sparsity(s: float) -> float:
        return round(1.0 - (1.0 - s) ** share, 6)

    if isinstance(settings.sparsity, dict):
        return {"sparsity": {k: sparsity(v) for k, v in settings.sparsity.items()}}
    return {"sparsity": sparsity(settings.sparsity)}


class Compressor:
    """The stages of one compression run: evaluation, the retraining runs, the record."""

    def __init__(self, workdir: str, out: str, args: argparse.Namespace, *, data: Any = None,
                 model_factory: Callable | None = None, print_fn: Callable[[str], None] = print):
        self.workdir, self.out = os.path.abspath(workdir), os.path.abspath(out)
        if self.out == self.workdir or self.out.startswith(self.workdir + os.sep):
            raise ConfigError(f"--out {out} is inside --workdir {workdir}, which is never "
                              f"written to; pass another --out.")
        self.model_factory, self.say = model_factory, print_fn
        # What can be wrong with the input is checked before the data pipeline is loaded.
        self.variables, step, stored = self.stage_variables(self.workdir, source=True)
        config = Config.from_dict(stored).replace(
            data_dir=args.data_dir or stored.get("data_dir"), progress=args.progress,
            coordinator=None, num_processes=None, process_id=None, max_steps=None)
        self.config = config
        self.arch = config.arch
        layers = compress.compressible_layers(self.variables["params"])
        self.settings = resolve_settings(self.arch, layers, args)
        self.paper = compress.PAPER.get(self.arch)
        self.source = {"workdir": self.workdir, "step": step}
        self.record = self._load_record()
        self.data = data or train_lib.default_data()
        # One evaluation program for every stage's weights.
        self.parallel = JitParallel()
        info = self.data.dataset_info(config.dataset, config.data_dir)
        self.plan = resolve_config(config, info, model_factory=model_factory, process_count=1,
                                   training=False)
        self.eval_step = train_lib.build(self.plan, self.parallel,
                                         model_factory=model_factory).eval_step

    # -- the record of finished stages --------------------------------------------------------
    def _load_record(self) -> dict[str, Any]:
        path = os.path.join(self.out, RECORD)
        settings = json.loads(json.dumps(dataclasses.asdict(self.settings)))
        if not os.path.exists(path):
            return {"arch": self.arch, "source": self.source, "settings": settings, "stages": {}}
        with open(path) as f:
            record = json.load(f)
        if record.get("settings") != settings or record.get("source") != self.source:
            raise compress.CompressionError(
                f"{self.out} holds a compression of {record.get('source', {}).get('workdir')} "
                f"with the settings {record.get('settings')}, not of this run's "
                f"{self.workdir} with {settings}; pass another --out (or the same flags to "
                f"resume it).")
        return record

    def _save_record(self, name: str, result: dict[str, Any]) -> None:
        self.record["stages"][name] = result
        checkpoints_lib.write_json_atomic(os.path.join(self.out, RECORD), self.record)

    # -- weights and their accuracy -----------------------------------------------------------
    def stage_variables(self, workdir: str, *, source: bool = False
                        ) -> tuple[dict[str, Any], int, dict[str, Any]]:
        """The variables of the checkpoint ``--pretrained`` takes from ``workdir`` (the best,
        else the latest), its step and stored config."""
        ckpts = checkpoints_lib.Checkpoints(os.path.join(workdir, "checkpoints"),
                                            read_only=True)
        try:
            step = ckpts.best_step() or ckpts.latest_step()
            if step is None:
                what = "--workdir" if source else "the stage"
                raise checkpoints_lib.CheckpointError(
                    f"No checkpoint in {ckpts.directory}: {what} {workdir} has not saved one. "
                    f"Train it first (python -m train.main --workdir {workdir}).")
            return ckpts.restore_variables(step), step, ckpts.stored_config(step)
        finally:
            ckpts.close()

    def accuracy(self, variables: dict[str, Any]) -> float:
        """Top-1 of ``variables`` on the eval split, in percent."""
        params = variables["params"]
        state = train_lib.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                                     batch_stats=variables.get("batch_stats") or {},
                                     opt_state=())
        state = self.parallel.place(state)
        metrics = train_lib.evaluate(state, self.eval_step, self.parallel, self.data, self.plan)
        return 100.0 * metrics["top1"]

    # -- the retraining runs ------------------------------------------------------------------
    def retrain(self, name: str, pretrained: str, epochs: int, lr_scale: float,
                wrap: Callable) -> str:
        """A training run in ``OUT/name`` from ``pretrained`` with the optimizer wrapped.

        Every layer trains (a frozen layer would keep the weights its masks remove) and no
        weight average is kept (an average of the weights would not keep their zeros)."""
        c = self.config
        config = c.replace(workdir=os.path.join(self.out, name), pretrained=pretrained,
                           epochs=epochs, lr=c.lr * lr_scale, warmup_epochs=0.0,
                           lr_decay_epochs=None, checkpoint_every=0, freeze="none",
                           ema_decay=0.0)
        self.say(f"\n== {name}: {epochs} epochs from {pretrained} at lr {config.lr:.3g}")
        train_lib.train_and_evaluate(config, data=self.data, model_factory=self.model_factory,
                                     print_fn=self.say, wrap_optimizer=wrap)
        return config.workdir

    def prune(self) -> str:
        """The pruning rounds; returns the workdir of the last (the source if there is none)."""
        previous = self.workdir
        for round_ in range(1, self.settings.prune_rounds + 1):
            name = f"prune{round_}"
            rule = round_rule(self.settings, round_)
            if name not in self.record["stages"]:
                before, _, _ = self.stage_variables(previous)
                masks = compress.magnitude_masks(before["params"], **rule)
                pruned = {**before, "params": jax.tree.map(lambda p, m: np.asarray(p) * m,
                                                           before["params"], masks)}
                accuracy_pruned = self.accuracy(pruned)
                self.retrain(name, previous, self.settings.retrain_epochs,
                             self.settings.retrain_lr_scale,
                             lambda tx, rule=rule: optax.chain(tx, compress.keep_pruned(**rule)))
                after, step, _ = self.stage_variables(os.path.join(self.out, name))
                self._save_record(name, {
                    "rule": rule, "step": step, "accuracy_pruned": accuracy_pruned,
                    "accuracy_retrained": self.accuracy(after),
                    "kept": {n: float(np.mean(np.asarray(w) != 0)) for n, w in compress.kernels(
                        after["params"]).items()}})
            result = self.record["stages"][name]
            self.say(f"{name}: accuracy {result['accuracy_pruned']:.2f}% once pruned, "
                     f"{result['accuracy_retrained']:.2f}% retrained; kept "
                     + ", ".join(f"{n} {100 * k:.1f}%" for n, k in result["kept"].items()))
            previous = os.path.join(self.out, name)
        return previous

    def quantize(self, pruned_workdir: str) -> None:
        """k-means and the fine-tuning of the shared weights."""
        if "quantize" in self.record["stages"]:
            return
        before, _, _ = self.stage_variables(pruned_workdir)
        shared = compress.quantize(before["params"], self.settings.bits)
        accuracy_kmeans = self.accuracy(_with_shared(before, shared))
        self.retrain("quantize", pruned_workdir, self.settings.finetune_epochs,
                     self.settings.finetune_lr_scale, self.wrap_shared)
        variables, shared_tuned, step = self.quantized_network()
        self._save_record("quantize", {
            "step": step, "accuracy_kmeans": accuracy_kmeans,
            "accuracy_finetuned": self.accuracy(variables),
            "codebooks_kmeans": {n: s.codebook.tolist() for n, s in shared.items()},
            "codebooks_finetuned": {n: s.codebook.tolist() for n, s in shared_tuned.items()}})

    def wrap_shared(self, tx):
        return compress.share_weights(tx, self.settings.bits)

    def quantized_network(self) -> tuple[dict[str, Any], dict[str, Any], int]:
        """The fine-tuned network as the optimizer state holds it: ``codebook[indices]`` for
        every shared layer (exactly), the other variables as trained; and the shared layers."""
        workdir = os.path.join(self.out, "quantize")
        ckpts = checkpoints_lib.Checkpoints(os.path.join(workdir, "checkpoints"),
                                            read_only=True)
        try:
            step = ckpts.best_step() or ckpts.latest_step()
            config = Config.from_dict(ckpts.stored_config(step)).replace(
                coordinator=None, num_processes=None, process_id=None)
            plan = resolve_config(config, self.plan.info, model_factory=self.model_factory,
                                  process_count=1, training=False)
            setup = train_lib.build(plan, self.parallel, model_factory=self.model_factory,
                                    wrap_optimizer=self.wrap_shared)
            state = ckpts.restore(step, self.parallel.abstract_state(setup.init_fn))
        finally:
            ckpts.close()
        state = self.parallel.fetch(state)
        shared = compress.shared_layers(state.params, state.opt_state)
        return _with_shared({"params": state.params, "batch_stats": state.batch_stats},
                            shared), shared, step

    def encode(self) -> dict[str, Any]:
        """The file, decoded and evaluated; the table, the JSON report and the figure."""
        variables, shared, _ = self.quantized_network()
        path = os.path.join(self.out, f"{self.arch}.jxdc")
        c = self.config
        compress.save(path, variables, shared, index_bits=self.settings.index_bits,
                      meta={"arch": self.arch, "num_classes": c.num_classes,
                            "image_size": c.image_size, "channels": c.channels,
                            "dataset": c.dataset})
        decoded, stats = compress.read(path)
        same = jax.tree.all(jax.tree.map(lambda a, b: np.array_equal(a, np.asarray(b)),
                                         decoded, {k: v for k, v in variables.items() if k in
                                                   decoded}))
        if not same or os.path.getsize(path) != stats.file_bytes:
            raise RuntimeError(f"{path} does not decode to the quantised network; this is a "
                               f"bug in jaxcnn.compress.")
        accuracy = self.accuracy(decoded)
        self._save_record("encode", {"file": path, "bytes": stats.file_bytes,
                                     "accuracy_decoded": accuracy})
        return self.report(stats, shared)

    def report(self, stats: compress.FileStats, shared: dict[str, compress.Shared]
               ) -> dict[str, Any]:
        """Prints the table, writes ``report.json`` and ``report.png``; returns the report."""
        stages = self.record["stages"]
        source_accuracy = stages["source"]["accuracy"]
        report = {
            "arch": self.arch, "source": self.source, "settings": self.record["settings"],
            "accuracy": {"uncompressed": source_accuracy,
                         **{name: {k: v for k, v in result.items() if k.startswith("accuracy")}
                            for name, result in stages.items() if name != "source"}},
            "layers": compress.table_rows(stats, self.paper),
            "file": {"path": stages["encode"]["file"], "bytes": stats.file_bytes,
                     "dense_float32_bytes": 4 * stats.values, "ratio": stats.ratio,
                     "coded_kernel_bytes": sum(layer.bytes for layer in stats.layers),
                     "dense_variable_bytes": stats.dense_bytes,
                     "header_bytes": stats.header_bytes},
            "paper": dataclasses.asdict(self.paper) if self.paper else None,
        }
        self.say("\n" + compress.format_table(stats, self.paper))
        final = stages["encode"]["accuracy_decoded"]
        self.say(f"accuracy: {source_accuracy:.2f}% uncompressed -> {final:.2f}% compressed "
                 f"({final - source_accuracy:+.2f} points)")
        checkpoints_lib.write_json_atomic(os.path.join(self.out, "report.json"), report)
        png = os.path.join(self.out, "report.png")
        draw(png, self, shared)
        self.say(f"written: {stages['encode']['file']}, {os.path.join(self.out, 'report.json')}, "
                 f"{png}")
        return report

    def run(self, until: str = "encode") -> dict[str, Any] | None:
        os.makedirs(self.out, exist_ok=True)
        if "source" not in self.record["stages"]:
            self._save_record("source", {"accuracy": self.accuracy(self.variables)})
        self.say(f"{self.arch} from {self.workdir} (step {self.source['step']}): "
                 f"{self.record['stages']['source']['accuracy']:.2f}% uncompressed")
        pruned = self.prune()
        if until == "prune":
            return None
        self.quantize(pruned)
        result = self.record["stages"]["quantize"]
        self.say(f"quantize: accuracy {result['accuracy_kmeans']:.2f}% after k-means, "
                 f"{result['accuracy_finetuned']:.2f}% with the shared weights fine-tuned")
        if until == "quantize":
            return None
        return self.encode()


def _with_shared(variables: dict[str, Any], shared: dict[str, Any]) -> dict[str, Any]:
    """``variables`` with each shared layer's kernel ``codebook[indices]``."""
    params = compress.replace_layers(variables["params"],
                                     {n: s.codebook[s.indices] for n, s in shared.items()})
    return {**variables, "params": params}


def draw(path: str, run: Compressor, shared: dict[str, Any]) -> None:
    """The paper's Figs. 4 and 5 for the largest layer: its weights before pruning; after
    pruning and retraining, with the shared weights of k-means and after fine-tuning; how often
    each shared weight and each relative index is stored."""
    # A Figure of its own, without pyplot, whose backend stays the user's (as train.metrics).
    from matplotlib.figure import Figure

    layers = compress.kernels(run.variables["params"])
    name = max(layers, key=lambda n: np.size(layers[n]))
    before = np.asarray(layers[name]).ravel()
    pruned_dir = (os.path.join(run.out, f"prune{run.settings.prune_rounds}")
                  if run.settings.prune_rounds else run.workdir)
    retrained = np.asarray(compress.kernels(run.stage_variables(pruned_dir)[0]["params"])[name]).ravel()
    stage = run.record["stages"]["quantize"]
    kmeans = np.asarray(stage["codebooks_kmeans"][name][1:])
    tuned = np.asarray(stage["codebooks_finetuned"][name][1:])
    indices = np.asarray(shared[name].indices).ravel()
    positions = np.flatnonzero(indices)
    index_bits = compress.per_layer(run.settings.index_bits, {
        n: s.indices.shape for n, s in shared.items()}, "index bits")[name]
    gaps, filler = compress.relative_index(positions, index_bits)
    symbols = np.zeros(gaps.size, np.int64)  # the weight index of every entry, 0 for a filler
    symbols[~filler] = indices[positions]

    figure = Figure(figsize=(11, 7.5), layout="constrained")
    (a, b), (c, d) = figure.subplots(2, 2)
    a.hist(before, bins=120, color="tab:blue")
    a.set(title=f"{name}: {before.size:,} weights before pruning", xlabel="weight",
          ylabel="count")
    alive = retrained[retrained != 0]
    b.hist(alive, bins=120, color="tab:blue", label="weights")
    top = b.get_ylim()[1]  # the shared weights in two rows below the histogram
    b.plot(kmeans, np.full_like(kmeans, -0.05 * top), "x", color="tab:green", markersize=6,
           label="shared weights, k-means (linear init.)")
    b.plot(tuned, np.full_like(tuned, -0.11 * top), ".", color="tab:red", markersize=6,
           label="shared weights, fine-tuned")
    b.set_ylim(-0.16 * top, top)
    b.set(title=f"after pruning and retraining: {alive.size:,} kept "
                f"({100 * alive.size / retrained.size:.1f}%)", xlabel="weight", ylabel="count")
    b.legend(loc="upper right", fontsize=8)
    counts = np.bincount(symbols, minlength=kmeans.size + 1)
    c.bar(np.arange(counts.size), counts, color="tab:purple", width=1.0)
    c.set(title="how often each weight index is stored (0: filler)", xlabel="weight index",
          ylabel="entries")
    d.bar(np.arange(1, 2 ** index_bits + 1), np.bincount(gaps, minlength=2 ** index_bits),
          color="tab:orange", width=1.0)
    d.set(title=f"relative index: gap to the previous entry ({index_bits} bits)",
          xlabel="gap", ylabel="entries")
    acc = run.record["stages"]
    figure.suptitle(
        f"Deep Compression of {run.arch}: {acc['source']['accuracy']:.2f}% -> "
        f"{acc['encode']['accuracy_decoded']:.2f}% top-1, "
        f"{acc['encode']['bytes']:,} bytes")
    figure.savefig(path, dpi=80)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m train.compress",
        description="Deep Compression (Han, Mao & Dally 2016) of a training run: iterative "
                    "pruning with retraining, k-means weight sharing with fine-tuning, Huffman "
                    "coding into OUT/ARCH.jxdc (jaxcnn.compress.load reads it). Stages resume; "
                    "the source workdir is only read.",
        epilog="examples:\n"
               "  python -m train.main --arch lenet_300_100 --workdir runs/lenet_300_100\n"
               "  python -m train.compress --workdir runs/lenet_300_100 "
               "--out runs/lenet_300_100_deep\n"
               "  python -m train.compress --workdir runs/resnet18 --out runs/r18_deep "
               "--sparsity conv=0.7,fc=0.9 --bits conv=8,fc=5",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", required=True, help="the --workdir of a training run")
    parser.add_argument("--out", required=True, help="where the stages, the file and the "
                        "report go (a rerun resumes there)")
    parser.add_argument("--sparsity", help="fraction of each layer's weights removed: one "
                        "number, LAYER=S pairs (LAYER: a layer, conv, fc or *), or 'paper' (the "
                        "paper's per-layer rates; the default for lenet_300_100, lenet5_caffe, "
                        "alexnet_paper, vgg16)")
    parser.add_argument("--quality", help="prune instead below QUALITY x the standard "
                        "deviation of each layer's weights (Han et al. 2015); same syntax")
    parser.add_argument("--bits", help="weight bits per layer, 1-16 (default: 'paper' where "
                        "the paper has a table, else conv=8,fc=5)")
    parser.add_argument("--index-bits", help="relative index bits per layer, 1-16 (default: "
                        "'paper' where the paper has a table, else conv=8,fc=5)")
    parser.add_argument("--prune-rounds", type=int, default=4,
                        help="prune-and-retrain rounds (0: quantise unpruned) (default: 4)")
    parser.add_argument("--retrain-epochs", type=int, default=12,
                        help="retraining epochs per pruning round (default: 12)")
    parser.add_argument("--retrain-lr-scale", type=float, default=0.5,
                        help="retraining learning rate over the source run's (default: 0.5)")
    parser.add_argument("--finetune-epochs", type=int, default=4,
                        help="epochs of fine-tuning the shared weights (default: 4)")
    parser.add_argument("--finetune-lr-scale", type=float, default=0.02,
                        help="fine-tuning learning rate over the source run's; each centroid "
                             "steps by the sum of its weights' gradients (default: 0.02)")
    parser.add_argument("--until", choices=STAGES, default="encode",
                        help="stop after this stage (default: encode, all of them)")
    parser.add_argument("--data-dir", help="TFDS data directory (default: the run's)")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                        help="progress bars (default: on)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    # Orbax warns on every read-only look at a checkpoint directory, which is all this does.
    absl_logging.set_verbosity(absl_logging.ERROR)
    try:
        Compressor(args.workdir, args.out, args).run(args.until)
    except (*train_lib.USER_ERRORS, compress.CompressionError, compress.CompressedFileError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
