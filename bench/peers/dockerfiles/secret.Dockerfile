# secret: a BuildKit-style secret mount (`--secret id=mysecret,src=$WORK/secret.txt`). The image keeps a
# derived, non-secret file (the length and a salted hash), never the secret itself.
# BASE is given by bench/peers.sh: oci-layout://DIR for kiln, 127.0.0.1:PORT/busybox:latest for the peers.
ARG BASE
FROM ${BASE}
RUN --mount=type=secret,id=mysecret \
    test -s /run/secrets/mysecret \
 && wc -c < /run/secrets/mysecret > /secret-len.txt \
 && { echo salt-1; cat /run/secrets/mysecret; } | sha256sum | cut -c1-16 > /secret-fingerprint.txt
RUN test ! -s /run/secrets/mysecret && cat /secret-len.txt /secret-fingerprint.txt
