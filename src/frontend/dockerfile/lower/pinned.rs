//! Pins the node digests of a few Dockerfiles: a change to parsing, lowering or the canonical encoding that
//! moves any digest invalidates every user's cache, so it must be a decision (bump `DEF_DOMAIN`), never an
//! accident of making compiling faster.

use crate::diag::SourceFile;
use crate::frontend::LowerOptions;
use crate::frontend::dockerfile::{lower::lower, syntax::parse};
use crate::graph::Dag;

/// Every node digest of the file's graph, in dependency order, each with its kind.
fn digests(text: &str, opts: &LowerOptions) -> Vec<String> {
    let df = parse(SourceFile::new("Dockerfile", text)).expect("parses");
    let dag = Dag::new(&lower(&df, opts).expect("lowers"));
    dag.topo_order()
        .into_iter()
        .map(|n| format!("{} {}", dag.dag[n].op.kind(), dag.dag[n].digest.short()))
        .collect()
}

const MULTISTAGE: &str = r#"# syntax=docker/dockerfile:1
ARG GO=1.22
FROM golang:${GO}-bookworm AS build
ENV CGO_ENABLED=0 GOFLAGS="-trimpath -mod=readonly" PATH=/usr/local/go/bin:$PATH
WORKDIR /src
COPY --chown=1000:1000 go.mod go.sum ./
RUN --mount=type=cache,target=/root/.cache/go-build,sharing=locked \
    --mount=type=secret,id=netrc,target=/root/.netrc \
    go mod download && \
    go build -o /out/app ./cmd/app
FROM debian:bookworm-slim
ARG VERSION=dev
LABEL org.opencontainers.image.version=$VERSION maintainer="ops <ops@example.com>"
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build --chmod=0755 /out/app /usr/local/bin/app
USER 1000:1000
EXPOSE 8080/tcp 9090
HEALTHCHECK --interval=30s --timeout=3s CMD ["app", "health"]
ENTRYPOINT ["/usr/local/bin/app"]
CMD ["serve", "--port=${PORT:-8080}"]
"#;

const SHELLY: &str = r#"FROM alpine:3.19 AS base
SHELL ["/bin/ash", "-eo", "pipefail", "-c"]
ARG USER=app
ENV HOME=/home/${USER} LANG=C.UTF-8
RUN adduser -D ${USER}
WORKDIR $HOME/work
ADD --checksum=sha256:24454f830cdb571e2c4ad15481119c43b3cafd48dd869a9b2945d1036d1dc68d https://example.com/x.tar.gz /tmp/
COPY <<EOF /etc/motd
hello ${USER}
EOF
RUN <<EOT
set -e
echo "$HOME" > /tmp/home
EOT
ONBUILD COPY . /app
VOLUME ["/data", "/cache"]
STOPSIGNAL SIGTERM
FROM base
RUN --network=none --mount=type=tmpfs,target=/tmp \
    --mount=type=bind,from=base,source=/etc,target=/mnt/etc echo done
"#;

#[test]
fn node_digests_are_pinned() {
    let opts = LowerOptions {
        lenient: true,
        ..Default::default()
    };
    let got = [digests(MULTISTAGE, &opts), digests(SHELLY, &opts)];
    let want: [&[&str]; 2] = [
        &[
            "context ad1bb732ce6c",
            "image b2a226b2f83d",
            "mkdir 6570c3859bee",
            "copy a1e964e19b21",
            "run 82790b108915",
            "image a17d460846d7",
            "run fc8833fdb617",
            "copy 3e5d0a4ac974",
            "config c1bc1e68d83a",
        ],
        &[
            "context ad1bb732ce6c",
            "inline 9c03bea5131e",
            "remote 4a7f71e0a785",
            "image b68ceeb68078",
            "run 3a2cf9007adb",
            "mkdir e07f6b456391",
            "copy c78dccb90b24",
            "copy 524943edb791",
            "run c4e3bfcec927",
            "copy 2f37f1216d41",
            "run 11275c79787e",
            "config 75e4fc60d59c",
        ],
    ];
    assert_eq!(got, want);
}
