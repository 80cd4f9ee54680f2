# face_recognition_tf in an image: the same install steps as `make install` (a virtual environment, then
# pip install ".[extras]"), run as a non-root user.  docs/docker.md has the details and measured figures.
#   CPU (default):  docker build -t frtf .
#   GPU:            docker build --build-arg VARIANT=gpu -t frtf:gpu .
#   no registry:    docker/make_base.sh && docker build --build-arg BASE_IMAGE=frtf-base:bookworm -t frtf .
# The GPU variant needs nothing from the base: tensorflow[and-cuda] brings CUDA and cuDNN as pip wheels.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

# cpu or gpu; each installs its list of pyproject's optional extras (demo: `frtf demo`, onnx: ONNX export
# and import).  EXTRAS, when given, replaces the variant's list (kept from the earlier Dockerfile).
ARG VARIANT=cpu
ARG CPU_EXTRAS=onnx,demo
ARG GPU_EXTRAS=gpu,onnx,demo
ARG EXTRAS=
# optional: a package index to install from (a mirror where PyPI is not reachable); pip reads these
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    FRTF_CACHE_DIR=/cache \
    MPLCONFIGDIR=/cache/matplotlib \
    KERAS_HOME=/cache/keras \
    GRADIO_ANALYTICS_ENABLED=False \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

WORKDIR /opt/face_recognition_tf
COPY pyproject.toml setup.py README.md ./
COPY face_recognition_tf ./face_recognition_tf
# `python` is the base's (python:3.11-slim's, or the venv of frtf-base); /opt/venv is ours, as in the Makefile
RUN case "$VARIANT" in \
        cpu) extras="${EXTRAS:-$CPU_EXTRAS}" ;; \
        gpu) extras="${EXTRAS:-$GPU_EXTRAS}" ;; \
        *) echo "VARIANT must be cpu or gpu, not '$VARIANT'" >&2; exit 1 ;; \
    esac \
    && python -m venv /opt/venv \
    && /opt/venv/bin/python -m pip install --upgrade "pip>=24" \
    && /opt/venv/bin/python -m pip install ".[${extras}]" \
    && rm -rf build ./*.egg-info \
    && frtf --version

# the original project's scripts (python train.py, dataset/convert_dataset.py, ...) and configs/ beside them
COPY dataset ./dataset
COPY evaluation ./evaluation
COPY benchmarks ./benchmarks
COPY train.py train_multigpu.py ./
COPY docker/healthcheck.py ./docker/healthcheck.py

# a non-root user owns the three volumes; data/ and output/ here point into them, so the README's relative
# paths (frtf convert SRC data/ms1m, the default output/quickstart) land in the volumes
RUN groupadd --gid 1000 frtf \
    && useradd --uid 1000 --gid frtf --create-home --shell /bin/bash frtf \
    && mkdir -p /data /output /cache \
    && chown frtf:frtf /data /output /cache \
    && ln -s face_recognition_tf/configs configs \
    && ln -s /data data \
    && ln -s /output output
VOLUME ["/data", "/output", "/cache"]
# numeric, so Kubernetes' runAsNonRoot can verify it without reading the image's /etc/passwd
USER 1000:1000

# 7860: frtf demo (run it with --host 0.0.0.0); 6006: TensorBoard (tensorboard --logdir ... --bind_all)
EXPOSE 7860 6006
# healthy when no demo runs in the container, or when the demo answers HTTP 200 (docker/healthcheck.py)
HEALTHCHECK --interval=30s --timeout=10s --start-period=120s --retries=3 \
    CMD ["python", "/opt/face_recognition_tf/docker/healthcheck.py"]
CMD ["frtf", "quickstart", "--out", "/output/quickstart"]
