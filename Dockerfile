# syntax=docker/dockerfile:1
#
# perceptserve's server image: NVIDIA Triton Inference Server 24.10 (tritonserver 2.51.0, the
# release bundled for development) plus what the python-backend models import, plus perceptserve.
#
#   docker build -t <registry>/perceptserve:2.51.0 .
#
# To build a model repository into the image (modelRepository.source: image in the Helm chart),
# pass it as the named build context "models" (BuildKit; the repository folder stays out of the
# main context, see .dockerignore):
#
#   perceptserve export hqsam --repository repository/
#   docker build --build-context models=repository/ -t <registry>/perceptserve:2.51.0-hqsam .
#
# Without it /models holds only a note, and the chart mounts the repository over it (PVC or
# S3 sync).

ARG TRITON_IMAGE=nvcr.io/nvidia/tritonserver:24.10-py3

# Replaced as a whole by --build-context models=<folder>. By default it holds only this note
# (Triton takes the sub-folders of the repository as models and skips plain files).
FROM scratch AS models
COPY <<EOF /README.txt
No model repository was built into this image: mount one at /models, or rebuild with
  docker build --build-context models=<repository folder> .
EOF

FROM ${TRITON_IMAGE}

ARG PERCEPTSERVE_UID=1000
ARG PERCEPTSERVE_GID=1000

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

# The packages the python-backend models import (Ubuntu 22.04's Python 3.10 runs the stub).
# onnxruntime-gpu 1.19-1.22 is built for CUDA 12 and cuDNN 9, as shipped in the 24.10 image.
# tritonclient: `perceptserve serve` reads the repository's ensemble configs with its protobuf
# definitions (tritonclient.grpc), and the chart's `helm test` pod uses its HTTP client.
# With tqdm it also runs the chart's dataset generation Job (`perceptserve generate` over gRPC).
RUN python3 -m pip install \
        "numpy<2" \
        "pillow>=10" \
        "onnxruntime-gpu>=1.19,<1.23" \
        "tritonclient[grpc,http]==2.51.0" \
        "tqdm>=4.60"

# perceptserve itself (its python models import perceptserve.*). --no-deps: torch and the export
# toolchain are not needed to serve.
WORKDIR /opt/perceptserve
COPY pyproject.toml README.md ./
COPY perceptserve/ perceptserve/
COPY export/ export/
COPY server/ server/
COPY clients/ clients/
COPY benchmarks/ benchmarks/
COPY model_repository/ model_repository/
RUN python3 -m pip install --no-deps . \
    && python3 -c "import perceptserve, numpy, PIL, onnxruntime, tritonclient.http; print('perceptserve', perceptserve.__version__)" \
    && python3 -c "import perceptserve.server.supervisor, perceptserve.model_repository.configs" \
    && perceptserve serve --help >/dev/null

# A non-root user with uid/gid 1000 (the NGC image may already have one: triton-server).
RUN if ! getent group "${PERCEPTSERVE_GID}" >/dev/null; then \
        groupadd --gid "${PERCEPTSERVE_GID}" perceptserve; \
    fi \
    && if ! getent passwd "${PERCEPTSERVE_UID}" >/dev/null; then \
        useradd --uid "${PERCEPTSERVE_UID}" --gid "${PERCEPTSERVE_GID}" --no-create-home \
            --home-dir /tmp --shell /usr/sbin/nologin perceptserve; \
    fi \
    && mkdir -p /models /cache/tensorrt \
    && chown "${PERCEPTSERVE_UID}:${PERCEPTSERVE_GID}" /cache/tensorrt

# The model repository (only the note above unless built with --build-context models=...),
# owned by root: read-only to the server user.
COPY --from=models / /models/

# The Helm chart runs the root filesystem read-only with /tmp, /dev/shm and /cache/tensorrt as
# volumes; HOME points at /tmp for the caches of CUDA and Python libraries.
ENV HOME=/tmp
USER ${PERCEPTSERVE_UID}:${PERCEPTSERVE_GID}
WORKDIR /tmp

EXPOSE 8000 8001 8002 8003

# `perceptserve serve` supervises /opt/tritonserver (found there automatically): it restarts the
# server when a python-backend stub dies, drains requests in flight on SIGTERM before passing the
# signal on, and answers /ready and /live on port 8003. Arguments after "--" go to tritonserver.
ENTRYPOINT ["perceptserve", "serve"]
CMD ["--repository=/models", "--config=gpu", "--host=0.0.0.0", "--health-port=8003", "--log-to-stdout"]
