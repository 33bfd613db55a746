# One image for every flotilla process (scheduler, worker, simulator, CLI).
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin flotilla

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 flotilla
COPY --from=build /src/target/release/flotilla /usr/local/bin/flotilla
COPY examples /examples
USER flotilla
WORKDIR /home/flotilla
ENTRYPOINT ["flotilla"]
