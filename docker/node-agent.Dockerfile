# syntax=docker/dockerfile:1.7
#
# vllm-node-agent image: the node agent and the in-pod launcher. Linked against glibc because
# nvml-wrapper dlopen()s libnvidia-ml.so.1 at run time, which the NVIDIA container runtime
# injects from the host driver (a static musl binary cannot dlopen it). Runs on
# distroless/cc (glibc, libgcc) as the `nonroot` user (65532, the chart's runAsUser). The
# build stage is Debian bullseye (glibc 2.31), older than every glibc it must run on.
#
# The controller passes this image as --launcher-image: an init container copies
# /usr/local/bin/vllm-node-agent into an emptyDir of every vLLM pod, where it runs as
# `vllm-node-agent launch -- vllm serve ...`. The binary therefore must not need anything
# from this image at run time beyond glibc, which every vLLM image has. vLLM images are
# Ubuntu 22.04 (glibc 2.35) or, for old releases, 20.04 (2.31). Linking against bullseye's
# 2.31 keeps the binary's newest versioned glibc symbol at or below 2.31; the same binary
# built on bookworm (2.36) was measured to need GLIBC_2.34. Check after a build with
# `objdump -T vllm-node-agent | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -1`.
#
#   docker build -f docker/node-agent.Dockerfile -t ghcr.io/vllm-operator/vllm-node-agent:0.1.0 .
#
# Not built in this repository's CI: the development machines have no Docker engine. The
# binary it builds is the one `cargo build -p vllm-node-agent` builds and tests.

ARG RUST_VERSION=1.89
ARG BUILD_IMAGE=docker.io/library/rust:${RUST_VERSION}-bullseye
FROM ${BUILD_IMAGE} AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY node-agent ./node-agent
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p vllm-node-agent --bin vllm-node-agent \
 && install -D -m 0755 target/release/vllm-node-agent /out/vllm-node-agent

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/vllm-node-agent /usr/local/bin/vllm-node-agent
USER 65532:65532
EXPOSE 9400
ENTRYPOINT ["/usr/local/bin/vllm-node-agent"]
CMD ["run"]
