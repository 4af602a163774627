"""The CPU facts that `digitreader version` prints and `choose_precision` asks (digitreader.cpu)."""

from __future__ import annotations

import json
import subprocess
import sys

from digitreader import cpu

X86_NO_VNNI = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B13
flags\t\t: fpu sse sse2 avx avx2 fma

processor\t: 1
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B13
flags\t\t: fpu sse sse2 avx avx2 fma
"""

X86_VNNI = """processor\t: 0
model name\t: Intel(R) Xeon(R) Platinum 8480C
flags\t\t: fpu sse2 avx2 avx512f avx512_vnni amx_int8
"""

ARM = """processor\t: 0
BogoMIPS\t: 50.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics asimddp
CPU implementer\t: 0x41
"""


def test_cpuinfo_is_read_from_the_first_processor() -> None:
    model, flags = cpu.parse_cpuinfo(X86_NO_VNNI)
    assert model == "AMD EPYC 7B13" and flags == {"fpu", "sse", "sse2", "avx", "avx2", "fma"}
    model, flags = cpu.parse_cpuinfo(X86_VNNI)
    assert model.startswith("Intel(R) Xeon(R)") and {"avx512_vnni", "amx_int8"} <= flags
    assert cpu.parse_cpuinfo(ARM) == ("", frozenset())  # ARM says "Features", and no model name
    assert cpu.parse_cpuinfo("") == ("", frozenset())


def test_int8_kind_tells_the_cpus_that_saturate() -> None:
    no_vnni, vnni = cpu.parse_cpuinfo(X86_NO_VNNI)[1], cpu.parse_cpuinfo(X86_VNNI)[1]
    assert cpu.int8_kind(no_vnni, "x86_64") == "saturating" and cpu.saturating_int8_cpu(no_vnni, "x86_64")
    assert cpu.int8_kind(vnni, "x86_64") == "vnni" and not cpu.saturating_int8_cpu(vnni, "x86_64")
    assert cpu.int8_kind(frozenset({"avx2", "avx_vnni"}), "AMD64") == "vnni"  # AVX-VNNI without AVX-512
    assert cpu.int8_kind(frozenset(), "x86_64") == "unknown"
    assert not cpu.saturating_int8_cpu(frozenset(), "x86_64")  # unknown: the int8 file is not refused
    assert cpu.int8_kind(frozenset(), "aarch64") == "other" and not cpu.saturating_int8_cpu(None, "aarch64")


def test_version_prints_this_cpu_without_loading_numpy() -> None:
    """`digitreader version` says which CPU it runs on and how that CPU runs int8 (what a bug report
    about a speed or an int8 reading needs), and stays as quick to start as --help."""
    code = (
        "import sys\n"
        "from digitreader.cli.main import main\n"
        "try:\n"
        "    main(['version'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print('imported:', ','.join(m for m in ('numpy', 'onnxruntime', 'cv2') if m in sys.modules))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    *out, imported = proc.stdout.splitlines()
    assert imported == "imported: "
    info = json.loads("\n".join(out))["cpu"]
    assert info == cpu.describe()
    assert info["int8"] == cpu.int8_kind() and info["int8"] in ("vnni", "saturating", "unknown", "other")
    assert info["model"] and info["cores"] >= 1
