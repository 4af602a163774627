"""Helpers of the distributed-mode tests (no tests here)."""

from __future__ import annotations

import math
import os
import socket
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SHIPPED_MANIFEST = ROOT / "digitreader" / "models" / "manifest.json"


def pg_admin_url() -> str:
    return os.environ.get("DIGITREADER_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pick_redis_db() -> int:
    """An empty database number (1-15) of the Redis on 127.0.0.1:6379, so parallel runs and
    other users of that server do not see each other's queues."""
    import random

    import redis

    numbers = list(range(1, 16))
    random.shuffle(numbers)
    for n in numbers:
        if redis.Redis(host="127.0.0.1", port=6379, db=n).dbsize() == 0:
            return n
    raise RuntimeError("no empty Redis database number on 127.0.0.1:6379")


def model_for_tests(tmp: Path) -> str | None:
    """None = the shipped model (the normal case). Before a model is shipped (a fresh
    development checkout), a tiny linear ONNX model with the same input/output contract, so the
    pipeline can still be exercised; CI always has the shipped model."""
    if SHIPPED_MANIFEST.exists():
        return None
    if os.environ.get("CI"):
        raise RuntimeError(f"no shipped model ({SHIPPED_MANIFEST}) on CI")
    import numpy as np

    onnx = __import__("pytest").importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(0).normal(0, 0.05, (784, 11)).astype(np.float32)
    nodes = [helper.make_node("Flatten", ["input"], ["flat"], axis=1),
             helper.make_node("MatMul", ["flat", "W"], ["logits"])]  # fmt: skip
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 28, 28])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 11])], [numpy_helper.from_array(w, "W")],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for k, v in {"version": "test-tiny", "threshold": "0.5", "temperature": "1.0"}.items():
        p = model.metadata_props.add()
        p.key, p.value = k, v
    path = tmp / "tiny.onnx"
    onnx.save(model, str(path))
    return str(path)


def compare_exports(a: dict[str, Any], b: dict[str, Any], tol: float = 1e-5) -> None:
    """The same results: every key and value equal, floats within `tol` (inference batches are
    composed differently in the two modes). Batch ids and creation times are not compared, nor
    `model_precision`: an embedded batch records which file of the model read it; a distributed one
    has none (null), since each inference worker chooses its own (int8 on a CPU, fp32 on CUDA)."""
    skip = {"batch", "created_at", "finished_at", "seconds", "model_precision"}

    def walk(x: Any, y: Any, where: str) -> None:
        if isinstance(x, dict):
            assert isinstance(y, dict) and set(x) - skip == set(y) - skip, f"{where}: keys {set(x) ^ set(y)}"
            for k in x:
                if k not in skip:
                    walk(x[k], y[k], f"{where}.{k}")
        elif isinstance(x, list | tuple):
            assert isinstance(y, list | tuple) and len(x) == len(y), f"{where}: lengths {len(x)} != {len(y)}"
            for i, (u, v) in enumerate(zip(x, y, strict=True)):
                walk(u, v, f"{where}[{i}]")
        elif isinstance(x, float) and not isinstance(x, bool):
            assert isinstance(y, int | float) and math.isclose(x, y, rel_tol=tol, abs_tol=tol), f"{where}: {x} != {y}"
        else:
            assert x == y, f"{where}: {x!r} != {y!r}"

    walk(a, b, "export")
