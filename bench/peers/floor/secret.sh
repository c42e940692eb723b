# shellcheck shell=bash disable=SC2016
# Sourced by run.py after lib.sh (see there): the commands of dockerfiles/secret.Dockerfile, kept in step with it.
# secret: the secret bound where BuildKit mounts it, for the first RUN only.
prepare() { fresh root; }
timed() {
  step bind "$WORK/secret.txt" /run/secrets/mysecret root \
    'test -s /run/secrets/mysecret && wc -c < /run/secrets/mysecret > /secret-len.txt && { echo salt-1; cat /run/secrets/mysecret; } | sha256sum | cut -c1-16 > /secret-fingerprint.txt'
  step root 'test ! -s /run/secrets/mysecret && cat /secret-len.txt /secret-fingerprint.txt'
}
