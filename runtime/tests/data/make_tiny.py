"""Writes tiny_kv.onnx, the small graph the backend smoke tests run.

Inputs:  x [b, n, 4] f32, past [b, 2, p, 4] f32, flag [] bool
Outputs: y = Where(flag, x * 2, x + 1)                        [b, n, 4]
         present = Concat(past, Concat(x', x', axis=1), axis=2) [b, 2, p + n, 4]
         where x' = Unsqueeze(x, axis=1)                        [b, 1, n, 4]

Run: python3 runtime/tests/data/make_tiny.py   (needs the `onnx` package)
"""
import os

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def build() -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "n", 4])
    past = helper.make_tensor_value_info("past", TensorProto.FLOAT, ["b", 2, "p", 4])
    flag = helper.make_tensor_value_info("flag", TensorProto.BOOL, [])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", "n", 4])
    present = helper.make_tensor_value_info("present", TensorProto.FLOAT, ["b", 2, "t", 4])

    inits = [
        numpy_helper.from_array(np.array(2.0, dtype=np.float32), "two"),
        numpy_helper.from_array(np.array(1.0, dtype=np.float32), "one"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
    ]
    nodes = [
        helper.make_node("Mul", ["x", "two"], ["x2"], name="mul"),
        helper.make_node("Add", ["x", "one"], ["x1"], name="add"),
        helper.make_node("Where", ["flag", "x2", "x1"], ["y"], name="where"),
        helper.make_node("Unsqueeze", ["x", "axis1"], ["xu"], name="unsq"),
        helper.make_node("Concat", ["xu", "xu"], ["kv"], axis=1, name="kv"),
        helper.make_node("Concat", ["past", "kv"], ["present"], axis=2, name="cat"),
    ]
    graph = helper.make_graph(nodes, "tiny_kv", [x, past, flag], [y, present], inits)
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="flowar-tests"
    )
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


if __name__ == "__main__":
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tiny_kv.onnx")
    onnx.save(build(), out)
    print(f"wrote {out} ({os.path.getsize(out)} bytes)")
