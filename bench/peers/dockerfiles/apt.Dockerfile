# apt: `apt-get install` of a few dozen packages (APT_PACKAGES, from bench/peers.sh) from the local Debian
# repository bench/peers.sh serves on 127.0.0.1:APT_PORT, on a Debian minbase (bench/peers/make-apt-image.sh):
# dpkg writes thousands of files (and python3's postinst byte-compiles its modules), committed as one layer.
# Every tool runs this step with the host's network (the repository is on the host's loopback).
ARG BASE
FROM ${BASE}
ARG APT_PORT
ARG APT_PACKAGES
RUN echo "deb [trusted=yes] http://127.0.0.1:${APT_PORT}/ ./" > /etc/apt/sources.list \
 && apt-get update -q \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends ${APT_PACKAGES} \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin
