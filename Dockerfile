# The pipeline image: CPU PyTorch, non-root, `kd` as the entrypoint. Reproducible from the
# repository alone: torch pinned here, every other package pinned by requirements.lock.
#   docker build -t kd-pipeline .
#   docker run --rm -v "$PWD/out:/work" kd-pipeline run
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# CPU wheels of the same releases the project is tested with; the default index would
# bring the multi-GB CUDA build.
RUN pip install torch==2.14.1 torchvision==0.29.1 --index-url https://download.pytorch.org/whl/cpu
WORKDIR /src
COPY pyproject.toml README.md requirements.lock ./
COPY components ./components
COPY flows ./flows
RUN pip install -c requirements.lock .

FROM python:3.11-slim
RUN useradd --create-home --uid 1000 kd && mkdir /work && chown kd /work
COPY --from=build /opt/venv /opt/venv
COPY configs /opt/kd/configs
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PREFECT_SERVER_ANALYTICS_ENABLED=false
USER kd
WORKDIR /work
ENTRYPOINT ["kd"]
CMD ["run"]
