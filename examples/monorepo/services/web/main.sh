#!/bin/sh
. /app/lib/greet.sh
greet web
