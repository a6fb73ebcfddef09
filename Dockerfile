# The pipeline image: CPU PyTorch, `kd` as the entrypoint, runs as any user. Reproducible
# from the repository alone: torch pinned here, every other package by requirements.lock.
#
#   make image                                   # = docker build -t kd-pipeline .
#   mkdir -p out && docker run --rm -u "$(id -u):$(id -g)" -v "$PWD/out:/work" kd-pipeline run
#
# Sites with a package mirror or without registry access set the sources (defaults: today's
# public ones): BASE_IMAGE (any Debian-like image with python3 and python3-venv, e.g. one
# made by scripts/debian-base-image.sh), PIP_INDEX_URL, TORCH_INDEX_URL, WHEELS (a directory
# of the build context with wheels fetched beforehand, tried before any index; or mounted at
# /wheels: podman build --volume DIR:/wheels:ro) and PIP_ARGS (more pip options: --no-index
# to install from the wheels alone; behind a TLS-intercepting proxy, the site's CA bundle:
# --volume /etc/ssl/certs/ca-certificates.crt:/certs/ca.crt:ro and PIP_ARGS="--cert /certs/ca.crt").
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS build
ARG PIP_INDEX_URL=https://pypi.org/simple
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG WHEELS=wheels
ARG PIP_ARGS=
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_INDEX_URL=${PIP_INDEX_URL}
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# Pre-fetched wheels, when the site gives them (an empty directory otherwise).
COPY ${WHEELS}/ /wheels/
# CPU wheels of the releases the project is tested with; the default index would bring the
# multi-GB CUDA build. First, so that a changed lock or source does not reinstall torch.
RUN pip install ${PIP_ARGS} --find-links /wheels torch==2.14.1 torchvision==0.29.1 \
        --extra-index-url ${TORCH_INDEX_URL}
COPY pyproject.toml README.md requirements.lock ./
COPY components ./components
COPY flows ./flows
# Exactly the lock (no resolving: the image is what the lock says), then the project alone.
RUN pip install ${PIP_ARGS} --find-links /wheels -r requirements.lock \
    && pip install --no-deps --no-build-isolation . && pip check

FROM ${BASE_IMAGE}
COPY --from=build /opt/venv /opt/venv
COPY configs /opt/kd/configs
# Any uid (docker run -u): every piece of state goes under /work, the mounted work dir, and
# nothing is written to a home directory the user may not have. Telemetry off.
RUN mkdir -p /work && chmod 1777 /work
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HOME=/work \
    XDG_CACHE_HOME=/work/.cache \
    MPLCONFIGDIR=/work/.cache/matplotlib \
    PREFECT_HOME=/work/.prefect \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    MLFLOW_DISABLE_TELEMETRY=true \
    DO_NOT_TRACK=true
USER 1000:1000
WORKDIR /work
ENTRYPOINT ["kd"]
CMD ["run"]
