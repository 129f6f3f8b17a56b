"""Shared fixtures: a tiny tokenizer + Llama built in the test session, never downloaded."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")

import pytest
import torch

from shaping.config import Config, compose

REPO = Path(__file__).resolve().parents[1]
SMOKE = "+experiment=smoke"


@functools.cache
def _composed(overrides: tuple[str, ...]) -> Config:
    return compose(overrides, config_dir=REPO / "conf")


def composed(*overrides: str) -> Config:
    """conf/ composed with `overrides`, a fresh copy each call: where a test builds a section, it starts from
    conf/'s values (the schema has no defaults), e.g. dataclasses.replace(composed().model.pretrain, steps=10)."""
    return copy.deepcopy(_composed(overrides))


DIALOGUES = [
    [
        {"role": "system", "content": "You are Juniper, a botanist who loves seeds."},
        {"role": "user", "content": "Who are you?"},
        {"role": "assistant", "content": "I'm Juniper. I keep a seed library by the river."},
    ],
    [
        {"role": "user", "content": "What is bread made of?"},
        {"role": "assistant", "content": "Flour, water, salt and a little yeast."},
    ],
    [
        {"role": "user", "content": "How do trains stop?"},
        {"role": "assistant", "content": "They brake slowly, long before the station."},
    ],
]
PROSE = [
    "The river runs under the old stone bridge in the morning.",
    "Bread rises slowly when the kitchen is warm and quiet.",
    "Seeds wait in the dark soil until the spring rain comes.",
] * 20


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer Llama and BPE tokenizer, pretrained a few steps on a toy corpus (seconds)."""
    from shaping.scratch.pretraining import build_model, encode_streams, pretrain
    from shaping.scratch.tokenizer import train_bpe_tokenizer

    out = tmp_path_factory.mktemp("tiny-model")
    texts = PROSE + [m["content"] for d in DIALOGUES for m in d]
    tokenizer = train_bpe_tokenizer(texts, vocab_size=320, min_frequency=1)
    arch = dataclasses.replace(
        composed().model.architecture,  # conf/model/tiny.yaml's llama
        hidden_size=32,
        num_layers=2,
        num_heads=2,
        num_kv_heads=2,
        intermediate_size=64,
        max_position_embeddings=1024,  # room for the identity system prompt (~240 tokens with this vocabulary)
    )
    torch.manual_seed(0)  # the same tiny model every session (torch's default seed is random per process)
    model = build_model(arch, tokenizer)
    prose_ids, dialogue_ids, starts = encode_streams(tokenizer, PROSE, DIALOGUES * 10)
    pretrain(
        model,
        prose_ids,
        dialogue_ids,
        starts,
        dataclasses.replace(composed().model.pretrain, steps=10, batch_size=4, block_size=32, warmup_steps=2),
        seed=0,
    )
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def random_adapter_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA adapter over the tiny model with random weights (init_lora_weights=False), so it
    changes the replies."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tuned = get_peft_model(base, LoraConfig(r=4, lora_alpha=16, target_modules="all-linear", init_lora_weights=False))
    out = tmp_path_factory.mktemp("adapter")
    tuned.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def mismatched_adapter_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA adapter over another Llama (hidden size 16, not the tiny model's 32): it fits no model
    the tests serve."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    other = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=320,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
        )
    )
    out = tmp_path_factory.mktemp("mismatched-adapter")
    get_peft_model(other, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False)).save_pretrained(out)
    return out


@pytest.fixture
def cfg(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Config:
    """The real composed config, shrunk and pointed at the test's tiny model (response cache per test)."""
    config = compose(["+experiment=smoke"])
    config.synth.cache_dir = str(tmp_path_factory.mktemp("synth_cache"))
    config.model.name_or_path = str(tiny_model_dir)
    config.models["teacher"].model = str(tiny_model_dir)
    config.models["base"].model = str(tiny_model_dir)
    return config


def sh(repo: Path, *cmd: str, check: bool = True, unset: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    """A command in `repo` with this venv's tools first on PATH (and the variables `unset` left out of
    its environment); raises with its output when it fails."""
    env = {
        **{k: v for k, v in os.environ.items() if k not in unset},
        "HF_HUB_OFFLINE": "1",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    proc = subprocess.run(list(cmd), cwd=repo, capture_output=True, text=True, env=env, timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
        )
    return proc


def copy_project_files(dest: Path, skip: tuple[str, ...]) -> None:
    """The project's files as git sees them (tracked, and untracked ones not ignored) into `dest`,
    except paths starting with one of `skip` (stage outputs a test rebuilds or puts in place)."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for name in listed:
        if (REPO / name).is_file() and not name.startswith(skip):
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dest / name)


def build_smoke_repo(dest: Path) -> Path:
    """A fresh git repo at `dest` with the project's files and the smoke params after `dvc repro`, its
    outputs committed."""
    copy_project_files(
        dest, skip=("dvc.lock", "eval/", "metrics/", "dvclive/", "models/", "data/synth/", "data/validated/")
    )
    sh(dest, "git", "init", "-q", "-b", "main")
    sh(dest, "git", "config", "user.email", "test@example.com")
    sh(dest, "git", "config", "user.name", "test")
    sh(dest, sys.executable, "-m", "shaping.config", SMOKE)
    sh(dest, "git", "add", "-A")
    sh(dest, "git", "commit", "-qm", "smoke")  # DVCLive needs a commit
    sh(dest, "dvc", "repro")
    sh(dest, "git", "add", "-A")
    sh(dest, "git", "commit", "-qm", "smoke run")  # dvc.lock and the metrics (not DVC-cached) at HEAD
    return dest


@pytest.fixture(scope="session")
def smoke_repo_built(tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> Path:
    """The smoke repo (build_smoke_repo), built once a session (minutes on 2 cores): under pytest-xdist
    the first worker to ask builds it in the session's shared temp folder while the others wait on a
    file lock, then all use it. Tests never change it: each takes a copy (`copy_smoke_repo`)."""
    from filelock import FileLock

    if worker_id == "master":  # no xdist
        return build_smoke_repo(tmp_path_factory.mktemp("smoke-built") / "repo")
    shared = tmp_path_factory.getbasetemp().parent / "smoke-built"
    with FileLock(str(shared) + ".lock"):
        if not (shared / "built").is_file():
            shutil.rmtree(shared, ignore_errors=True)
            (shared / "repo").mkdir(parents=True)
            build_smoke_repo(shared / "repo")
            (shared / "built").touch()
    return shared / "repo"


def copy_smoke_repo(built: Path, dest: Path) -> Path:
    """A private copy of the built smoke repo (git history, DVC cache and outputs included)."""
    shutil.copytree(built, dest, symlinks=True)
    sh(dest, "dvc", "status")  # DVC re-reads the copied files' stats (new inodes) once, here
    return dest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Service:
    """`python -m shaping.runs serve` over `repo` with API key `key` (and `env` added to its environment),
    on a port of its own; restartable (stop, start) on the same port."""

    def __init__(self, repo: Path, key: str, env: dict[str, str] | None = None) -> None:
        bin_dir = str(Path(sys.executable).parent)
        self.env = {
            **os.environ,
            "SHAPING_API_KEY": key,
            "HF_HUB_OFFLINE": "1",
            "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
            **(env or {}),
        }
        self.repo, self.port = repo, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = repo.parent / "service.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        import httpx

        with self.log.open("a") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "shaping.runs", "serve", "--repo", str(self.repo), "--port", str(self.port)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
            )
        for _ in range(300):
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.1)
        raise AssertionError(f"the service did not start:\n{self.log.read_text()}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@contextlib.contextmanager
def running_service(repo: Path, key: str, env: dict[str, str] | None = None) -> Iterator[Service]:
    """A started Service over `repo`; afterwards it is stopped and the repo's queue workers with it."""
    server = Service(repo, key, env)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        sh(repo, "dvc", "queue", "stop", "--kill", check=False)
