# rstwatch: multi-stage build. The eBPF object needs the pinned nightly (rust-src) and
# bpf-linker; the runtime image needs neither: the object is embedded in the binary.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# The eBPF nightly is named once, in rst-ebpf/rust-toolchain.toml: rustup reads it there (the
# toolchain active in that directory) and installs it with the components it lists.
WORKDIR /src/rst-ebpf
RUN rustup toolchain install --profile minimal
WORKDIR /src
RUN cargo install --locked bpf-linker@0.10.4
RUN cargo build --release --locked -p rst-userspace \
    && install -m 0755 target/release/rstwatch /rstwatch

# `cargo xtask image` builds this same runtime image with no registry (a debootstrap'd Debian
# base); it reads the instructions below, so keep them to FROM, COPY, USER, ENTRYPOINT and CMD.
FROM debian:bookworm-slim
COPY --from=build /rstwatch /usr/local/bin/rstwatch
# Root inside the container, but holding only what `docker run` grants:
#   --cap-drop ALL --cap-add BPF --cap-add NET_ADMIN --cap-add PERFMON --network host
# (Docker gives a non-root user no effective capabilities, so USER is left as root.)
ENTRYPOINT ["/usr/local/bin/rstwatch"]
CMD ["--help"]
