# syntax=docker/dockerfile:1.7
#
# The `kairos` binary in a small runtime image. Every command runs from it: `serve` (the default),
# `serve --no-projections`, `consume <projection>`, `migrate`, `admin …`, `replay …`.
#
#   docker build -t kairos .
#   docker run --rm kairos check-config
#
# Build stage: cargo's registry, git checkouts and the target directory are BuildKit cache
# mounts, so a rebuild after a source change recompiles only the workspace's own crates. The
# target directory being a cache mount, the binary is copied out in the same RUN.
# Everything the binary needs at run time (kairos.toml's defaults, the event schemas, the
# migrations, the dashboard's assets) is compiled into it.

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked -p kairos \
    && install -m 0755 target/release/kairos /usr/local/bin/kairos

# Runtime stage: Debian slim (the build stage's glibc) with CA certificates only. bash, which the
# compose file's health checks use (/dev/tcp), is part of the base image.
FROM debian:${DEBIAN_RELEASE}-slim AS runtime
# An exact version pin would break rebuilds whenever Debian replaces the package (security
# updates drop the superseded version from the archive); the base image tag pins the release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 kairos \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin kairos
COPY --from=build /usr/local/bin/kairos /usr/local/bin/kairos
# The shipped configuration, the same as the built-in defaults: mount another file over it (or set
# KAIROS_* variables) to change it. Listening on every interface is what a container needs.
COPY kairos.toml /etc/kairos/kairos.toml
ENV KAIROS_CONFIG=/etc/kairos/kairos.toml \
    KAIROS_HTTP_ADDR=0.0.0.0:8080
USER 10001:10001
EXPOSE 8080
# No HEALTHCHECK here: the same image runs `consume` and `migrate`, which serve no HTTP. The
# compose file (and Kubernetes' probes) check GET /health/ready of the API processes.
ENTRYPOINT ["kairos"]
CMD ["serve"]
