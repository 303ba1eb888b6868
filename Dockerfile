# cxr-triage: one image for every role (listen, worker, web, serve); the command picks the role.
#   docker build -t cxr-triage .                  # a site with internet: python:3.11-slim, packages from PyPI
#   make images                                   # no registry: a Debian base made here, this host's wheels
#   docker run --rm cxr-triage --help
# Classic builder and BuildKit alike; no `# syntax=` line, which would make BuildKit pull a frontend image.

# The base: the official slim Python by default; a locally made Debian image (deploy/docker/make-base-image.sh,
# Debian's python3 3.11) where no registry can be reached. Only `python3` and its venv module are used from it.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

# Where pip finds packages: PyPI unless these are given (an air-gapped site's own index or wheel folder, or this
# host's wheel folders served on loopback by deploy/docker/build-images.sh; build with --network host then).
# Build arguments only: they are seen by the RUN steps below and stay out of the image's environment.
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_FIND_LINKS
ARG PIP_TRUSTED_HOST

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_PROGRESS_BAR=off \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    TRIAGE_DATA_DIR=/data

# One virtual environment on either base: Debian's own python3 refuses pip installs into the system (PEP 668).
RUN python3 -m venv /opt/venv

# Torch first, alone: the largest layer, cached across every other change. PyPI's Linux wheels are the CUDA build:
# on a GPU site they need only the host's NVIDIA driver and container toolkit; without a GPU they run on the CPU
# (TRIAGE_DEVICE=cpu). triton (0.9 GB) serves only torch.compile, which cxr-triage does not use: it is left out.
# An empty build argument means pip's default for it.
RUN pip install torch==2.14.1 torchvision==0.29.1 && pip uninstall -y triton

WORKDIR /app

# Runtime dependencies from pyproject.toml (no dev extras), cached until pyproject.toml changes. torch and
# torchvision are the ones installed above (their pins satisfy pyproject's bounds: tests/test_compose.py); left out
# here so that pip does not bring triton back as torch's dependency.
COPY pyproject.toml ./
RUN python -c "import re, tomllib; deps = tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']; \
print('\n'.join(d for d in deps if re.split(r'[<>=!~;\[ ]', d)[0].lower() not in {'torch', 'torchvision'}))" \
        > /tmp/requirements.txt \
    && echo "setuptools>=77" >> /tmp/requirements.txt && echo wheel >> /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# The packages: exactly pyproject's [tool.setuptools.packages.find] include list. They are built with the setuptools
# and wheel installed above (no build isolation), so a code change rebuilds from here without reaching any index.
# README.m[d]: pyproject's readme, copied when present without failing the build when it is not (pyproject.toml
# beside it keeps the wildcard from matching nothing); here, after the dependencies, so that editing it does not
# reinstall them.
COPY pyproject.toml README.m[d] ./
COPY triage ./triage
COPY dicom_io ./dicom_io
COPY model ./model
COPY db ./db
COPY worker ./worker
COPY worklist ./worklist
RUN pip install --no-deps --no-build-isolation . && rm -rf /app/build /app/*.egg-info

# Non-root; /data is created here so a fresh named volume mounted on it is owned by this user.
RUN useradd --system --uid 10001 --user-group --create-home --home-dir /home/triage triage \
    && mkdir -p /data \
    && chown triage:triage /data
USER triage
WORKDIR /home/triage

EXPOSE 11112 8000
ENTRYPOINT ["cxr-triage"]
CMD ["--help"]
