"""The conversion engine: reads weight files and fills a model's variables with foreign arrays.

Each family declares, per variant, which reference implementation it can read
(:class:`jaxcnn.spec.Converter`: the source framework, the reference's model name, and a
``rename`` function from the reference's array names to ours, written in the shared vocabulary
of :mod:`jaxcnn.spec`). This module executes such a declaration for any family; it imports
nothing from jaxcnn but :mod:`jaxcnn.spec`. Finding a variant's converters and building its
variables by name (:func:`jaxcnn.convert.load_pretrained`) needs the registry and sits above it.

The array layouts are translated here once for every family:

* PyTorch convolution kernels are OIHW (grouped: O, I/groups, H, W); Flax's are HWIO
  (H, W, I/groups, O). Linear weights are (out, in); Flax Dense kernels are (in, out).
* Keras kernels are already HWIO; Keras depthwise kernels are (H, W, C, multiplier), Flax's
  grouped kernel is (H, W, 1, C * multiplier).
* BatchNorm: weight/gamma -> ``params/.../scale``, bias/beta -> ``params/.../bias``,
  running_mean/moving_mean -> ``batch_stats/.../mean``, running_var/moving_variance ->
  ``batch_stats/.../var``. PyTorch's ``num_batches_tracked`` has no counterpart: the engine
  drops it before any rename sees it.

A file that cannot be read (missing, truncated, of an unknown format, or a pickle that would
run code to load) raises :class:`WeightFileError`, whose message names the file and the fix.

A rename raises :class:`jaxcnn.spec.NotMine` for a name outside its scheme; the engine reports
that name as unexpected. It catches nothing else: any other error of a rename (a real problem
with the weights, such as the session numbering of Keras' InceptionV3) reaches the caller as
it was raised. Nothing is left silently at its random initial value: every variable of the
model must be written exactly once and every array of the source must be used, or
:class:`WeightMismatchError` lists the offending names. Reading safetensors, ``.npz`` or a
mapping of NumPy arrays does not import torch; ``.pth``/``.pt`` files need it.
"""

from __future__ import annotations

import os
import pickle
import re
from typing import Any, Mapping

import numpy as np
from flax import traverse_util

from jaxcnn.spec import SOURCES, Converter, NotMine, WeightMismatchError

__all__ = ["SOURCES", "Converter", "NotMine", "WeightFileError", "WeightMismatchError", "convert",
           "load_keras_weights", "load_state_dict"]

# Arrays of the source frameworks that no model variable corresponds to (PyTorch BatchNorm's
# step counter).
DROPPED_LEAVES = ("num_batches_tracked",)


# ----------------------------------------------------------------------------------------------
# Reading files


class WeightFileError(ValueError):
    """A weights file that cannot be read: missing, truncated or corrupt, of an unknown format,
    or a pickle that would run code to load."""


_FORMATS = {".safetensors": "safetensors", ".npz": "NumPy .npz", ".h5": "Keras HDF5",
            ".hdf5": "Keras HDF5", ".keras": "Keras"}


def load_state_dict(source: str | os.PathLike | Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Reads a state dict into ``{name: np.ndarray}``.

    ``source`` is a mapping of names to arrays (NumPy, torch tensors, jax arrays), or a path to
    a ``.safetensors``, ``.npz``, ``.pth``/``.pt``/``.bin`` (torch), or Keras ``.h5`` /
    ``.weights.h5`` file. Torch checkpoints that wrap the weights (``{"state_dict": ...}``,
    ``{"model": ...}``) are unwrapped, and DataParallel's ``module.`` prefix is removed.
    """
    if isinstance(source, Mapping):
        return _unwrap({k: _to_numpy(v) for k, v in source.items()})
    path = os.fspath(source)
    if not os.path.isfile(path):
        what = "a directory, not a weights file" if os.path.isdir(path) else "not there"
        raise WeightFileError(f"No weights file at {path!r}: it is {what}. Pass the path of "
                              f"a .safetensors, .npz, .pth/.pt or Keras .h5 file.")
    try:
        return _read_state_dict(path)
    except (WeightFileError, WeightMismatchError):
        raise
    except ImportError as err:
        raise WeightFileError(f"Reading {path!r} needs the {err.name} package (pip install "
                              f"{err.name}).") from None
    except pickle.UnpicklingError as err:
        # torch.load(weights_only=True) met an object it will not build: loading it would run
        # whatever code the pickle names. Say so, without the advice to switch that off.
        named = re.search(r"GLOBAL ([\w.]+)", str(err))
        raise WeightFileError(
            f"Refusing {path!r}: it is a pickle that names "
            f"{named.group(1) if named else 'objects other than tensors'}, and unpickling it "
            f"could run arbitrary code. Export the weights as .safetensors or NumPy .npz "
            f"(arrays only, no pickle) where they came from, e.g. "
            f"safetensors.torch.save_file(model.state_dict(), 'weights.safetensors').") from None
    except Exception as err:  # noqa: BLE001 - each format's reader fails in its own way
        kind = next((v for k, v in _FORMATS.items() if path.lower().endswith(k)), "PyTorch")
        cause = (str(err).strip() or "?").splitlines()[0].split(". ")[0][:200]
        raise WeightFileError(
            f"Cannot read {path!r} as a {kind} file: it is truncated or corrupt "
            f"({type(err).__name__}: {cause}). Download or export it again.") from None


def _read_state_dict(path: str) -> dict[str, np.ndarray]:
    lower = path.lower()
    if lower.endswith(".safetensors"):
        from safetensors.numpy import load_file

        return load_file(path)
    if lower.endswith(".npz"):
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    if lower.endswith((".h5", ".hdf5", ".keras")):
        return load_keras_weights(path)
    if lower.endswith((".pth", ".pt", ".bin", ".ckpt", ".tar")):
        import torch

        obj = torch.load(path, map_location="cpu", weights_only=True)
        return _unwrap({k: _to_numpy(v) for k, v in _state_of(obj).items()})
    raise WeightFileError(
        f"Unknown weights format {path!r}: expected .safetensors, .npz, .pth/.pt/.bin (torch) "
        "or .h5/.weights.h5 (Keras)."
    )


def _state_of(obj: Any) -> Mapping[str, Any]:
    for key in ("state_dict", "model", "model_state", "state_dict_ema"):
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            return obj[key]
    if not isinstance(obj, Mapping):
        raise WeightFileError("The torch file holds no state dict (a mapping of names to "
                              "tensors).")
    return obj


def _unwrap(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor, without importing torch
        value = value.detach().cpu().numpy()
    return np.asarray(value)


# Variable order inside each Keras 3 ``.weights.h5`` layer group, by the group's layer type.
_KERAS3_ORDER = {
    "conv2d": ("kernel", "bias"),
    "depthwise_conv2d": ("depthwise_kernel", "bias"),
    "dense": ("kernel", "bias"),
    "normalization": ("mean", "variance", "count"),
}


def _keras_bn_names(count: int) -> tuple[str, ...]:
    # gamma is absent with scale=False (InceptionV3); beta with center=False (never in the zoo).
    return {4: ("gamma", "beta", "moving_mean", "moving_variance"),
            3: ("beta", "moving_mean", "moving_variance")}[count]


def load_keras_weights(path: str) -> dict[str, np.ndarray]:
    """Reads Keras weights into ``{"layer_name/weight_name": array}``.

    Both formats are read: Keras 3 ``.weights.h5`` (``model.save_weights``) and the legacy HDF5
    of Keras 2 / ``keras.applications`` downloads (``layer_names`` and ``weight_names`` attrs).
    Names follow Keras' ``weight.path`` (``conv1_bn/moving_mean``).
    """
    import h5py

    out: dict[str, np.ndarray] = {}
    with h5py.File(path, "r") as f:
        root = f["model_weights"] if "model_weights" in f else f
        if "layer_names" in root.attrs:
            for layer in root.attrs["layer_names"]:
                layer = layer.decode() if isinstance(layer, bytes) else layer
                group = root[layer]
                for wname in group.attrs.get("weight_names", []):
                    wname = wname.decode() if isinstance(wname, bytes) else wname
                    short = wname.split("/")[-1].split(":")[0]
                    out[f"{layer}/{short}"] = np.asarray(group[wname])
            return out
        if "layers" not in root:
            raise WeightMismatchError(f"{path!r} is not a Keras weights file (no 'layers' group).")
        _read_keras3(root["layers"], out)
    return out


def _read_keras3(layers_group: Any, out: dict[str, np.ndarray]) -> None:
    for group_name, group in layers_group.items():
        if "vars" in group:
            arrays = [np.asarray(group["vars"][str(i)]) for i in range(len(group["vars"]))]
            if arrays:
                kind = group_name.rstrip("0123456789").rstrip("_")
                layer = group["vars"].attrs.get("name", group_name)
                names = (_keras_bn_names(len(arrays)) if kind == "batch_normalization"
                         else _KERAS3_ORDER.get(kind, tuple(str(i) for i in range(len(arrays)))))
                for n, a in zip(names, arrays):
                    out[f"{layer}/{n}"] = a
        if "layers" in group:  # nested models
            _read_keras3(group["layers"], out)


# ----------------------------------------------------------------------------------------------
# Converting


def _to_flax_layout(name: str, array: np.ndarray, target: tuple[int, ...], source: str) -> np.ndarray:
    """Turns one source array into the layout of the Flax variable it feeds."""
    leaf = name.rsplit("/", 1)[-1]
    if leaf == "kernel" and source != "keras":
        if array.ndim == 4 and len(target) == 4:
            return array.transpose(2, 3, 1, 0)  # OIHW -> HWIO
        if array.ndim == 2 and len(target) == 2:
            return array.T
        if array.ndim == 2 and len(target) == 4:  # Linear read into a 1x1 convolution
            return array.T.reshape(target)
        if array.ndim == 4 and len(target) == 2:  # 1x1 convolution read into a Dense
            return array.reshape(array.shape[0], -1).T
    if leaf == "kernel" and source == "keras":
        if array.shape != target and array.size == int(np.prod(target)):
            # Depthwise (H, W, C, mult) -> grouped (H, W, 1, C*mult); 1x1 conv <-> Dense.
            return array.reshape(target)
    if array.shape != target and array.size == int(np.prod(target)) and array.ndim <= 1:
        return array.reshape(target)  # scalars and (1, 1, 1, C) statistics
    return array


def convert(
    state_dict: Mapping[str, np.ndarray],
    template: Mapping[str, Any],
    converter: Converter,
) -> dict[str, Any]:
    """Fills ``template`` (variables or their shapes) with the arrays of ``state_dict``.

    Returns a new variables dict of NumPy float32 arrays shaped like the template. Raises
    :class:`WeightMismatchError` listing every missing, unexpected and misshapen name.
    """
    flat_template = {"/".join(k): v for k, v in traverse_util.flatten_dict(template).items()}
    absent = set(converter.optional) - {k.split("/")[1] for k in flat_template}
    filled: dict[str, np.ndarray] = {}
    unexpected, misshapen, duplicated = [], [], []
    for key, value in state_dict.items():
        if key.rsplit(".", 1)[-1] in DROPPED_LEAVES:
            continue
        try:
            target = converter.rename(key)
        except NotMine:  # a name of another network or framework
            unexpected.append(key)
            continue
        if target is None or target.split("/")[1] in absent:
            continue
        if target not in flat_template:
            unexpected.append(f"{key} -> {target}")
            continue
        if target in filled:
            duplicated.append(f"{key} -> {target}")
            continue
        shape = tuple(flat_template[target].shape)
        array = np.asarray(value)
        if converter.fix is not None:
            array = converter.fix(key, array, shape)
        array = _to_flax_layout(target, array, shape, converter.source)
        if array.shape != shape:
            misshapen.append(f"{key} {tuple(np.shape(value))} -> {target} {shape}")
            continue
        filled[target] = array.astype(np.float32)
    missing = sorted(set(flat_template) - set(filled))
    problems = []
    if missing:
        problems.append(f"{len(missing)} variable(s) of the model got no array: "
                        + ", ".join(missing[:20]) + (" ..." if len(missing) > 20 else ""))
    if unexpected:
        problems.append(f"{len(unexpected)} source array(s) have no place in the model: "
                        + ", ".join(unexpected[:20]) + (" ..." if len(unexpected) > 20 else ""))
    if misshapen:
        problems.append(f"{len(misshapen)} array(s) have the wrong shape: "
                        + ", ".join(misshapen[:20]) + (" ..." if len(misshapen) > 20 else ""))
    if duplicated:
        problems.append("several source arrays map to one variable: " + ", ".join(duplicated[:20]))
    if problems:
        raise WeightMismatchError(
            f"The {converter.source} weights ({converter.reference}) do not fit this model: "
            + "; ".join(problems)
            + ". Check that --arch names the same architecture (and num_classes) as the weights."
        )
    nested = traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in filled.items()})
    return nested

