"""What this machine's CPU is, as far as reading digits cares: its model, cores, and how it runs int8.

`digitreader version` prints `describe()`, and the benchmarks record it beside their numbers, since
the same code reads pages at different speeds on different CPUs. `saturating_int8_cpu()` is what
`recognize.choose_precision` asks before it uses an int8 file. Standard library only (the CLI's
`version` must start without numpy or onnxruntime), read from /proc/cpuinfo on Linux.
"""

from __future__ import annotations

import functools
import os
import platform
from typing import Any

#: x86 CPU flags of the instructions that multiply uint8 by int8 and add in 32 bits (no saturation).
VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})
_X86 = ("x86_64", "amd64", "i686", "x86")


def parse_cpuinfo(text: str) -> tuple[str, frozenset[str]]:
    """(model name, flags) of the first processor in a /proc/cpuinfo text; "" and an empty set for
    what it does not say (ARM lists "Features", not x86's "flags", and often no model name)."""
    model, flags = "", frozenset[str]()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not model:
            model = value.strip()
        elif key == "flags" and not flags:
            flags = frozenset(value.split())
        elif not key and (model or flags):
            break  # the first processor's block ends at a blank line
    return model, flags


@functools.cache
def _cpuinfo() -> tuple[str, frozenset[str]]:
    """`parse_cpuinfo` of this machine's /proc/cpuinfo (Linux), read once; ("", empty) elsewhere."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            return parse_cpuinfo(fh.read())
    except OSError:
        return "", frozenset()


def cpu_flags() -> frozenset[str]:
    """The CPU's flags (x86: /proc/cpuinfo's "flags"); empty where they cannot be read."""
    return _cpuinfo()[1]


def saturating_int8_cpu(flags: frozenset[str] | None = None, machine: str | None = None) -> bool:
    """True on an x86 CPU without VNNI (`flags`: the CPU's flags, default /proc/cpuinfo's; `machine`:
    default `platform.machine()`). There onnxruntime multiplies uint8 activations by int8 weights
    with an instruction that adds each pair of products in 16 bits with saturation: weights in full
    8 bits overflow it and the int8 file reads differently (the shipped reader's first int8 file: 32
    MNIST test labels of 10,000 changed, against 2 with VNNI). Weights in 7 bits cannot overflow it
    (`training.quantize`, metadata weight_bits=7). False where the flags cannot be read."""
    machine = (machine or platform.machine()).lower()
    if machine not in _X86:
        return False
    if flags is None:
        flags = cpu_flags()
    if not flags:  # unknown: not refused
        return False
    return not (flags & VNNI_FLAGS)


def int8_kind(flags: frozenset[str] | None = None, machine: str | None = None) -> str:
    """How this CPU multiplies int8 for onnxruntime: "vnni" (x86 with VNNI or AMX: sums in 32 bits),
    "saturating" (x86 without: 16-bit sums, so only 7-bit int8 files read as on other CPUs),
    "unknown" (x86 whose flags cannot be read) or "other" (not x86, e.g. ARM)."""
    machine = (machine or platform.machine()).lower()
    if machine not in _X86:
        return "other"
    if flags is None:
        flags = cpu_flags()
    if not flags:
        return "unknown"
    return "vnni" if flags & VNNI_FLAGS else "saturating"


def describe() -> dict[str, Any]:
    """The CPU in a few keys: model, architecture, cores this process may use, int8 kind, AVX-512."""
    model, flags = _cpuinfo()
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        usable = os.cpu_count() or 1
    return {
        "model": model or platform.processor() or platform.machine(),
        "arch": platform.machine(),
        "cores": usable,
        "int8": int8_kind(),
        "avx512": "avx512f" in flags,
    }


def summary() -> str:
    """`describe()` on one line, for benchmark results: "Intel(R) Xeon(R) ..., x86_64, 2 cores, int8 vnni"."""
    d = describe()
    return f"{d['model']}, {d['arch']}, {d['cores']} cores, int8 {d['int8']}"
