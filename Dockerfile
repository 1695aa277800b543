# syntax=docker/dockerfile:1
# learnstream, CPU image: every process (gateway, worker, sink, trainer, topic init, CLI).
#   docker build -t learnstream:latest .
#   docker run --rm learnstream:latest --help
# The trainer on a GPU uses Dockerfile.gpu instead (same code, CUDA torch).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    LEARNSTREAM_DATA_DIR=/data \
    HF_HOME=/data/huggingface

WORKDIR /app

# torch first, from the CPU index, so the CPU wheel satisfies every package's torch requirement
# (PyPI's default torch pulls several GB of CUDA wheels); the constraint keeps it pinned below.
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu \
 && echo "torch==2.13.0" > /tmp/constraints.txt

COPY pyproject.toml README.md ./
COPY learnstream ./learnstream
COPY schemas ./schemas
COPY streams ./streams
COPY consumers ./consumers
COPY scorers ./scorers
COPY extractors ./extractors
COPY trainers ./trainers
RUN pip install -c /tmp/constraints.txt ".[all]"

# Sample telemetry for `learnstream demo --examples /app/examples` and backfill tests.
COPY examples ./examples

# Non-root; /data holds local state (dataset, adapter registry, spool, Hugging Face cache).
# Named volumes mounted on /data inherit this ownership; on Kubernetes set fsGroup: 10001.
RUN groupadd --system --gid 10001 learnstream \
 && useradd --system --uid 10001 --gid learnstream --home-dir /home/learnstream --create-home \
      --shell /usr/sbin/nologin learnstream \
 && mkdir -p /data \
 && chown learnstream:learnstream /data
USER 10001:10001
VOLUME ["/data"]

# gateway 8088, worker web 6066, sink/trainer metrics (LEARNSTREAM_METRICS_PORT) 9100
EXPOSE 8088 6066 9100
ENTRYPOINT ["learnstream"]
CMD ["--help"]
