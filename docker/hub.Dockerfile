# syntax=docker/dockerfile:1
# The flotilla hub image: flotilla-hub, the flotilla CLI and helm (the hub renders HelmReleases
# with `helm template`), on distroless/base (glibc and OpenSSL: libgit2's HTTPS transport links
# the system OpenSSL), running as the distroless nonroot user (65532).
#
#   docker build -f docker/hub.Dockerfile -t flotilla-hub .
#
# Build context: the repository root. The helm version matches e2e/versions.env.

ARG RUST_VERSION=1
ARG GO_VERSION=1.24
ARG HELM_VERSION=v3.18.6

FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS build
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends libssl-dev pkg-config cmake \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# rust-toolchain.toml asks for "stable": use the image's toolchain rather than downloading one.
ENV RUSTUP_TOOLCHAIN=stable CARGO_TERM_COLOR=never
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p flotilla-hub --bins \
    && install -D -m 0755 target/release/flotilla-hub /out/flotilla-hub \
    && install -D -m 0755 target/release/flotilla /out/flotilla

FROM docker.io/library/golang:${GO_VERSION}-bookworm AS helm
ARG HELM_VERSION
RUN CGO_ENABLED=0 GOBIN=/out go install -trimpath \
    -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=${HELM_VERSION}" \
    "helm.sh/helm/v3/cmd/helm@${HELM_VERSION}"

FROM gcr.io/distroless/base-debian12:nonroot
COPY --from=build /out/flotilla-hub /out/flotilla /usr/local/bin/
COPY --from=helm /out/helm /usr/local/bin/helm
USER 65532:65532
# registration (TLS), delivery (mTLS), HTTP (dashboard, API, /healthz, /readyz, webhooks)
EXPOSE 7441 7443 8080
ENV FLOTILLA_HELM_BINARY=/usr/local/bin/helm FLOTILLA_CACHE_DIR=/var/cache/flotilla
ENTRYPOINT ["/usr/local/bin/flotilla-hub"]
