# The suite's image: installs the project exactly as the README's `make setup` does.
FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends build-essential make \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY . .
RUN make setup VENV=/opt/venv TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PATH=/opt/venv/bin:$PATH SDAR_CACHE_DIR=/cache
VOLUME ["/cache"]
CMD ["python", "-m", "sdar_envs.alfworld.evaluate", "--split", "valid_unseen", "--policy", "expert", "--out", "/runs/alfworld_expert.json"]
