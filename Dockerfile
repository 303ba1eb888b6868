# syntax=docker/dockerfile:1
# cxr-triage: one image for every role (listen, worker, web, serve); the command picks the role.
#   docker build -t cxr-triage .
#   docker run --rm cxr-triage --help
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TRIAGE_DATA_DIR=/data

# Torch first, alone: the largest layer (CUDA build from PyPI; needs only the host's NVIDIA driver
# and container toolkit at run time), cached across every other change.
RUN pip install torch==2.14.1 torchvision==0.29.1

WORKDIR /app

# Runtime dependencies from pyproject.toml (no dev extras), cached until pyproject.toml changes.
# README.m[d]: copied when present (pyproject's readme), without failing the build when it is not.
COPY pyproject.toml README.m[d] ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# The packages: exactly pyproject's [tool.setuptools.packages.find] include list.
COPY triage ./triage
COPY dicom_io ./dicom_io
COPY model ./model
COPY db ./db
COPY worker ./worker
COPY worklist ./worklist
RUN pip install --no-deps . && rm -rf /app/build /app/*.egg-info

# Non-root; /data is created here so a fresh named volume mounted on it is owned by this user.
RUN useradd --system --uid 10001 --user-group --create-home --home-dir /home/triage triage \
    && mkdir -p /data \
    && chown triage:triage /data
USER triage
WORKDIR /home/triage

EXPOSE 11112 8000
ENTRYPOINT ["cxr-triage"]
CMD ["--help"]
