#!/bin/sh
# What yapapi's blender example runs: renders what /golem/work/params.json asks for.
cd /golem/work || exit 1
exec python3 /golem/entrypoints/render_entrypoint.py "$@"
