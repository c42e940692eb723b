#!/bin/sh
# A stand-in for the project's entrypoint (the real one is not copied here): runs the command given,
# the part of its job a build can observe is only that this file is in the image, executable.
exec "$@"
