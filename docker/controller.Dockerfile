# syntax=docker/dockerfile:1.7
#
# vllm-operator controller image: a static (musl) binary on distroless/static, run as the
# distroless `nonroot` user (65532, the chart's runAsUser).
#
#   docker build -f docker/controller.Dockerfile -t ghcr.io/vllm-operator/vllm-operator:0.1.0 .
#
# Not built in this repository's CI: the development machines have no Docker engine. The
# binary it builds is the one `cargo build -p vllm-operator` builds and tests.

ARG RUST_VERSION=1.89
FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS build
# musl-gcc for ring (rustls' crypto), which compiles C and assembly.
RUN apt-get update \
 && apt-get install -y --no-install-recommends musl-tools \
 && rm -rf /var/lib/apt/lists/* \
 && rustup target add x86_64-unknown-linux-musl
WORKDIR /src
# The whole workspace: cargo resolves every member's manifest even when building one package.
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY node-agent ./node-agent
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p vllm-operator --bin vllm-operator \
      --target x86_64-unknown-linux-musl \
 && install -D -m 0755 target/x86_64-unknown-linux-musl/release/vllm-operator /out/vllm-operator

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/vllm-operator /usr/local/bin/vllm-operator
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/vllm-operator"]
CMD ["run"]
