#!/usr/bin/env bash
# Prepare a GPU host for training: install git, tmux and uv when missing, clone the repository
# (or update an existing clone) at a given ref, and make data/ runs/ env/ logs/ inside it.
# Idempotent: a second run only fetches and checks out the ref again. `just` is not needed on
# the host; `uv run just` works there once the environment is built (rust-just is a dev
# dependency).
#
#   bash bootstrap_remote.sh ROOT REPO_URL REF    # ROOT relative to $HOME, or absolute
#
# `scripts/remote.sh bootstrap` (just bootstrap-remote) pipes this file to the host over SSH,
# since the host has no copy of the repository yet.
set -euo pipefail

prog=bootstrap_remote
die() { echo "$prog: error: $*" >&2; exit 2; }
say() { echo "$prog: $*" >&2; }

[ $# -eq 3 ] || die "usage: bootstrap_remote.sh ROOT REPO_URL REF"
root=$1
url=$2
ref=$3
case $root in
    /*) ;;
    *) root=$HOME/$root ;;
esac

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo -n "$@"
    else
        die "not root and no sudo: cannot run '$*'; install git, tmux and curl by hand"
    fi
}

install_packages() {  # install_packages NAME...: Debian/Ubuntu packages
    command -v apt-get >/dev/null 2>&1 || die "missing $*; this host has no apt-get, install them by hand"
    say "installing $*"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

missing=()
for tool in git tmux; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if ! command -v uv >/dev/null 2>&1 && ! command -v curl >/dev/null 2>&1; then
    missing+=(curl ca-certificates)
fi
[ ${#missing[@]} -eq 0 ] || install_packages "${missing[@]}"

if ! command -v uv >/dev/null 2>&1; then
    say "installing uv into ~/.local/bin"
    curl -LsSf https://astral.sh/uv/install.sh | env UV_NO_MODIFY_PATH=1 sh >/dev/null
    command -v uv >/dev/null 2>&1 || die "uv was installed but is not on PATH (expected ~/.local/bin/uv)"
fi

if [ -d "$root/.git" ]; then
    say "updating $root from $url"
    git -C "$root" remote set-url origin "$url"
    git -C "$root" fetch --quiet --tags --force --prune origin
elif [ -e "$root" ] && [ -n "$(ls -A "$root")" ]; then
    die "$root exists but is not a git checkout; move it away or set REMOTE_ROOT"
else
    say "cloning $url into $root"
    git clone --quiet --no-checkout "$url" "$root"
fi

# A branch follows origin's copy of it; a tag or commit resolves as itself.
sha=$(git -C "$root" rev-parse --verify --quiet "refs/remotes/origin/$ref^{commit}" ||
      git -C "$root" rev-parse --verify --quiet "$ref^{commit}") ||
    die "ref '$ref' is not in $url (push it, or set REPO_REF)"
git -C "$root" checkout --quiet --detach "$sha" ||
    die "cannot check out $ref in $root (local changes there? see: git -C $root status)"

mkdir -p "$root/data" "$root/runs" "$root/env" "$root/logs"
chmod 700 "$root/env"
say "ready: $root at $ref ($(git -C "$root" rev-parse --short HEAD)); uv $(uv --version | cut -d' ' -f2)"
