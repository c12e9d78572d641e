"""Remote orchestration (Justfile + scripts/) end to end against a real OpenSSH server.

The "GPU host" is this machine: Debian's sshd listens on a free 127.0.0.1 port with a throwaway
host key, user key and config in a temp dir, and starts only once the control plane has been
refused, so the control plane has to wait for it. The host clones a local clone of this
repository at its HEAD commit (so it runs committed code), and its `uv sync` works offline from
the local uv cache: the test's sshd hands UV_OFFLINE=1, this process's PATH and UV_* settings to
its sessions (sshd_config SetEnv); a real host needs none of that. tmux on the host uses a private socket folder (TMUX_TMPDIR).
Skips, saying why, where sshd, tmux, git or just is missing or sshd cannot run here.
"""

from __future__ import annotations

import getpass
import os
import re
import secrets
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import REPO_ROOT, SHARED_DATA
from test_train_fixtures import write_tiny_toml

from ddp.launch import free_port

SCRIPTS = REPO_ROOT / "scripts"
JUST = Path(sys.executable).parent / "just"
SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
JUST_TIMEOUT_S = 240
TINY_RUN = "tiny-remote"
# Talks to itself over 127.0.0.1: skips, saying why, where loopback is down.
pytestmark = pytest.mark.usefixtures("loopback")


def just_command(*args: str) -> list[str]:
    return [str(JUST), "--justfile", str(REPO_ROOT / "Justfile"), *args]


def run_just(env: dict[str, str], *args: str, timeout: float = JUST_TIMEOUT_S) -> subprocess.CompletedProcess:
    return subprocess.run(just_command(*args), env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=timeout)


def error_lines(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.strip()]


def skip_unless_tools(*tools: str) -> None:
    if not JUST.exists():
        pytest.skip("just is not installed in the environment (rust-just is a dev dependency: uv sync)")
    for tool in tools:
        if not (shutil.which(tool) or Path(tool).exists()):
            pytest.skip(f"{tool} is not installed (.ci/run installs openssh-server, tmux and git with apt-get)")


@dataclass
class Host:
    """The sshd "GPU host", the local side's settings for reaching it, and what both sides printed."""

    tmp: Path
    env: dict[str, str]
    root: Path
    tmux_dir: Path
    tiny_toml: Path
    sshd_log: Path
    sshd: subprocess.Popen | None = None
    auto_train: subprocess.CompletedProcess | None = None
    outputs: list[str] = field(default_factory=list)

    def just(self, *args: str, **kwargs) -> subprocess.CompletedProcess:
        result = run_just(self.env, *args, **kwargs)
        self.outputs += [result.stdout, result.stderr]
        return result

    def tmux(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["tmux", *args], env={**os.environ, "TMUX_TMPDIR": str(self.tmux_dir)},
                              capture_output=True, text=True, timeout=30)

    def logs(self) -> str:
        return "".join(path.read_text() for path in sorted((self.root / "logs").glob("train-*.log")))

    @staticmethod
    def wait_for_log(started: subprocess.CompletedProcess, pattern: str, timeout: float = 180) -> str:
        """The log of the session that `started` (a train or auto-train run) reported, once it matches."""
        log = Path(re.search(r"log: (\S+)", started.stderr).group(1))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if log.exists() and re.search(pattern, text := log.read_text()):  # tee creates it in the session
                return text
            time.sleep(0.5)
        raise AssertionError(f"no {pattern!r} in {log} after {timeout}s")


def write_sshd_config(tmp: Path, port: int, tmux_dir: Path) -> Path:
    for name in ("host_key", "user_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp / name)], check=True)
    shutil.copy(tmp / "user_key.pub", tmp / "authorized_keys")
    session_env = {"UV_OFFLINE": "1", "PATH": os.environ["PATH"], "TMUX_TMPDIR": str(tmux_dir)}
    session_env |= {key: value for key, value in os.environ.items() if key.startswith("UV_") and key != "UV_OFFLINE"}
    set_env = " ".join(f'"{key}={value}"' for key, value in session_env.items())
    config = tmp / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {tmp / 'host_key'}\n"
        f"AuthorizedKeysFile {tmp / 'authorized_keys'}\nPidFile {tmp / 'sshd.pid'}\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\n"
        "PermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\n"
        f"SetEnv {set_env}\n")
    return config


def auto_train_against_late_sshd(host: Host, sshd_config: Path, *args: str) -> subprocess.CompletedProcess:
    """`just auto-train ARGS`, with sshd started only once the control plane has been refused."""
    out, err = host.tmp / "auto-train.out", host.tmp / "auto-train.err"
    command = just_command("auto-train", *args)
    with open(out, "w") as stdout, open(err, "w") as stderr:
        control = subprocess.Popen(command, env=host.env, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr)
    try:
        deadline = time.monotonic() + 60
        while "waiting for" not in err.read_text() and control.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        with open(host.sshd_log, "w") as log:
            host.sshd = subprocess.Popen([SSHD, "-D", "-e", "-f", str(sshd_config)], stdout=log, stderr=log,
                                         stdin=subprocess.DEVNULL)
        control.wait(timeout=JUST_TIMEOUT_S)
    finally:
        if control.poll() is None:
            control.kill()
            control.wait()
    result = subprocess.CompletedProcess(command, control.returncode, out.read_text(), err.read_text())
    host.outputs += [result.stdout, result.stderr]
    return result


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    """A bootstrapped host with one tiny run started by `just auto-train` against a late sshd."""
    skip_unless_tools(SSHD, "ssh", "ssh-keygen", "tmux", "git")
    if not (REPO_ROOT / ".git").exists():
        pytest.skip("the checkout is not a git repository, so the host has nothing to clone")
    tmp = tmp_path_factory.mktemp("remote")
    tmux_dir = Path(tempfile.mkdtemp(prefix="dlm-tmux-"))  # short: tmux sockets have a path length limit
    port = free_port()
    config = write_sshd_config(tmp, port, tmux_dir)
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation folder
    check = subprocess.run([SSHD, "-t", "-f", str(config)], capture_output=True, text=True)
    if check.returncode != 0:
        pytest.skip(f"sshd cannot run here: {check.stderr.strip()}")

    src = tmp / "src"
    subprocess.run(["git", "clone", "--quiet", str(REPO_ROOT), str(src)], check=True)
    head = subprocess.check_output(["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], text=True).strip()
    subprocess.run(["git", "-C", str(src), "branch", "--force", "remote-test", head], check=True)  # even if detached
    (tmp / "ssh_config").write_text(f"UserKnownHostsFile {tmp / 'known_hosts'}\n")
    env = {**os.environ,
           "PRIME_HOST": f"{getpass.getuser()}@127.0.0.1:{port}", "REMOTE_ROOT": str(tmp / "host" / "diffusionlm"),
           "SSH_KEY": str(tmp / "user_key"), "SSH_CONFIG": str(tmp / "ssh_config"), "SSH_WAIT_S": "60",
           "REPO_URL": str(src), "REPO_REF": head, "DATA_FROM": str(SHARED_DATA) if SHARED_DATA.is_dir() else "none",
           "ENV_FILE": str(tmp / "local" / "wandb.env"), "FETCH_DIR": str(tmp / "fetched")}
    (tmp / "local").mkdir()
    host = Host(tmp=tmp, env=env, root=tmp / "host" / "diffusionlm", tmux_dir=tmux_dir,
                tiny_toml=write_tiny_toml(tmp / "tiny.toml", Path("runs"), training={
                    "max_train_iteration": 4, "ckpting_save_iter": 2, "skip_validation": True}), sshd_log=tmp / "sshd.log")
    try:
        host.auto_train = auto_train_against_late_sshd(host, config, str(host.tiny_toml),
                                                       f"--set logging.run_name={TINY_RUN}")
        if host.auto_train.returncode != 0 and host.sshd.poll() is not None:
            pytest.skip(f"sshd exited with status {host.sshd.returncode}: {host.sshd_log.read_text().strip()}")
        yield host
    finally:
        host.tmux("kill-server")  # only the private server in tmux_dir
        if host.sshd is not None:
            host.sshd.terminate()
            host.sshd.wait(timeout=30)
        shutil.rmtree(tmux_dir, ignore_errors=True)


@pytest.mark.slow
def test_auto_train_waits_for_a_late_sshd_bootstraps_and_trains_in_tmux(host):
    result = host.auto_train
    assert result.returncode == 0, result.stdout + result.stderr
    assert "waiting for" in result.stderr and "answer over SSH" in result.stderr
    assert (host.root / ".git").is_dir() and (host.root / ".venv" / "bin" / "diffusionlm-train").exists()
    assert all((host.root / name).is_dir() for name in ("data", "runs", "env"))
    if host.env["DATA_FROM"] != "none":
        assert (host.root / "data" / "gpt2_vocab.json").exists()
    assert "started in tmux session diffusionlm-train" in result.stderr
    logs = host.wait_for_log(result, r"training exited with status \d+")
    assert "training exited with status 0" in logs
    assert "diffusionlm-train --config" in logs and "diffusionlm-train-ddp" not in logs  # no GPUs here
    assert (host.root / "runs" / TINY_RUN / "export" / "model.safetensors").exists()


@pytest.mark.slow
def test_bootstrap_again_is_idempotent(host):
    head = (host.root / ".git" / "HEAD").read_text()
    result = host.just("bootstrap-remote")
    assert result.returncode == 0, result.stderr
    assert "updating" in result.stderr and "ready:" in result.stderr
    assert (host.root / ".git" / "HEAD").read_text() == head


@pytest.mark.slow
def test_list_runs_shows_the_run_and_fetch_brings_back_its_checkpoint(host):
    host.wait_for_log(host.auto_train, r"training exited with status \d+")
    listing = host.just("list-runs")
    assert listing.returncode == 0, listing.stderr
    line = next(line for line in listing.stdout.splitlines() if line.startswith(f"runs/{TINY_RUN} "))
    latest = re.search(r"latest: (\S+\.pt)", line).group(1)
    assert "training session diffusionlm-train: not running" in listing.stdout
    attach = host.just("attach-train")
    assert attach.returncode == 2 and len(error_lines(attach)) == 1 and "no training session" in attach.stderr

    fetched = host.just("fetch", latest)
    assert fetched.returncode == 0, fetched.stderr
    local = Path(host.env["FETCH_DIR"]) / latest
    assert local.read_bytes() == (host.root / latest).read_bytes()
    folder = host.just("fetch", f"runs/{TINY_RUN}/export")
    assert folder.returncode == 0, folder.stderr
    assert (Path(host.env["FETCH_DIR"]) / "runs" / TINY_RUN / "export" / "model.safetensors").exists()
    missing = host.just("fetch", "runs/no-such-run")
    assert missing.returncode == 2 and error_lines(missing) == [
        f"remote: error: {host.root}/runs/no-such-run: not found on the host"]


@pytest.mark.slow
def test_infer_runs_on_the_host_with_quoted_arguments(host):
    host.wait_for_log(host.auto_train, r"training exited with status \d+")
    result = host.just("infer", "infer", f"--checkpoint runs/{TINY_RUN} --prompt 'Once upon a time'"
                       " --set inference.total_length=24 --set inference.steps=4 --set inference.block_length=8")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Once upon a time")


@pytest.mark.slow
def test_wandb_backend_without_credentials_is_a_one_line_error(host):
    env_file = Path(host.env["ENV_FILE"])
    env_file.write_text("# no key yet\nWANDB_API_KEY=\n")
    env_file.chmod(0o600)
    assert host.just("sync-env").returncode == 0
    result = host.just("train", str(host.tiny_toml), "--set logging.backend=wandb")
    assert result.returncode == 2
    assert len(error_lines(result)) == 1 and "no W&B credentials" in result.stderr, result.stderr
    assert host.tmux("has-session", "-t", "=diffusionlm-train").returncode != 0  # nothing started


def training_processes(run_name: str) -> dict[int, str]:
    table = subprocess.run(["ps", "-eww", "-o", "pid=,args="], capture_output=True, text=True, check=True).stdout
    return {int(pid): args for pid, args in (line.strip().split(" ", 1) for line in table.splitlines() if line.strip())
            if run_name in args and "diffusionlm-train" in args and not args.startswith("tmux")}  # not tmux's server


@pytest.mark.slow
def test_kill_train_stops_the_session_and_the_wandb_key_never_shows(host):
    key = secrets.token_hex(20)
    env_file = Path(host.env["ENV_FILE"])
    env_file.write_text(f'WANDB_API_KEY="{key}"\nWANDB_MODE=offline\n')
    env_file.chmod(0o600)
    synced = host.just("sync-env")
    assert synced.returncode == 0, synced.stderr
    assert stat.S_IMODE((host.root / "env" / "wandb.env").stat().st_mode) == 0o600

    run = "long-remote"
    started = host.just("train", str(host.tiny_toml), f"--set logging.run_name={run} --set logging.backend=wandb"
                        " --set training.max_train_iteration=1000000 --set training.ckpting_save_iter=1000000")
    assert started.returncode == 0, started.stderr
    host.wait_for_log(started, r"wandb: Run data is saved locally")  # wandb.init has run with the key set
    ps_snapshots = []
    for _ in range(3):
        ps_snapshots.append(subprocess.run(["ps", "-eww", "-o", "pid,args"], capture_output=True, text=True).stdout)
        time.sleep(0.5)
    processes = training_processes(run)
    assert processes, ps_snapshots[-1]
    environments = [Path(f"/proc/{pid}/environ").read_bytes() for pid in processes if Path(f"/proc/{pid}").exists()]
    assert any(f"WANDB_API_KEY={key}".encode() in env for env in environments)  # delivered, by environment only
    pane = host.tmux("capture-pane", "-p", "-S", "-", "-t", "=diffusionlm-train:").stdout
    assert "wandb: Run data is saved locally" in pane

    listing = host.just("list-runs")
    assert "training session diffusionlm-train: running" in listing.stdout
    second = host.just("train", str(host.tiny_toml))
    assert second.returncode == 2 and len(error_lines(second)) == 1 and "already running" in second.stderr
    killed = host.just("kill-train")
    assert killed.returncode == 0, killed.stderr
    assert host.tmux("has-session", "-t", "=diffusionlm-train").returncode != 0
    deadline = time.monotonic() + 30
    while training_processes(run) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not training_processes(run)
    assert "not running" in host.just("list-runs").stdout

    captured = [*ps_snapshots, pane, host.logs(), host.sshd_log.read_text(), *host.outputs]
    assert all(key not in text for text in captured)
    assert all(key not in path.read_text(errors="replace") for path in (host.root / "runs" / run).rglob("*.log"))


def local_env(tmp_path: Path, **settings: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in ("PRIME_HOST", "SSH_CONFIG", "SSH_KEY")}
    return {**env, "REMOTE_ROOT": str(tmp_path / "root"), **settings}


def test_unset_prime_host_is_a_one_line_error(tmp_path):
    skip_unless_tools()
    result = run_just(local_env(tmp_path), "list-runs", timeout=30)
    assert result.returncode == 2
    assert error_lines(result) == ["remote: error: PRIME_HOST is not set; export PRIME_HOST=user@host[:port] of the GPU host"]


def test_unreachable_host_is_a_one_line_error_after_bounded_retries(tmp_path):
    skip_unless_tools("ssh")
    (tmp_path / "ssh_config").write_text(f"UserKnownHostsFile {tmp_path / 'known_hosts'}\n")
    port = free_port()  # nothing listens there
    result = run_just(local_env(tmp_path, PRIME_HOST=f"127.0.0.1:{port}", SSH_WAIT_S="2",
                                SSH_CONFIG=str(tmp_path / "ssh_config")), "list-runs", timeout=60)
    assert result.returncode == 1
    lines = error_lines(result)
    assert lines[-1].startswith(f"remote: error: host 127.0.0.1:{port} did not answer over SSH within 2s")
    assert all("waiting for" in line for line in lines[:-1]) and len(lines) >= 2


def test_sync_env_refuses_a_secrets_file_others_can_read(tmp_path):
    skip_unless_tools()
    env_file = tmp_path / "wandb.env"
    env_file.write_text("WANDB_API_KEY=x\n")
    env_file.chmod(0o644)
    result = run_just(local_env(tmp_path, PRIME_HOST="127.0.0.1:9", ENV_FILE=str(env_file)), "sync-env", timeout=30)
    assert result.returncode == 2
    assert error_lines(result) == [f"remote: error: {env_file} is readable by other users; run: chmod 600 {env_file}"]


@pytest.mark.parametrize("path", ["../secrets", "/etc/passwd", "runs/../../x"])
def test_fetch_refuses_paths_outside_the_remote_root(tmp_path, path):
    skip_unless_tools()
    result = run_just(local_env(tmp_path, PRIME_HOST="127.0.0.1:9"), "fetch", path, timeout=30)
    assert result.returncode == 2 and len(error_lines(result)) == 1 and "must be relative" in result.stderr


@pytest.mark.parametrize(("gpus", "has_ddp", "expected"), [
    (2, True, "torchrun --standalone --nproc-per-node 2 .venv/bin/diffusionlm-train-ddp --config c.toml --set a=b"),
    (2, False, "run --frozen diffusionlm-train --config c.toml --set a=b"),
    (1, True, "run --frozen diffusionlm-train --config c.toml --set a=b"),
    (0, True, "run --frozen diffusionlm-train --config c.toml --set a=b"),
])
def test_multi_gpu_hosts_train_with_the_ddp_entry_point_when_it_exists(tmp_path, gpus, has_ddp, expected):
    """The GPU count comes from nvidia-smi: a stand-in prints `gpus` index lines, as the real one does."""
    checkout = tmp_path / "checkout"
    (checkout / "scripts").mkdir(parents=True)
    shutil.copy(SCRIPTS / "run_train_remote.sh", checkout / "scripts")
    (checkout / ".venv" / "bin").mkdir(parents=True)
    if has_ddp:
        ddp = checkout / ".venv" / "bin" / "diffusionlm-train-ddp"
        ddp.write_text("#!/bin/sh\n")
        ddp.chmod(0o755)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    if gpus:
        smi = bin_dir / "nvidia-smi"
        smi.write_text("#!/bin/sh\n" + "".join(f"echo {index}\n" for index in range(gpus)))
        smi.chmod(0o755)
    path = os.pathsep.join([str(bin_dir), *(p for p in os.environ["PATH"].split(os.pathsep)
                                            if not (Path(p) / "nvidia-smi").exists())])
    result = subprocess.run(["bash", str(checkout / "scripts" / "run_train_remote.sh"), "print-command", "c.toml",
                             "--set", "a=b"], env={**os.environ, "PATH": path}, capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith(expected)


def test_scripts_are_shellcheck_clean():
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (.ci/run installs it with apt-get)")
    result = subprocess.run(["shellcheck", *sorted(map(str, SCRIPTS.glob("*.sh")))], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
