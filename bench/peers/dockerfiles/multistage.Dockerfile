# multistage: 4 independent CPU-bound stages and a final stage that collects them. The last COPY reads
# stamp.txt from the context (the input the touch and edit scenarios change).
ARG BASE
ARG MB=50
FROM ${BASE} AS s1
ARG MB
RUN mkdir /out && dd if=/dev/urandom bs=1M count=${MB} 2>/dev/null | sha256sum > /out/s1
FROM ${BASE} AS s2
ARG MB
RUN mkdir /out && dd if=/dev/urandom bs=1M count=${MB} 2>/dev/null | sha256sum > /out/s2
FROM ${BASE} AS s3
ARG MB
RUN mkdir /out && dd if=/dev/urandom bs=1M count=${MB} 2>/dev/null | sha256sum > /out/s3
FROM ${BASE} AS s4
ARG MB
RUN mkdir /out && dd if=/dev/urandom bs=1M count=${MB} 2>/dev/null | sha256sum > /out/s4
FROM ${BASE}
COPY --from=s1 /out/s1 /out/
COPY --from=s2 /out/s2 /out/
COPY --from=s3 /out/s3 /out/
COPY --from=s4 /out/s4 /out/
COPY stamp.txt /out/stamp.txt
RUN cat /out/s1 /out/s2 /out/s3 /out/s4 | wc -l
