#!/usr/bin/env bash
# Training sessions on the GPU host, run from its checkout (scripts/remote.sh calls it over SSH):
#
#   bash scripts/run_train_remote.sh start CONFIG [ARG...]          train in tmux session diffusionlm-train
#   bash scripts/run_train_remote.sh print-command CONFIG [ARG...]  the command `start` would run
#   bash scripts/run_train_remote.sh attach | kill | list           watch, stop, list runs/
#
# A host whose nvidia-smi lists more than one GPU runs diffusionlm-train-ddp under torchrun, one
# process per GPU, when the environment has that entry point; otherwise diffusionlm-train.
# Secrets come from env/wandb.env (KEY=VALUE lines, parsed, never executed) and are loaded only
# inside the processes that need them, so they never appear on a command line, in tmux's history
# or in the log. The session's output is also kept in logs/train-<UTC time>.log.
set -euo pipefail

prog=run_train_remote
session_name=diffusionlm-train
env_file=env/wandb.env
die() { echo "$prog: error: $*" >&2; exit 2; }
say() { echo "$prog: $*" >&2; }

cd "$(dirname "$0")/.."

load_env_file() {  # export env/wandb.env's KEY=VALUE lines (one pair of quotes around a value is removed)
    [ -f "$env_file" ] || return 0
    local line number=0 key value
    while IFS= read -r line || [ -n "$line" ]; do
        number=$((number + 1))
        [[ $line =~ ^[[:space:]]*(#|$) ]] && continue
        # The message names the line but never shows it: it may hold a secret.
        [[ $line =~ ^[[:space:]]*(export[[:space:]]+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)$ ]] ||
            die "$env_file:$number: expected KEY=VALUE"
        key=${BASH_REMATCH[2]}
        value=${BASH_REMATCH[3]}
        if [[ $value =~ ^\"(.*)\"[[:space:]]*$ || $value =~ ^\'(.*)\'[[:space:]]*$ ]]; then
            value=${BASH_REMATCH[1]}
        fi
        export "$key=$value"
    done < "$env_file"
}

session_running() {
    tmux has-session -t "=$session_name" 2>/dev/null
}

gpu_count() {
    command -v nvidia-smi >/dev/null 2>&1 || { echo 0; return; }
    nvidia-smi --query-gpu=index --format=csv,noheader 2>/dev/null | grep -c . || true
}

find_uv() {  # sets `uv_bin`: an absolute path, since tmux sessions may have another PATH
    uv_bin=$(command -v uv) || die "uv is not installed on this host; run: just bootstrap-remote"
}

choose_command() {  # choose_command CONFIG [ARG...]: sets `cmd` (what to run) and `entry_cmd` (its CLI)
    local config=$1 gpus entry
    shift
    find_uv
    gpus=$(gpu_count)
    if [ "$gpus" -gt 1 ] && [ -x .venv/bin/diffusionlm-train-ddp ]; then
        entry=.venv/bin/diffusionlm-train-ddp
        cmd=("$uv_bin" run --frozen torchrun --standalone --nproc-per-node "$gpus" "$entry" --config "$config" "$@")
    else
        [ "$gpus" -le 1 ] || say "$gpus GPUs, but this version has no diffusionlm-train-ddp: training on one GPU"
        entry=diffusionlm-train
        cmd=("$uv_bin" run --frozen "$entry" --config "$config" "$@")
    fi
    entry_cmd=("$uv_bin" run --frozen "$entry")
}

check_wandb_credentials() {  # check_wandb_credentials RESOLVED_CONFIG_TOML
    local backend
    backend=$(printf '%s' "$1" | "$uv_bin" run --frozen python -c \
        'import sys, tomllib; print(tomllib.loads(sys.stdin.read())["logging"]["backend"])')
    [ "$backend" = wandb ] || return 0
    case ${WANDB_MODE:-online} in offline | disabled | dryrun) return 0 ;; esac
    [ -z "${WANDB_API_KEY:-}" ] || return 0
    grep -qs 'api\.wandb\.ai' "$HOME/.netrc" && return 0
    die "logging.backend is \"wandb\" but there are no W&B credentials: put WANDB_API_KEY in env/wandb.env (see env/wandb.env.example; chmod 600), then run: just sync-env"
}

start() {  # start CONFIG [ARG...]
    local config=${1:?usage: start CONFIG [ARG...]} resolved log
    [ -f "$config" ] || die "config $config: not found on the host (relative paths start at $PWD)"
    ! session_running || die "tmux session $session_name is already running; watch it with: just attach-train, or stop it with: just kill-train"
    find_uv
    "$uv_bin" sync --frozen --quiet </dev/null  # before choosing: the entry points live in .venv/bin
    choose_command "$@"
    load_env_file
    # Validate the whole config (and the --set overrides) before anything starts in the background.
    resolved=$("${entry_cmd[@]}" --config "$config" "${@:2}" --print-config </dev/null)
    check_wandb_credentials "$resolved"
    mkdir -p logs
    log=logs/train-$(date -u +%Y%m%dT%H%M%SZ).log
    # Several words after `--`: tmux runs the command directly, with no shell parsing it.
    tmux new-session -d -s "$session_name" -c "$PWD" -x 200 -y 50 -- bash scripts/run_train_remote.sh session "$log" "${cmd[@]}"
    say "started in tmux session $session_name on $(gpu_count) GPU(s): ${cmd[*]:1}"
    say "log: $PWD/$log (watch: just attach-train; stop: just kill-train)"
}

session() {  # session LOG COMMAND...: inside tmux, run the training command with the secrets loaded
    local log=$1 status
    shift
    load_env_file
    export PYTHONUNBUFFERED=1
    set +e
    { printf '%s: running' "$prog"; printf ' %q' "$@"; printf '\n'; "$@"; } 2>&1 | tee -a "$log"
    status=${PIPESTATUS[0]}
    set -e
    echo "$prog: training exited with status $status" | tee -a "$log"
    exit "$status"
}

attach() {
    session_running || die "no training session is running (its output is in $PWD/logs/)"
    exec tmux attach-session -t "=$session_name"
}

kill_session() {
    if ! session_running; then
        say "no training session is running"
        return 0
    fi
    # Everything the session started shares the pane's process session: tmux's hangup stops it,
    # and whatever ignores the hangup is killed after 15 s.
    local leader waited=0
    leader=$(tmux display-message -p -t "=$session_name:" '#{pane_pid}')
    tmux kill-session -t "=$session_name"
    while [ -n "$leader" ] && pgrep -s "$leader" >/dev/null; do
        if [ "$waited" -ge 15 ]; then
            pkill -KILL -s "$leader" || true
            break
        fi
        sleep 1
        waited=$((waited + 1))
    done
    say "stopped tmux session $session_name"
}

list_runs() {
    local run latest count exported
    shopt -s nullglob
    local runs=(runs/*/)
    [ ${#runs[@]} -gt 0 ] || echo "no runs in $PWD/runs"
    for run in ${runs[@]+"${runs[@]}"}; do
        run=${run%/}
        count=$(find "$run" -name '*.pt' -type f | wc -l | tr -d ' ')
        latest=$(find "$run" -name '*.pt' -type f | sort | tail -n 1)
        exported=$(find "$run" -name '*.safetensors' -type f | sort | tail -n 1)
        printf '%s  checkpoints: %s  latest: %s  export: %s\n' "$run" "$count" "${latest:-none}" "${exported:-none}"
    done
    if session_running; then
        echo "training session $session_name: running"
    else
        echo "training session $session_name: not running"
    fi
}

[ $# -gt 0 ] || die "usage: run_train_remote.sh start|print-command|attach|kill|list [ARGS]"
action=$1
shift
case $action in
    start) start "$@" ;;
    print-command)
        choose_command "${1:?usage: print-command CONFIG [ARG...]}" "${@:2}"
        printf '%q ' "${cmd[@]}"
        printf '\n' ;;
    session) session "$@" ;;
    attach) attach ;;
    kill) kill_session ;;
    list) list_runs ;;
    *) die "unknown action '$action'" ;;
esac
