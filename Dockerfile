# GPU image for training and evaluation. Build: docker build -t mss .
# Run:   docker run --gpus all --rm -v /data/musdb18hq:/data/musdb18hq -v $PWD/logs:/app/logs mss \
#          python train.py data=musdb18hq data.root=/data/musdb18hq trainer.devices=2
# Same install path as scripts/install.sh / .ci/run (ffmpeg from apt, the package with pip);
# the base image already carries a CUDA build of torch, so only torchaudio is matched to it.
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        ffmpeg libsndfile1 git \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY pyproject.toml README.md ./
COPY mss ./mss
COPY hydra_plugins ./hydra_plugins
RUN pip install --no-cache-dir "torchaudio==2.5.1" && pip install --no-cache-dir ".[dev]"
COPY conf ./conf
COPY train.py eval.py ./
COPY tests ./tests
COPY benchmarks ./benchmarks

# wandb is offline unless logger.wandb.offline=false (and WANDB_API_KEY is set)
CMD ["python", "train.py", "--help"]
