# Train on a rented GPU host over SSH. Set PRIME_HOST=user@host[:port]; optional: REMOTE_ROOT
# (checkout on the host, default ~/diffusionlm), SSH_KEY, SSH_CONFIG, SSH_WAIT_S, REPO_URL,
# REPO_REF, DATA_FROM, ENV_FILE, FETCH_DIR (see scripts/remote.sh). Run `uv run just --list`.

set positional-arguments := true
set no-exit-message := true

remote := quote(justfile_directory() / "scripts" / "remote.sh")

# List the recipes
default:
    @{{ quote(just_executable()) }} --justfile {{ quote(justfile()) }} --list

# Install uv/git/tmux if missing, clone or update the repo at REPO_REF, make data/ runs/ env/
bootstrap-remote:
    @{{ remote }} bootstrap

# Install the locked Python environment on the host (uv sync --frozen)
build-remote:
    @{{ remote }} build

# Put the GPT-2 tokenizer files in the host's data/ (DATA_FROM=DIR: copy from a host folder)
data-remote:
    @{{ remote }} data

# Copy env/wandb.env (W&B key and other secrets; mode 600) to the host, mode 600
sync-env:
    @{{ remote }} sync-env

# Start training in tmux on the host; extra: more CLI args, e.g. "--set training.compile=true"
train config="config/resources/train_tinystories.toml" extra="":
    @{{ remote }} train "$1" "$2"

# Bootstrap, build, fetch data, sync secrets (if env/wandb.env exists) and start training
auto-train config="config/resources/train_tinystories.toml" extra="":
    @{{ remote }} auto-train "$1" "$2"

# Run diffusionlm-<command> on the host in the foreground (infer, eval, bench-infer, ...)
infer command="infer" args="":
    @{{ remote }} infer "$1" "$2"

# Watch the host's GPUs (nvitop, fetched by uvx on the host)
nvitop:
    @{{ remote }} nvitop

# Attach to the training session (detach again with Ctrl-b d)
attach-train:
    @{{ remote }} attach

# Stop the training session and everything it started
kill-train:
    @{{ remote }} kill

# Copy a file or folder under REMOTE_ROOT (e.g. runs/NAME/export) to the same path here
fetch any_file:
    @{{ remote }} fetch "$1"

# List the host's runs (newest checkpoint, export) and whether training is running
list-runs:
    @{{ remote }} list-runs
