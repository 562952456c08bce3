# palaver: an OpenAI-compatible chat gateway. Installs exactly as `make` does (scripts/install.sh
# from the hash-pinned requirements.lock); `make image-check` runs these steps without Docker.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/palaver/bin:$PATH \
    HOST=0.0.0.0 \
    PORT=3001

WORKDIR /src
COPY requirements.lock pyproject.toml README.md ./
COPY scripts/install.sh scripts/install.sh
COPY src ./src
RUN PYTHON=python3 scripts/install.sh /opt/palaver requirements.lock \
    && useradd --create-home --uid 10001 palaver

# Runs unprivileged; the default sqlite conversations file lives in its home.
USER palaver
WORKDIR /home/palaver
EXPOSE 3001
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 CMD ["palaver", "healthcheck"]
CMD ["palaver", "serve"]
