# syntax=docker/dockerfile:1
#
# fusioo-gateway image: a static gateway binary (and the fusioo-sim simulator
# for demos) on distroless, running as a non-root user.
#
#   docker build --build-arg VERSION=$(git describe --tags --always --dirty) -t fusioo-gateway .
#   docker run --rm -p 8080:8080 -e FUSIOO_GATEWAY_SERVER_ADMIN_LISTEN=0.0.0.0:9090 fusioo-gateway
#
# The image's configuration is config.example.toml (in-memory quota, upstream
# https://api.fusioo.com). Override keys with FUSIOO_GATEWAY_<SECTION>_<KEY>
# environment variables, or mount your own file over
# /etc/fusioo-gateway/config.toml. The admin listener (/metrics, /healthz,
# /readyz) defaults to 127.0.0.1:9090, which nothing outside the container
# can reach: set FUSIOO_GATEWAY_SERVER_ADMIN_LISTEN=0.0.0.0:9090 where
# Prometheus or the orchestrator's probes must reach it (deploy/docker-compose.yml
# and deploy/kubernetes do).

ARG GO_VERSION=1.26

FROM --platform=$BUILDPLATFORM golang:${GO_VERSION}-bookworm AS build
ARG TARGETOS
ARG TARGETARCH
ARG VERSION=dev
WORKDIR /src
# Module downloads are cached in their own layer, keyed on go.mod / go.sum.
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
# CGO_ENABLED=0: a static binary that runs on distroless/static (no libc).
RUN --mount=type=cache,target=/go/pkg/mod \
    --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 GOOS=${TARGETOS} GOARCH=${TARGETARCH} \
    go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/gateway ./cmd/gateway && \
    CGO_ENABLED=0 GOOS=${TARGETOS} GOARCH=${TARGETARCH} \
    go build -trimpath -ldflags "-s -w" -o /out/fusioo-sim ./cmd/fusioo-sim

# distroless/static: CA certificates (the gateway speaks TLS to
# api.fusioo.com), tzdata and /etc/passwd with the nonroot user 65532; no
# shell, no package manager.
FROM gcr.io/distroless/static-debian12:nonroot
ARG VERSION=dev
LABEL org.opencontainers.image.title="fusioo-gateway" \
      org.opencontainers.image.description="Rate-limit-aware reverse proxy for the Fusioo API" \
      org.opencontainers.image.version="${VERSION}"
COPY --from=build /out/gateway /out/fusioo-sim /usr/local/bin/
COPY config.example.toml /etc/fusioo-gateway/config.toml
USER 65532:65532
# 8080: the proxy (server.listen). 9090: the admin listener
# (server.admin_listen: /metrics, /healthz, /readyz), see above.
EXPOSE 8080 9090
# distroless has no shell or curl, so the binary probes itself: -probe GETs
# the admin listener's /healthz (default 127.0.0.1:9090, reachable inside the
# container) and exits 0 on 200. Kubernetes uses its own probes on
# /healthz and /readyz instead (deploy/kubernetes).
HEALTHCHECK --interval=10s --timeout=4s --start-period=5s --retries=3 \
    CMD ["/usr/local/bin/gateway", "-probe", "http://127.0.0.1:9090/healthz"]
# SIGTERM (the default stop signal) drains gracefully within
# server.shutdown_timeout (25s by default): give the container at least
# that long to stop (docker stop -t 30, compose stop_grace_period,
# Kubernetes terminationGracePeriodSeconds).
ENTRYPOINT ["/usr/local/bin/gateway", "-config", "/etc/fusioo-gateway/config.toml"]
