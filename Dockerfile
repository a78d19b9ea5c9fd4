# The jetbridge image: the server, the CLI (`submit`, `conformance` for `helm test`) and
# `jetbridge migrate`, as one binary, run as a non-root user; and the static step-pod
# helper that step pods copy in.
#
#   docker build -t ghcr.io/jetbridge/jetbridge:0.1.0 .
#
# The chart (charts/jetbridge) runs it with `--config /etc/jetbridge/config/jetbridge.yml
# server` as user 65532, read-only root filesystem; a test checks that this file and
# the chart agree on the user and the entrypoint.

# The toolchain CI builds with.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p jetbridge \
    && install -D -m 0755 target/release/jetbridge /out/jetbridge \
    && install -D -m 0755 "$(./.ci/build-helper.sh)" /out/jetbridge-helper
# The built-in `mock` resource: the binary acts as it when started as `check`, `in` or
# `out`, and as the `env` the Kubernetes backend execs step commands through, so these
# links are all this image needs to serve as the `mock` type's image (`--mock-image`).
# Made here: the final image has no shell to make them.
RUN mkdir -p /out/root/opt/resource /out/root/usr/bin \
    && for s in check in out; do ln -s /usr/local/bin/jetbridge "/out/root/opt/resource/$s"; done \
    && ln -s /usr/local/bin/jetbridge /out/root/usr/bin/env

# glibc, CA certificates (buckets over TLS), tzdata and a nonroot user; no shell.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/jetbridge /usr/local/bin/jetbridge
# The static step-pod helper (`bins/jetbridge-helper`, glibc linked in): every step pod's
# init container copies it from here (`--step-helper-image`), so it runs in any step
# image, even one with no libc.
COPY --from=build /out/jetbridge-helper /usr/local/bin/jetbridge-helper
# A directory's contents, so the links stay links.
COPY --from=build /out/root/ /
USER 65532:65532
EXPOSE 8080 9391
ENTRYPOINT ["/usr/local/bin/jetbridge"]
