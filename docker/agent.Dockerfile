# syntax=docker/dockerfile:1
# The flotilla agent image: one static (musl) flotilla-agent binary on distroless/static, running
# as the distroless nonroot user (65532). The agent is pure Rust (rustls, no OpenSSL), so it links
# statically; the image holds nothing else.
#
#   docker build -f docker/agent.Dockerfile -t flotilla-agent .
#
# Build context: the repository root.

ARG RUST_VERSION=1

FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS build
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends musl-tools \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
ENV RUSTUP_TOOLCHAIN=stable CARGO_TERM_COLOR=never
# The musl target of the build machine's architecture (x86_64 or aarch64).
RUN target="$(uname -m)-unknown-linux-musl" \
    && rustup target add "$target" \
    && echo "$target" > /target
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    target="$(cat /target)" \
    && cargo build --release --locked -p flotilla-agent --bin flotilla-agent --target "$target" \
    && install -D -m 0755 "target/$target/release/flotilla-agent" /out/flotilla-agent

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/flotilla-agent /usr/local/bin/flotilla-agent
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/flotilla-agent"]
CMD ["run"]
