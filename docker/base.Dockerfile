# The base that docker/make_base.sh builds where the public registry is unreachable: a debootstrapped Debian
# (imported as ROOTFS) with Python in a virtual environment, so `python` and `pip` behave as in python:3.11-slim.
# Build it with make_base.sh, which lays out the context (certs/, pip.conf); not meant for `docker build` by hand.
ARG ROOTFS=frtf-rootfs:bookworm
FROM ${ROOTFS}

ARG PYTHON_VERSION=3.11
# every TLS client in the image (pip, urllib, requests) trusts the same bundle, local CAs included
ENV LANG=C.UTF-8 \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt

COPY certs/ /usr/local/share/ca-certificates/
COPY pip.conf /etc/pip.conf
# Debian's suite fixes the versions (bookworm: Python 3.11), so apt packages are not pinned one by one;
# the upgrade brings the security updates released after the point release debootstrap laid down
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get upgrade -y --no-install-recommends \
    && apt-get install -y --no-install-recommends ca-certificates "python${PYTHON_VERSION}" "python${PYTHON_VERSION}-venv" \
    && update-ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && "python${PYTHON_VERSION}" -m venv /opt/python
ENV PATH=/opt/python/bin:$PATH
CMD ["python"]
