"""Writes a training checkpoint the way `torch.save` lays it out, pickled by CPython's own
pickler (protocol 2, torch.save's default), so the reader is tested against real pickle
output for what a training script keeps beside the weights: an argparse.Namespace holding
numpy scalars, a numpy dtype and array, torch.Size, set, frozenset, slice,
collections.defaultdict and pathlib.PosixPath, plus optimizer and GradScaler state.

torch is not needed: small stand-ins carry torch's module and class names, so the pickle
names exactly the globals torch.save writes (torch._utils._rebuild_tensor_v2,
torch.FloatStorage, torch.Size) and persistent ids of torch's form.

Usage: python cpython_training_checkpoint.py OUT.pth [--hostile]
With --hostile, args also holds os.system (pickled by reference, as a malicious file would).
"""
import argparse
import collections
import io
import os
import pathlib
import pickle
import struct
import sys
import types
import zipfile

import numpy as np

torch = types.ModuleType("torch")
torch_utils = types.ModuleType("torch._utils")
sys.modules["torch"] = torch
sys.modules["torch._utils"] = torch_utils
torch._utils = torch_utils


class FloatStorage:
    pass


class Size(tuple):
    def __reduce__(self):
        return (Size, (tuple(self),))


def _rebuild_tensor_v2(*args):
    raise AssertionError("never called: only its name is pickled")


for obj, module in ((FloatStorage, "torch"), (Size, "torch"), (_rebuild_tensor_v2, "torch._utils")):
    obj.__module__ = module
torch.FloatStorage, torch.Size, torch_utils._rebuild_tensor_v2 = FloatStorage, Size, _rebuild_tensor_v2

storages = {}


class Storage:
    def __init__(self, values):
        self.key = str(len(storages))
        self.numel = len(values)
        storages[self.key] = struct.pack(f"<{len(values)}f", *values)


class Tensor:
    """A 1-D float32 tensor, reduced the way torch.Tensor reduces."""

    def __init__(self, values):
        self.storage = Storage(values)

    def __reduce__(self):
        n = self.storage.numel
        return (_rebuild_tensor_v2, (self.storage, 0, (n,), (1,), False, collections.OrderedDict()))


class TorchPickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, Storage):
            return ("storage", FloatStorage, obj.key, "cpu", obj.numel)
        return None


def state_dict(scale):
    return collections.OrderedDict([("w", Tensor([1.0 * scale, 2.0])), ("b", Tensor([3.0]))])


def main():
    out = sys.argv[1]
    args = argparse.Namespace(
        model="flowar_small", img_size=256, blr=np.float64(1e-4), ema_rate=np.float32(0.9999),
        seed=np.int64(3), latent_shape=Size((16, 16)), scales={1, 2, 4}, tags=frozenset({"a"}),
        crop=slice(0, 256, None), per_class=collections.defaultdict(list, {0: [1]}),
        output_dir=pathlib.PosixPath("/tmp/out"), dtype=np.dtype("float32"),
        mean=np.arange(3, dtype=np.float32),
    )
    if "--hostile" in sys.argv:
        args.hook = os.system
    checkpoint = {
        "model": state_dict(2.0),
        "model_ema": state_dict(1.0),
        "optimizer": {
            "state": {0: {"step": Tensor([5.0]), "exp_avg": Tensor([0.1, 0.2])}},
            "param_groups": [{"lr": 1e-4, "betas": (0.9, 0.95), "params": [0]}],
        },
        "epoch": 3,
        "scaler": {"scale": 65536.0, "growth_factor": 2.0, "_growth_tracker": 0},
        "args": args,
    }
    buf = io.BytesIO()
    TorchPickler(buf, protocol=2).dump(checkpoint)
    with zipfile.ZipFile(out, "w") as z:
        z.writestr("checkpoint/data.pkl", buf.getvalue())
        z.writestr("checkpoint/byteorder", "little")
        for key, data in storages.items():
            z.writestr(f"checkpoint/data/{key}", data)


main()
