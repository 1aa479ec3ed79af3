"""Saving a model with MACKO layers and loading it back: save and load.

    macko_spmv.sparsify(model, min_sparsity=0.3)
    macko_spmv.save(model, "model.safetensors")

    # later: the dense architecture, here without memory for its weights
    with torch.device("meta"):
        model = transformers.AutoModel.from_config(config)
    macko_spmv.load(model, "model.safetensors", device="cuda")

A state dict of a converted model holds each MackoLinear's arrays where the
dense architecture has a `weight`, so a plain `load_state_dict` (or a
library's own loader) into the dense model cannot place them, and a loader
that skips what it does not know re-initialises those layers. `load` turns
each linear layer that the file stores in MACKO form into a MackoLinear of
the stored size first, then loads the rest.

The file is a safetensors file with:
  tensors:  the model's state dict (each MackoLinear's values, deltas,
            row_indices, dense_shape, scales with 8-bit values, and bias
            under its name), each tensor
            shared by several names (tied weights, a module used twice)
            stored once, and the buffers a state dict leaves out
            (non-persistent ones, such as position ids), without which a
            model built on the meta device would lack them;
  metadata: FORMAT_KEY = FORMAT_VERSION, and JSON under the keys below:
            which modules are MACKO layers and their dense shapes, which
            names are aliases of which stored tensor, and which tensors are
            non-persistent buffers. Each tensor's dtype and shape are in the
            safetensors header.
"""

from __future__ import annotations

import json
import os
from typing import Optional, Union

import torch
from torch import nn

from .matrix import MackoMatrix
from .nn import _ARRAY_NAMES, _SCALES_NAME, MackoLinear, _module_aliases, _replace

__all__ = ["save", "load"]

FORMAT_KEY = "macko_spmv.format"
FORMAT_VERSION = "1"
LAYERS_KEY = "macko_spmv.layers"  # {module name: [out_features, in_features]}
ALIASES_KEY = "macko_spmv.aliases"  # {tensor name: the name it is stored under}
BUFFERS_KEY = "macko_spmv.buffers"  # [names of the non-persistent buffers stored]

# A MACKO layer's keys: values first (it stands where a linear layer's
# weight is), scales only with 8-bit values.
_MACKO_KEYS = (*_ARRAY_NAMES, "dense_shape", _SCALES_NAME)

PathLike = Union[str, "os.PathLike[str]"]


def _names(key: str) -> tuple[str, str]:
    """("encoder.layer.0.query", "weight") for "encoder.layer.0.query.weight"."""
    owner, _, leaf = key.rpartition(".")
    return owner, leaf


def _named_tensors(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """Every parameter and buffer under every name it has."""
    return [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]


def _non_persistent_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    buffers = {}
    for prefix, module in model.named_modules(remove_duplicate=False):
        for name in module._non_persistent_buffers_set:
            if module._buffers.get(name) is not None:
                buffers[f"{prefix}.{name}" if prefix else name] = module._buffers[name]
    return buffers


def save(model: nn.Module, path: PathLike) -> None:
    """Writes the model, MACKO layers included, to a safetensors file.

    Args:
      model: an nn.Module, typically converted by sparsify (any mix of
        MackoLinear and other modules); tensors on any devices but meta.
      path: the file to write (by convention ``*.safetensors``).

    Load it with :func:`load` into the dense architecture.
    """
    from safetensors.torch import save_file

    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    layers = {}
    for layer, names in _module_aliases(model, MackoLinear).values():
        for name in names:
            layers[name] = [layer.out_features, layer.in_features]
    extra = _non_persistent_buffers(model)
    tensors, aliases, storages = {}, {}, {}
    kept_by_view = {}
    for key, tensor in {**model.state_dict(), **extra}.items():
        if tensor.is_meta:
            raise ValueError(f"{key} is on the meta device: it has no data to save")
        tensor = tensor.detach()
        view = (tensor.device, tensor.dtype, tensor.untyped_storage().data_ptr(), tensor.storage_offset(),
                tuple(tensor.shape), tensor.stride())
        if view in kept_by_view and tensor.numel():  # the same tensor under another name
            aliases[key] = kept_by_view[view]
            continue
        kept_by_view[view] = key
        # safetensors stores each tensor whole and refuses two that share
        # memory: copy a strided view, or one of a storage already stored.
        storage = (tensor.device, tensor.untyped_storage().data_ptr())
        if not tensor.is_contiguous() or storage in storages:
            tensor = tensor.clone(memory_format=torch.contiguous_format)
        storages[(tensor.device, tensor.untyped_storage().data_ptr())] = key
        tensors[key] = tensor
    from . import __version__

    metadata = {
        FORMAT_KEY: FORMAT_VERSION,
        "macko_spmv.version": __version__,
        LAYERS_KEY: json.dumps(layers),
        ALIASES_KEY: json.dumps(aliases),
        BUFFERS_KEY: json.dumps(sorted(extra)),
    }
    save_file(tensors, os.fspath(path), metadata=metadata)


def _read_header(path: str):
    """(shapes {name: shape} for every name, aliases resolved; layers;
    aliases; buffers) of a file written by save."""
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        metadata = f.metadata() or {}
        if metadata.get(FORMAT_KEY) != FORMAT_VERSION:
            found = metadata.get(FORMAT_KEY)
            raise ValueError(
                f"{path} was not written by macko_spmv.save (format {found!r}, expected {FORMAT_VERSION!r}); "
                "load a plain state dict with model.load_state_dict"
            )
        shapes = {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}
    layers = {name: tuple(shape) for name, shape in json.loads(metadata[LAYERS_KEY]).items()}
    aliases = json.loads(metadata[ALIASES_KEY])
    buffers = set(json.loads(metadata[BUFFERS_KEY]))
    for key, stored in aliases.items():
        shapes[key] = shapes[stored]
    return shapes, layers, aliases, buffers


def _check_against_model(model, path, shapes, layers, buffers, strict):
    """Raises ValueError naming the first key, in the model's order, where
    the file and the model disagree; else returns the keys of the model's
    state dict (once the file's MACKO layers replace its linear layers) and
    the non-persistent buffers to load."""
    if "" in layers:
        raise ValueError(f"{path} stores the model itself as a MACKO linear layer; load it into a module that "
                         "contains the layer")
    expected = []
    for key, tensor in model.state_dict(keep_vars=True).items():
        owner, leaf = _names(key)
        module = model.get_submodule(owner) if owner else model
        if owner in layers:
            if not isinstance(module, (nn.Linear, MackoLinear)):
                raise ValueError(f"{path} stores {owner} as a MACKO linear layer, but the model's {owner} is a "
                                 f"{type(module).__name__}, not an nn.Linear")
            if (module.out_features, module.in_features) != layers[owner]:
                raise ValueError(f"{path} stores {owner} as a MACKO weight of shape {layers[owner]}, but the "
                                 f"model's {key} is {(module.out_features, module.in_features)}")
            if leaf in _MACKO_KEYS[1:]:
                continue  # a MackoLinear's: listed with its values
            if leaf in ("weight", _MACKO_KEYS[0]):  # in the place of the layer's weight
                wanted = {f"{owner}.{name}": None for name in _ARRAY_NAMES}
                wanted[f"{owner}.dense_shape"] = (2,)
                if f"{owner}.{_SCALES_NAME}" in shapes:  # 8-bit values
                    wanted[f"{owner}.{_SCALES_NAME}"] = (layers[owner][0],)
            else:
                wanted = {key: tuple(tensor.shape)}
        else:
            any_length = isinstance(module, MackoLinear) and leaf in _ARRAY_NAMES
            wanted = {key: None if any_length else tuple(tensor.shape)}
        for name, shape in wanted.items():  # None: a MACKO array, of any length
            expected.append(name)
            if name not in shapes:
                if strict:
                    raise ValueError(f"the model's {name} is not in {path} (pass strict=False to leave it as it is)")
            elif shape is None and len(shapes[name]) != 1:
                raise ValueError(f"{name} in {path} must be a 1-D MACKO array, got shape {shapes[name]}")
            elif shape is not None and shapes[name] != shape:
                raise ValueError(f"{name} has shape {shapes[name]} in {path}, but {shape} in the model")
    model_buffers = _non_persistent_buffers(model)
    for key in buffers:
        if key in model_buffers and shapes[key] != tuple(model_buffers[key].shape):
            raise ValueError(f"{key} has shape {shapes[key]} in {path}, but {tuple(model_buffers[key].shape)} "
                             "in the model")
    if strict:
        expected_keys = set(expected)
        for key in shapes:
            if key not in expected_keys and key not in buffers:
                owner = next((name for name in layers if key.startswith(name + ".")), None)
                where = f" (the file stores {owner} as a MACKO layer)" if owner is not None else ""
                raise ValueError(f"{path} holds {key}, which has no place in the model{where}")
    # What a model built on the meta device would keep without data.
    loaded = set(expected).intersection(shapes) | set(buffers).intersection(model_buffers)
    for key, tensor in _named_tensors(model):
        if tensor.is_meta and key not in loaded and _names(key)[0] not in layers:
            raise ValueError(f"the model's {key} is on the meta device and {path} holds no data for it")
    return [key for key in expected if key in shapes], [key for key in buffers if key in model_buffers]


def load(model: nn.Module, path: PathLike, device: Optional[Union[str, torch.device]] = None,
         strict: bool = True) -> nn.Module:
    """Loads a file written by :func:`save` into a model, in place.

    Args:
      model: the dense architecture of the saved model (nn.Linear where the
        saved model has a MackoLinear), or the converted one; its tensors
        may be on the meta device, so that no memory and no initialisation
        is spent on weights the file replaces.
      path: the safetensors file.
      device: where the loaded tensors go; None: where the model's tensors
        are (a MACKO layer where the linear layer's weight is), and on the
        CPU for those on the meta device.
      strict: as for ``load_state_dict``: every tensor of the model must be
        in the file and every tensor of the file in the model. Shapes must
        match either way.

    Every linear layer stored in MACKO form becomes a MackoLinear of the
    stored size, at each name it has; everything else is loaded as
    ``load_state_dict(..., assign=True)`` does, so tensors take the file's
    dtypes (the model then computes as the saved one did). Weights tied in
    the model stay tied. A file that does not match the model raises
    ValueError naming the first mismatched key, before the model is changed.

    Returns:
      model, loaded in place (the same object).
    """
    from safetensors.torch import load_file

    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    path = os.fspath(path)
    shapes, layers, aliases, buffers = _read_header(path)
    state_keys, buffer_keys = _check_against_model(model, path, shapes, layers, buffers, strict)

    stored = load_file(path)
    for key, kept in aliases.items():
        stored[key] = stored[kept]

    def placed(key, model_tensor):
        if device is not None:
            target = torch.device(device)
        else:
            target = torch.device("cpu") if model_tensor is None or model_tensor.is_meta else model_tensor.device
        return stored[key].to(target)

    # The MACKO layers, built (and validated) before anything is changed.
    replacements = []
    for module, names in _module_aliases(model, (nn.Linear, MackoLinear)).values():
        stored_names = [name for name in names if name in layers]
        if not stored_names:
            continue
        name = stored_names[0]
        where = module.values if isinstance(module, MackoLinear) else module.weight
        arrays = [placed(f"{name}.{array}", where) for array in _ARRAY_NAMES]
        scales_key = f"{name}.{_SCALES_NAME}"
        scales = placed(scales_key, where) if scales_key in stored else None
        bias = placed(f"{name}.bias", where) if f"{name}.bias" in stored else None
        try:
            matrix = MackoMatrix(*arrays, *layers[name], scales)
        except (ValueError, TypeError) as error:
            raise ValueError(f"invalid MACKO arrays for {name} in {path}: {error}") from error
        replacements.append((MackoLinear(matrix, bias), names))

    current = dict(model.state_dict(keep_vars=True))
    state = {key: placed(key, current.get(key)) for key in state_keys if _names(key)[0] not in layers}
    model_buffers = _non_persistent_buffers(model)
    extra = {key: placed(key, model_buffers[key]) for key in buffer_keys}

    for layer, names in replacements:
        for name in names:
            _replace(model, name, layer)
    # Tensors that are one object under several names (tied weights) are
    # loaded once per name by load_state_dict(assign=True); tie them again.
    tied = {}
    for key, tensor in _named_tensors(model):
        tied.setdefault(id(tensor), []).append(key)
    # Checked above: what is missing here is the MACKO layers' keys (put in
    # place already) and, with strict=False, keys the file lacks.
    model.load_state_dict(state, strict=False, assign=True)
    for key, tensor in extra.items():
        owner, leaf = _names(key)
        setattr(model.get_submodule(owner), leaf, tensor)
    for keys in tied.values():
        first_owner, first_leaf = _names(keys[0])
        first = getattr(model.get_submodule(first_owner), first_leaf)
        for key in keys[1:]:
            owner, leaf = _names(key)
            setattr(model.get_submodule(owner), leaf, first)
    return model
