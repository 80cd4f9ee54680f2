# face_recognition_tf: the same install steps as `make install`, in an image.
#   GPU (default):  docker build -t frtf .                     docker run --gpus all -it -v $PWD/data:/data frtf frtf train ...
#   CPU only:       docker build --build-arg EXTRAS=onnx -t frtf-cpu .
# tensorflow[and-cuda] brings the CUDA/cuDNN libraries as pip wheels, so a plain Python base image is enough.
FROM python:3.11-slim

ARG EXTRAS=gpu,onnx
ENV PYTHONUNBUFFERED=1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    PIP_NO_CACHE_DIR=1 \
    FRTF_CACHE_DIR=/cache

WORKDIR /opt/face_recognition_tf
COPY pyproject.toml setup.py README.md ./
COPY face_recognition_tf ./face_recognition_tf
RUN python -m pip install --upgrade pip && python -m pip install ".[${EXTRAS}]"
COPY dataset ./dataset
COPY evaluation ./evaluation
COPY benchmarks ./benchmarks
COPY train.py train_multigpu.py ./
RUN ln -s face_recognition_tf/configs configs

# TensorBoard
EXPOSE 6006
CMD ["frtf", "quickstart", "--out", "/output/quickstart"]
