# The kubetune operator image: the kopf operator and the API models, no torch.
#   docker build -t kubetune/operator:0.1.0 .
# The trainer image is built from trainer_image/ (it needs CUDA, PyTorch and the training stack).
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
WORKDIR /src
# setuptools' package-dir names all four packages, so all four source folders must be present.
COPY pyproject.toml README.md ./
COPY src/ src/
COPY operator/ operator/
COPY trainer_image/ trainer_image/
COPY testenv/ testenv/
RUN /opt/venv/bin/pip install '.[operator]'

FROM python:3.11-slim
COPY --from=build /opt/venv /opt/venv
# No .pyc writes (the chart mounts the root filesystem read-only); logs reach kubectl logs at once.
ENV PATH=/opt/venv/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
# A numeric non-root user, so runAsNonRoot can be verified without an /etc/passwd lookup.
USER 65532:65532
# /metrics (KUBETUNE_METRICS_PORT) and /healthz (KUBETUNE_HEALTH_PORT).
EXPOSE 8080 8081
ENTRYPOINT ["python", "-m", "kubetune_operator"]
