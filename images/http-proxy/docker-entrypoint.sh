#!/bin/sh
# What the nginx image's entry point does before nginx starts: run the set-up scripts in
# /docker-entrypoint.d/ (none here), then the command it was given, if any.
set -e
if [ "$1" = "nginx" ] || [ "$1" = "nginx-debug" ]; then
    for script in /docker-entrypoint.d/*.sh; do
        [ -x "$script" ] && "$script"
    done
fi
if [ "$#" -gt 0 ]; then
    exec "$@"
fi
