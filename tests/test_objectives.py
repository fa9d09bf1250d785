"""Objectives that networks declare: the SWWAE objective trains, its unlabelled images give no
classification gradient, ``--labelled`` keeps a stratified subset, bad flags are refused."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcnn
from train import objectives as objectives_lib
from train import plan as plan_lib
from train import train as train_lib
from train.configs.default import ConfigError, get_config
from train.input_pipeline import labelled_subset
from tests.test_train import DIGITS, ToyData, toy_config


def test_every_network_names_an_objective_the_trainer_has():
    named = {jaxcnn.model_info(n).objective for n in jaxcnn.list_models()}
    assert named <= set(objectives_lib.OBJECTIVES), named
    assert jaxcnn.model_info("whatwhere_mnist").objective == "swwae"
    assert jaxcnn.model_info("whatwhere_mnist_soft").objective == "swwae"
    assert jaxcnn.model_info("resnet50").objective == "classification"


def test_every_objective_flag_is_a_config_field_documented_with_its_default():
    fields = get_config().__dataclass_fields__
    for objective in objectives_lib.OBJECTIVES.values():
        for flag in objective.FLAGS:
            assert flag.field in fields, flag
            text = fields[flag.field].metadata["help"]
            expected = "every label" if flag.default is None else f"default: {flag.default:g}"
            assert expected in text, (flag.field, text)


def _resolve(**changes):
    return plan_lib.resolve_config(get_config().replace(**changes), DIGITS, device_count=1,
                                   process_count=1)


def test_the_network_declares_the_objective_and_its_flags_get_defaults():
    plain = _resolve(arch="lenet5")
    assert plain.config.objective == "classification" and plain.config.lambda_rec is None
    swwae = _resolve(arch="whatwhere_mnist", labelled=100)
    assert swwae.config.objective == "swwae"
    assert (swwae.config.lambda_rec, swwae.config.lambda_mid) == (1.0, 1.0)
    assert swwae.config.labelled == 100
    # Every network also trains as a classifier.
    assert _resolve(arch="whatwhere_mnist", objective="classification").config.objective == (
        "classification")


def test_bad_objective_flags_name_what_applies():
    with pytest.raises(ConfigError, match=r"--lambda-rec applies to the swwae objective, not to "
                                          r"classification.*resnet50.*Options of "
                                          r"classification: none.*whatwhere_mnist"):
        _resolve(arch="resnet50", lambda_rec=0.5)
    with pytest.raises(ConfigError, match=r"--labelled applies to the swwae objective"):
        _resolve(arch="lenet5", labelled=100)
    with pytest.raises(ConfigError, match=r"--labelled 4001: keep between 10 .* and 4,000"):
        _resolve(arch="whatwhere_mnist", labelled=4001)
    with pytest.raises(ConfigError, match=r"--labelled 9: keep between 10 \(one label per "
                                          r"class\)"):
        _resolve(arch="whatwhere_mnist", labelled=9)
    with pytest.raises(ConfigError, match=r"--lambda-mid must be at least 0"):
        _resolve(arch="whatwhere_mnist", lambda_mid=-1.0)
    with pytest.raises(ConfigError, match=r"--objective swwae: lenet5 .* trains with "
                                          r"classification"):
        _resolve(arch="lenet5", objective="swwae")
    with pytest.raises(ConfigError, match=r"--objective 'ssl' is not one of classification, "
                                          r"swwae"):
        _resolve(arch="lenet5", objective="ssl")
    with pytest.raises(ConfigError, match=r"--mixup 0.2: the swwae objective takes one integer"):
        _resolve(arch="whatwhere_mnist", mixup=0.2)


def test_labelled_subset_is_stratified_and_fixed_by_the_seed():
    labels = np.repeat([0, 1, 2], [50, 30, 20])
    chosen = labelled_subset(labels, 10, seed=0)
    # 10 labels in proportion to 50/30/20 images: 5, 3 and 2 (at least one per class).
    assert np.bincount(labels[chosen]).tolist() == [5, 3, 2]
    np.testing.assert_array_equal(chosen, labelled_subset(labels, 10, seed=0))
    assert not np.array_equal(chosen, labelled_subset(labels, 10, seed=1))
    # As few labels as classes: one each, however unbalanced the classes.
    assert np.bincount(labels[labelled_subset(labels, 3, seed=2)]).tolist() == [1, 1, 1]


def test_unlabelled_images_give_no_classification_gradient():
    """Label -1 counts in the reconstruction terms only: the classifier's gradient is the one of
    the labelled images alone, whatever the unlabelled images are; the decoder's is not."""
    # Two narrow 3x3 stages (an input and a middle term), cheap enough for the edit-test loop.
    model = jaxcnn.create_model("whatwhere_mnist", num_classes=4, features=(4, 4),
                                kernel_size=3)
    swwae = objectives_lib.Swwae(lambda_rec=1.0, lambda_mid=0.5)
    nll_only = objectives_lib.Swwae(lambda_rec=0.0, lambda_mid=0.0)
    images = jax.random.normal(jax.random.key(0), (4, 8, 8, 1))
    # The same batch with other unlabelled images (rows 1 and 3).
    other = images.at[1::2].set(jax.random.normal(jax.random.key(1), (2, 8, 8, 1)))
    labels = jnp.array([3, -1, 0, -1])

    def grads(objective, params, images, labels):
        def loss(params):
            out, sown = model.apply({"params": params}, images, train=True,
                                    mutable=objective.collections)
            return objective.loss(out, sown, images, labels)[0]
        return jax.grad(loss)(params)

    @jax.jit
    def run(images, other):
        params = model.init(jax.random.key(2), images)["params"]
        return (grads(swwae, params, images, labels), grads(swwae, params, other, labels),
                grads(nll_only, params, images, labels),
                grads(nll_only, params, images[::2], labels[::2]))

    full, changed, nll_full, nll_labelled_alone = run(images, other)
    # The classifier (the head on the top "what") learns from the labelled images only.
    np.testing.assert_allclose(full["head"]["kernel"], changed["head"]["kernel"], rtol=1e-5,
                               atol=1e-7)
    # The reconstruction terms do see the unlabelled images: the decoder's gradient changes.
    assert not np.allclose(full["deconv1"]["kernel"], changed["deconv1"]["kernel"])
    # Without the reconstruction terms the batch trains as its labelled images alone would.
    for a, b in zip(jax.tree.leaves(nll_full), jax.tree.leaves(nll_labelled_alone)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


@pytest.mark.slow
def test_a_network_with_an_objective_trains(tmp_path, capsys):
    """A few real steps of the SWWAE objective through train_and_evaluate (toy 8x8 images)."""
    from train import metrics as metrics_lib

    config = toy_config(tmp_path, arch="whatwhere_mnist", max_steps=3, epochs=1,
                        log_every=1, lambda_mid=0.5)
    result = train_lib.train_and_evaluate(config, data=ToyData())
    out = capsys.readouterr().out
    assert result.config.objective == "swwae" and result.step == 3
    assert "objective swwae (lambda_rec 1, lambda_mid 0.5)" in out
    assert "train nll" in out and " rec " in out and " mid " in out
    train = [r for r in metrics_lib.read_metrics(str(tmp_path)) if r["split"] == "train"]
    assert [r["step"] for r in train] == [1, 2, 3]
    assert all(r["total_loss"] == pytest.approx(r["loss"] + r["reconstruction"]
                                                + 0.5 * r["middle"], rel=1e-5) for r in train)
    assert train[-1]["reconstruction"] < train[0]["reconstruction"]
    assert (tmp_path / "reconstructions" / "epoch_001.png").stat().st_size > 2_000


@pytest.mark.slow
def test_the_pipeline_keeps_the_same_stratified_labels_every_epoch_and_process():
    from train import input_pipeline

    def labels(seed, process_index=0, process_count=1):
        it = input_pipeline.train_iterator(
            "mnist_sample", data_dir=None, global_batch_size=500, image_size=28, seed=seed,
            augment="none", labelled=100, labelled_seed=7, process_index=process_index,
            process_count=process_count)
        # One epoch (4,000 images) of this process's share, with the images to tell them apart.
        batches = [next(it) for _ in range(8)]
        return (np.concatenate([b["label"] for b in batches]),
                np.concatenate([b["image"] for b in batches]))

    first, images = labels(seed=0)
    assert (first >= 0).sum() == 100
    assert np.bincount(first[first >= 0], minlength=10).tolist() == [10] * 10
    assert set(np.unique(first)) <= set(range(-1, 10))
    kept = {img.tobytes() for img, y in zip(images, first) if y >= 0}
    again, images = labels(seed=1)  # another epoch's order
    assert {img.tobytes() for img, y in zip(images, again) if y >= 0} == kept
    shares = [labels(seed=0, process_index=p, process_count=2) for p in range(2)]
    assert {img.tobytes() for y, imgs in shares for img, l in zip(imgs, y) if l >= 0} == kept


@pytest.mark.slow
def test_main_trains_whatwhere_with_100_labels(tmp_path, capsys):
    from train import main as main_lib

    rc = main_lib.main(["--arch", "whatwhere_mnist", "--labelled", "100", "--max-steps", "3",
                        "--workdir", str(tmp_path), "--no-progress", "--no-tensorboard"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "objective swwae (lambda_rec 1, lambda_mid 1, labelled 100)" in out
    assert "Final test accuracy of whatwhere_mnist" in out
