# One image for every Damselfly service; the command picks the service.
FROM python:3.11-slim
WORKDIR /opt/damselfly
COPY pyproject.toml README.md ./
COPY events events
COPY services services
COPY projections projections
COPY dashboards dashboards
RUN pip install --no-cache-dir . && useradd --system --home /var/lib/damselfly damselfly \
    && mkdir -p /var/lib/damselfly && chown damselfly /var/lib/damselfly
USER damselfly
ENTRYPOINT ["damselfly"]
