# Gateway image: the gateway and hosted-provider adapters, no torch (the local engine runs on GPU
# nodes as `switchyard engine serve`, or add the engine extra in a derived image).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md schema.prisma ./
COPY migrations ./migrations
COPY gateway ./gateway
COPY providers ./providers
COPY local_engine ./local_engine
# Editable so the gateway finds migrations/ beside the code it applies at start.
RUN pip install --no-cache-dir -e .
EXPOSE 4000
ENTRYPOINT ["switchyard", "serve", "--host", "0.0.0.0", "--port", "4000"]
CMD ["--config", "/etc/switchyard/config.yaml"]
