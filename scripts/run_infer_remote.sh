#!/usr/bin/env bash
# Run one of the project's commands on the GPU host, in the foreground, from its checkout
# (scripts/remote.sh calls it over SSH; the output streams back to the caller):
#
#   bash scripts/run_infer_remote.sh infer --checkpoint runs/x --prompt "Once upon a time"
#   bash scripts/run_infer_remote.sh eval --config config/resources/eval.toml   # diffusionlm-eval
#
# COMMAND is an entry point's name with or without its `diffusionlm-` prefix. No secrets are
# loaded: none of these commands needs them.
set -euo pipefail

prog=run_infer_remote
die() { echo "$prog: error: $*" >&2; exit 2; }

cd "$(dirname "$0")/.."

[ $# -gt 0 ] || die "usage: run_infer_remote.sh COMMAND [ARG...]"
name=${1#diffusionlm-}
shift
[[ $name =~ ^[a-z][a-z0-9-]*$ ]] || die "command '$name' is not an entry point name (e.g. infer, eval, bench-infer)"
command -v uv >/dev/null 2>&1 || die "uv is not installed on this host; run: just bootstrap-remote"
uv sync --frozen --quiet </dev/null
[ -x ".venv/bin/diffusionlm-$name" ] ||
    die "no command diffusionlm-$name here; available: $(cd .venv/bin && printf '%s ' diffusionlm-* | sed 's/diffusionlm-//g')"
export PYTHONUNBUFFERED=1  # stream sampled text as it is produced, not when the pipe fills
exec uv run --frozen "diffusionlm-$name" "$@"
