# cliplab: dashboard, REST API and trainer in one image. `docker compose up` runs it (see docker-compose.yml).
# PyPI's Linux torch wheels bundle the CUDA runtime, so the same image trains on CPU or NVIDIA GPUs.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    CLIPLAB_DATA_DIR=/data

WORKDIR /app
COPY pyproject.toml README.md ./
COPY contract ./contract
COPY trainer ./trainer
COPY dataset ./dataset
COPY backend ./backend
COPY frontend ./frontend
RUN pip install ".[postgres]"

# Run unprivileged; datasets, runs, the SQLite database and the access token live in the /data volume.
RUN useradd --create-home --uid 1000 cliplab && mkdir -p /data && chown cliplab:cliplab /data
USER cliplab
VOLUME ["/data"]
EXPOSE 8000

HEALTHCHECK --interval=30s --timeout=5s --start-period=60s \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/api/health', timeout=4)"

# Bound to 0.0.0.0 the server requires its access token: set CLIPLAB_TOKEN, or read the generated one
# from `docker compose logs` (it is also kept in /data/token).
CMD ["cliplab", "serve", "--host", "0.0.0.0", "--port", "8000"]
