#!/usr/bin/env bash
# `FROM busybox-app`: the busybox base with an application image's config: its own ENV (PATH extended),
# USER, WORKDIR, ENTRYPOINT and CMD, labels, an exposed port, a volume, a stop signal and a healthcheck.
# Usage: busybox-app.sh DEST BUSYBOX_LAYOUT
set -euo pipefail
python3 "$(dirname "$0")/with-config.py" "$1" "$2" '{
  "Env": ["PATH=/opt/app/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
          "APP_HOME=/opt/app", "LANG=C.UTF-8", "SHARED=base"],
  "User": "appuser",
  "WorkingDir": "/opt/app",
  "Entrypoint": ["/bin/echo", "entry"],
  "Cmd": ["base-cmd"],
  "Labels": {"org.example.base": "yes", "shared": "base"},
  "ExposedPorts": {"8080/tcp": {}},
  "Volumes": {"/data": {}},
  "StopSignal": "SIGINT",
  "Healthcheck": {"Test": ["CMD", "/bin/true"], "Interval": 30000000000, "Retries": 3}
}'
