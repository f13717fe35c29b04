# Images of the project's programs, one target each:
#
#   docker build --target kinesis-operator -t kinesis-operator .
#   docker build --target kinesis-worker   -t kinesis-worker .
#   docker build --target pageview-counter -t pageview-counter .
#
# The layout matches what `cargo xtask images` builds for the test node without Docker: the
# stripped binary at /usr/local/bin/NAME, glibc and libgcc, the CA bundle, user 65532.
# (Not built on the development machine: it has no Docker engine; see docs/DEVELOPING.md.)

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin kinesis-operator --bin kinesis-worker --bin pageview-counter \
 && strip target/release/kinesis-operator target/release/kinesis-worker target/release/pageview-counter

# distroless/cc: glibc, libgcc, CA certificates, no shell; user nonroot = 65532.
FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
USER 65532:65532

FROM runtime AS kinesis-operator
COPY --from=build /src/target/release/kinesis-operator /usr/local/bin/kinesis-operator
ENTRYPOINT ["/usr/local/bin/kinesis-operator"]

FROM runtime AS pageview-counter
COPY --from=build /src/target/release/pageview-counter /usr/local/bin/pageview-counter
ENTRYPOINT ["/usr/local/bin/pageview-counter"]

# Last, so a plain `docker build .` gives the worker.
FROM runtime AS kinesis-worker
COPY --from=build /src/target/release/kinesis-worker /usr/local/bin/kinesis-worker
ENTRYPOINT ["/usr/local/bin/kinesis-worker"]
