# Build the `parley` binary, then run it on a small Debian image.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin parley

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --home-dir /var/lib/parley parley \
 && mkdir -p /var/lib/parley && chown parley /var/lib/parley
COPY --from=build /src/target/release/parley /usr/local/bin/parley
USER parley
WORKDIR /var/lib/parley
ENV PARLEY_DATA_DIR=/var/lib/parley
EXPOSE 1883 8083 8080
HEALTHCHECK --interval=10s --timeout=5s CMD curl -fsS http://127.0.0.1:8080/readyz || exit 1
ENTRYPOINT ["parley"]
CMD ["serve"]
