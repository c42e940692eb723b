#!/usr/bin/env bash
# `FROM busybox-onbuild`: the busybox base with ONBUILD triggers in its config, which a build FROM it runs
# first: a RUN, an ENV the RUN after it sees, a WORKDIR and a COPY from the child's context.
# Usage: busybox-onbuild.sh DEST BUSYBOX_LAYOUT
set -euo pipefail
python3 "$(dirname "$0")/with-config.py" "$1" "$2" '{
  "OnBuild": ["ENV TRIGGER=from-base", "RUN echo \"$TRIGGER\" > /triggered", "WORKDIR /srv/app",
              "COPY . /srv/app/"]
}'
