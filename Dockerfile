# adaptree: multi-stage build on Debian 12. The model is fetched (and its sha256 checked) at
# build time; the runtime image holds the binary, the model, the registry and the runtime
# libraries only, and runs as an unprivileged user.
FROM debian:12 AS build
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        build-essential pkg-config python3 python3-pip unzip ca-certificates \
        libopenblas-dev libmicrohttpd-dev libcjson-dev libuv1-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Makefile ./
COPY core core
COPY adapters adapters
COPY server server
COPY tools tools
RUN make -j"$(nproc)" build/adaptree && tools/fetch_model.sh models/SmolLM2-135M-Instruct.Q4_1.gguf

FROM debian:12-slim
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        libopenblas0-pthread libmicrohttpd12 libcjson1 libuv1 curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home /app adaptree
WORKDIR /app
COPY --from=build /src/build/adaptree /app/adaptree
COPY --from=build /src/models /app/models
COPY registry /app/registry
USER adaptree
ENTRYPOINT ["/app/adaptree"]
CMD ["generate", "-m", "models/SmolLM2-135M-Instruct.Q4_1.gguf", "--chat", "--temperature", "0", "-p", "Hello!"]
