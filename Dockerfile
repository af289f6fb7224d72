# Worker image: the base dependencies only (ONNX Runtime on CPU, no torch), exactly as locked.
# Models are mounted (./.local/models), never baked in; serve an engine bundle (finpulse build-engine).
# For the cuda/tensorrt backends build with --build-arg EXTRAS=gpu (adds torch and TensorRT, unlocked).
FROM python:3.11-slim
ARG EXTRAS=""
WORKDIR /app
COPY pyproject.toml README.md ./
COPY requirements/worker.lock requirements/worker.lock
RUN pip install --no-cache-dir --require-hashes -r requirements/worker.lock
COPY finpulse ./finpulse
COPY stream ./stream
COPY engine ./engine
COPY build_engine ./build_engine
COPY training ./training
COPY bench ./bench
# The query API (finpulse serve; the compose file's api service), with its dashboard under api/static.
COPY api ./api
# The feed ingester (finpulse ingest feeds).
COPY ingest ./ingest
RUN pip install --no-cache-dir --no-deps . \
    && if [ -n "$EXTRAS" ]; then pip install --no-cache-dir ".[$EXTRAS]"; fi
ENV PYTHONUNBUFFERED=1
CMD ["finpulse", "worker"]
