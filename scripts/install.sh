#!/usr/bin/env bash
# Set up mss on Debian/Ubuntu with Python >= 3.10: installs ffmpeg with apt when it is missing
# (musdb/museval need ffmpeg and ffprobe on PATH), creates the virtualenv .venv and installs the
# package with its dev tools and the SLURM launcher and Optuna sweeper extras into it. Safe to
# run again.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v ffmpeg >/dev/null 2>&1 || ! command -v ffprobe >/dev/null 2>&1; then
  echo "[install] ffmpeg not found: installing it with apt-get"
  sudo_cmd=""
  if [ "$(id -u)" -ne 0 ]; then sudo_cmd="sudo"; fi
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq ffmpeg >/dev/null
fi

python_cmd=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "[install] creating .venv with $($python_cmd --version)"
  "$python_cmd" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
echo "[install] installing mss and its dependencies into .venv"
.venv/bin/python -m pip install -q -c constraints.txt -e '.[dev,slurm,sweep]'
echo "[install] done: activate with 'source .venv/bin/activate'"
