#!/usr/bin/env bash
# Control plane for training on a rented GPU host over SSH; the Justfile's recipes call it.
#
#   scripts/remote.sh bootstrap | build | data | sync-env | train CONFIG [EXTRA] | auto-train CONFIG [EXTRA]
#                     infer COMMAND [EXTRA] | attach | kill | list-runs | fetch PATH | nvitop
#
# Settings come from the environment:
#   PRIME_HOST   user@host[:port] of the host (required)
#   REMOTE_ROOT  checkout on the host, relative to its home or absolute (default: diffusionlm)
#   SSH_KEY      identity file (default: ssh's own choice); SSH_CONFIG: an ssh_config file (-F)
#   SSH_WAIT_S   how long to wait for a freshly provisioned host to answer (default: 300)
#   REPO_URL     repository the host clones (default: this checkout's `origin`)
#   REPO_REF     branch, tag or commit to check out there (default: this checkout's HEAD commit)
#   DATA_FROM    folder on the host holding gpt2_vocab.json/gpt2_merges.txt to copy instead of
#                downloading them; `none` skips the data step (configs that need no GPT-2 files)
#   ENV_FILE     secrets copied by sync-env (default: env/wandb.env; must be mode 0600)
#   FETCH_DIR    local folder that `fetch` mirrors remote paths into (default: .)
#
# Safety: arguments reach the host single-quoted, never through eval; EXTRA strings are split
# like a shell would split them (quotes respected, nothing expanded); secrets travel only on
# ssh's stdin into a 0600 file, never on a command line.
set -euo pipefail

prog=remote
die() { echo "$prog: error: $*" >&2; exit 2; }   # bad settings or arguments
fail() { echo "$prog: error: $*" >&2; exit 1; }  # the host or the network failed us
say() { echo "$prog: $*" >&2; }

cd "$(dirname "$0")/.."
scripts_dir=$PWD/scripts

[ -n "${PRIME_HOST:-}" ] || die "PRIME_HOST is not set; export PRIME_HOST=user@host[:port] of the GPU host"
[[ $PRIME_HOST != -* ]] || die "PRIME_HOST '$PRIME_HOST' must not start with '-'"
target=$PRIME_HOST
port=""
if [[ $PRIME_HOST =~ ^(.+):([0-9]+)$ ]]; then
    target=${BASH_REMATCH[1]}
    port=${BASH_REMATCH[2]}
fi

root=${REMOTE_ROOT:-diffusionlm}
root=${root#\~/}  # ssh starts in the home directory, so "~/x" and "x" are the same place
wait_s=${SSH_WAIT_S:-300}
[[ $wait_s =~ ^[0-9]+$ ]] || die "SSH_WAIT_S '$wait_s' is not a whole number of seconds"

ssh_args=(-o BatchMode=yes -o ConnectTimeout=10 -o ServerAliveInterval=15 -o ServerAliveCountMax=4
          -o StrictHostKeyChecking=accept-new -o LogLevel=ERROR)
if [ -n "${SSH_CONFIG:-}" ]; then
    [ -f "$SSH_CONFIG" ] || die "SSH_CONFIG $SSH_CONFIG: not found"
    ssh_args=(-F "$SSH_CONFIG" "${ssh_args[@]}")
fi
if [ -n "${SSH_KEY:-}" ]; then
    [ -f "$SSH_KEY" ] || die "SSH_KEY $SSH_KEY: not found"
    ssh_args+=(-i "$SSH_KEY" -o IdentitiesOnly=yes)
fi
[ -z "$port" ] || ssh_args+=(-p "$port")

q() {  # q WORD: WORD single-quoted for any POSIX shell on the host
    printf "'%s'" "${1//\'/\'\\\'\'}"
}

qs() {  # qs WORD...: the words quoted and joined by spaces
    local out="" word
    for word in "$@"; do out+="$(q "$word") "; done
    printf '%s' "${out% }"
}

split_words() {  # split_words STRING: fills `words` like a shell split (quotes honoured, no expansion)
    words=()
    [ -n "${1//[[:space:]]/}" ] || return 0
    local parts word
    parts=$(mktemp)
    # xargs splits on blanks and honours quotes and backslashes, but expands and runs nothing.
    if ! printf '%s\n' "$1" | xargs printf '%s\0' > "$parts" 2>/dev/null; then
        rm -f "$parts"
        die "cannot split '$1' into arguments (unbalanced quote?)"
    fi
    while IFS= read -r -d '' word; do words+=("$word"); done < "$parts"
    rm -f "$parts"
}

ready=0
wait_for_ssh() {
    # Freshly provisioned hosts refuse or drop connections for a while: retry those with a
    # doubling delay (capped at 10 s) until SSH_WAIT_S has passed; fail at once on anything else
    # (bad key, changed host key, unknown host name), which waiting would not cure.
    [ "$ready" -eq 0 ] || return 0
    local deadline=$((SECONDS + wait_s)) delay=1 err reason
    while ! err=$(ssh "${ssh_args[@]}" -- "$target" true 2>&1 </dev/null); do
        reason=$(printf '%s\n' "$err" | tr -d '\r' | grep -v '^[[:space:]]*$' | tail -n 1)
        case $err in
            *"Connection refused"* | *"timed out"* | *"No route to host"* | *"Network is unreachable"* | \
            *"Connection reset"* | *"Connection closed"* | *"kex_exchange_identification"*) ;;
            *) fail "cannot log in to $PRIME_HOST: ${reason:-ssh failed}" ;;
        esac
        if [ $((SECONDS + delay)) -gt "$deadline" ]; then
            fail "host $PRIME_HOST did not answer over SSH within ${wait_s}s (${reason:-no reply})"
        fi
        say "waiting for $PRIME_HOST to answer over SSH (${reason:-no reply}); retrying in ${delay}s"
        sleep "$delay"
        delay=$((delay * 2 > 10 ? 10 : delay * 2))
    done
    ready=1
}

# The host's shell runs this before every command: tools installed by bootstrap live in
# ~/.local/bin (uv's installer) or ~/.cargo/bin, which non-interactive logins do not have.
# shellcheck disable=SC2016  # expanded on the host, not here
host_path='export PATH="$HOME/.local/bin:$HOME/.cargo/bin:$PATH"'

on_host() {  # on_host COMMAND_STRING [ssh args]: run a command string in REMOTE_ROOT on the host
    local command=$1
    shift
    wait_for_ssh
    ssh "${ssh_args[@]}" "$@" -- "$target" "$host_path && cd $(q "$root") && $command"
}

bootstrap() {
    local url=${REPO_URL:-} ref=${REPO_REF:-}
    [ -n "$url" ] || url=$(git remote get-url origin 2>/dev/null) ||
        die "REPO_URL is not set and this checkout has no 'origin' remote"
    [ -n "$ref" ] || ref=$(git rev-parse HEAD)
    wait_for_ssh
    ssh "${ssh_args[@]}" -- "$target" "$host_path && bash -s -- $(qs "$root" "$url" "$ref")" \
        < "$scripts_dir/bootstrap_remote.sh"
}

build() {
    on_host "uv sync --frozen </dev/null"
}

data() {
    case ${DATA_FROM:-} in
        none) say "DATA_FROM=none: no tokenizer files fetched" ;;
        "") on_host "$(qs bash scripts/fetch_data.sh)" </dev/null ;;
        *) on_host "$(qs bash scripts/fetch_data.sh --from "$DATA_FROM")" </dev/null ;;
    esac
}

sync_env() {  # sync_env [--if-present]
    local file=${ENV_FILE:-env/wandb.env}
    if [ ! -f "$file" ]; then
        [ "${1:-}" != --if-present ] || return 0
        die "$file: not found; copy env/wandb.env.example to $file, fill it in and chmod 600 it"
    fi
    if [ -n "$(find "$file" -prune \( -perm -g+r -o -perm -o+r \))" ]; then
        die "$file is readable by other users; run: chmod 600 $file"
    fi
    # The secrets go through ssh's stdin into a file created 0600 (umask 077), renamed into place.
    on_host "umask 077 && mkdir -p env && cat > env/.wandb.env.tmp && chmod 600 env/.wandb.env.tmp && mv -f env/.wandb.env.tmp env/wandb.env" \
        < "$file"
    say "copied $file to $PRIME_HOST:$root/env/wandb.env (mode 600)"
}

train() {  # train CONFIG [EXTRA]
    local config=${1:?usage: train CONFIG [EXTRA]}
    split_words "${2:-}"
    on_host "$(qs bash scripts/run_train_remote.sh start "$config" ${words[@]+"${words[@]}"})" </dev/null
}

auto_train() {  # auto_train CONFIG [EXTRA]: every step from a bare host to a running session
    say "step 1/5: bootstrap"; bootstrap
    say "step 2/5: build"; build
    say "step 3/5: data"; data
    say "step 4/5: secrets"; sync_env --if-present
    say "step 5/5: train"; train "$@"
}

infer() {  # infer COMMAND [EXTRA]
    local command=${1:?usage: infer COMMAND [EXTRA]}
    split_words "${2:-}"
    on_host "$(qs bash scripts/run_infer_remote.sh "$command" ${words[@]+"${words[@]}"})" </dev/null
}

fetch() {  # fetch PATH: copy ROOT/PATH (file or folder) from the host to FETCH_DIR/PATH
    local path=${1:?usage: fetch PATH (relative to REMOTE_ROOT, e.g. runs/NAME/export)}
    path=${path%/}
    case /$path/ in
        //* | */../* | */./*) die "fetch path '$1' must be relative to REMOTE_ROOT, without '.' or '..'" ;;
    esac
    local dest=${FETCH_DIR:-.} staging
    mkdir -p "$dest"
    staging=$(mktemp -d "$dest/.fetch.XXXXXX")
    # shellcheck disable=SC2064  # expand now: the trap must remove this very folder
    trap "rm -rf $(q "$staging")" EXIT
    on_host "if [ ! -e $(q "$path") ]; then echo $(q "$prog: error: $root/$path: not found on the host") >&2; exit 2; fi; tar -cf - -- $(q "$path")" \
        </dev/null > "$staging/archive.tar"
    mkdir "$staging/tree"
    tar -xf "$staging/archive.tar" -C "$staging/tree"
    mkdir -p "$dest/$(dirname "$path")"
    if [ -d "$staging/tree/$path" ] && [ -d "$dest/$path" ]; then
        cp -R "$staging/tree/$path/." "$dest/$path/"  # merge into an earlier fetch of the same folder
    else
        if [ -d "$staging/tree/$path" ] || [ -d "$dest/$path" ]; then
            rm -rf "${dest:?}/$path"  # a file and a folder cannot replace one another by a rename
        fi
        mv -f "$staging/tree/$path" "$dest/$path"  # a rename: the file appears whole or not at all
    fi
    say "fetched $PRIME_HOST:$root/$path -> $dest/$path"
}

[ $# -gt 0 ] || die "usage: remote.sh COMMAND [ARGS] (see the Justfile)"
command=$1
shift
case $command in
    bootstrap) bootstrap ;;
    build) build ;;
    data) data ;;
    sync-env) sync_env ;;
    train) train "$@" ;;
    auto-train) auto_train "$@" ;;
    infer) infer "$@" ;;
    attach) on_host "bash scripts/run_train_remote.sh attach" -t ;;
    kill) on_host "bash scripts/run_train_remote.sh kill" </dev/null ;;
    list-runs) on_host "bash scripts/run_train_remote.sh list" </dev/null ;;
    fetch) fetch "$@" ;;
    nvitop) on_host "uvx nvitop" -t ;;
    *) die "unknown command '$command' (see the Justfile)" ;;
esac
