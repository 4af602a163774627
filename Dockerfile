# digitreader image: the CLI, the worker pools and the review page (`digitreader ...`).
#
#   docker build -t digitreader .                                   # CPU (onnxruntime)
#   docker build -t digitreader-gpu --build-arg FLAVOUR=gpu \
#       --build-arg BASE_IMAGE=nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04 .   # onnxruntime-gpu
#
# FLAVOUR picks the extra: cpu -> onnxruntime, gpu -> onnxruntime-gpu (never both: they install
# the same module). The GPU base image brings CUDA 12 and cuDNN 9; the NVIDIA container runtime
# brings the driver. torch is never installed: the runtime does not use it.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ARG FLAVOUR=cpu
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DIGITREADER_HOME=/var/lib/digitreader \
    PATH=/opt/venv/bin:$PATH

# Python 3.11 (already there on python:3.11-slim; from the distribution on the CUDA image).
RUN if ! command -v python3.11 >/dev/null 2>&1; then \
        apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
            python3.11 python3.11-venv ca-certificates && rm -rf /var/lib/apt/lists/*; \
    fi \
    && python3.11 -m venv /opt/venv

WORKDIR /app
# Dependencies first (a code change does not reinstall them).
# (Every file pyproject.toml names must be here: the C sources of the stages' C halves, and the
# migrations it installs as data files, without which building the wheel fails. With no compiler in
# this layer the optional extensions are skipped, then built with the code below.
# tests/test_compose.py checks that this layer has them.)
COPY pyproject.toml README.md ./
COPY digitreader/pipeline/_png.c ./digitreader/pipeline/_png.c
COPY digitreader/pipeline/_prepare.c ./digitreader/pipeline/_prepare.c
COPY digitreader/pipeline/_fields.c ./digitreader/pipeline/_fields.c
COPY digitreader/pipeline/_cut.c ./digitreader/pipeline/_cut.c
COPY digitreader/pipeline/_normalize.c ./digitreader/pipeline/_normalize.c
COPY digitreader/pipeline/_split.c ./digitreader/pipeline/_split.c
COPY migrations ./migrations
RUN mkdir -p digitreader workers training && touch digitreader/__init__.py workers/__init__.py training/__init__.py \
    && pip install ".[${FLAVOUR}]" && pip uninstall -y digitreader
# The code; editable, so `digitreader db upgrade` finds migrations/ (copied above) beside the package.
COPY digitreader ./digitreader
COPY workers ./workers
# A C compiler (and Python's headers where the base image lacks them) only while the stages' C halves
# (digitreader/pipeline/_*.c: pipeline/native.py) are built; the build is checked, then the compiler
# is removed.
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends gcc libc6-dev \
        $(python -c 'import os, sysconfig; print("" if os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")) else "python3.11-dev")') \
    && pip install --no-deps -e ".[${FLAVOUR}]" \
    && python -c "from digitreader.pipeline import native; m = native.missing(); assert not m, f'not built: {m}'" \
    && { apt-get purge -y --auto-remove gcc libc6-dev python3.11-dev || true; } \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/digitreader digitreader \
    && mkdir -p /var/lib/digitreader /data && chown digitreader /var/lib/digitreader \
    && digitreader --version

USER digitreader
ENTRYPOINT ["digitreader"]
CMD ["--help"]
