# The kubetune operator image: the kopf operator and the API models, no torch.
#   docker build -t kubetune/operator:0.1.0 .
# The trainer image is built from trainer_image/ (it needs CUDA, PyTorch and the training stack).
#
# Build argument BASE_IMAGE: any image with Python 3.11 as python3 (default python:3.11-slim from the
# registry). The test environment builds without a registry on a Debian bookworm base of its own:
#   --build-arg BASE_IMAGE=localhost/kubetune/python:3.11-bookworm   (python -m kubetune_testenv images)
# Both stages use the same base: the venv's python links to the base's python3.
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3 -m venv /opt/venv
WORKDIR /src
# setuptools' package-dir names all four packages, so each folder must exist; the operator needs only the
# API and its own code, so the trainer and the test environment are their __init__.py alone (and editing
# them does not rebuild this image).
COPY pyproject.toml ./
COPY src/ src/
COPY operator/ operator/
COPY trainer_image/kubetune_trainer/__init__.py trainer_image/kubetune_trainer/
COPY testenv/kubetune_testenv/__init__.py testenv/kubetune_testenv/
# pip's wheel cache lives in a build cache mount, never in the image.
RUN --mount=type=cache,target=/root/.cache/pip /opt/venv/bin/pip install '.[operator]'

FROM ${BASE_IMAGE}
COPY --from=build /opt/venv /opt/venv
# No .pyc writes (the chart mounts the root filesystem read-only); logs reach kubectl logs at once.
ENV PATH=/opt/venv/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
# A numeric non-root user, so runAsNonRoot can be verified without an /etc/passwd lookup.
USER 65532:65532
# /metrics (KUBETUNE_METRICS_PORT) and /healthz (KUBETUNE_HEALTH_PORT).
EXPOSE 8080 8081
ENTRYPOINT ["python", "-m", "kubetune_operator"]
