"""No network: a full tiny training run, its held-out eval and generation from the saved model make zero
connection attempts, with the HF offline/telemetry switches set by dpokit itself, not by the caller.

Each check runs a fresh interpreter (so every import happens under the trap) from a small runner script that
replaces socket.socket.connect / connect_ex, socket.create_connection, socket.getaddrinfo and
socket.gethostbyname *before* anything else is imported. Internet-family connects (AF_INET, AF_INET6) and name
lookups are recorded and refused with OSError; other families (AF_UNIX, used for local IPC) are recorded and
let through, and do not count as egress.
"""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from dpokit.offline import OFFLINE_ENVIRONMENT

CHECKED_ENV = ("HF_HUB_OFFLINE", "HF_HUB_DISABLE_TELEMETRY", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")
INTERNET = (int(socket.AF_INET), int(socket.AF_INET6))
LOOKUPS = ("getaddrinfo", "gethostbyname")

RUNNER = r'''
import json, os, socket, sys, tempfile
from pathlib import Path

report_path, mode = Path(sys.argv[1]), sys.argv[2]
KEYS = %(keys)r
report = {"env_before": {k: os.environ.get(k) for k in KEYS}, "attempts": []}
phase = "setup"
INTERNET = (socket.AF_INET, socket.AF_INET6)
real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex


def record(kind, family, target):
    report["attempts"].append({"phase": phase, "kind": kind, "family": None if family is None else int(family),
                               "target": repr(target)[:200]})


def connect(self, address):
    record("connect", self.family, address)
    if self.family in INTERNET:
        raise OSError("network disabled by test_no_egress")
    return real_connect(self, address)


def connect_ex(self, address):
    record("connect_ex", self.family, address)
    if self.family in INTERNET:
        raise OSError("network disabled by test_no_egress")
    return real_connect_ex(self, address)


def create_connection(address, *args, **kwargs):
    record("create_connection", socket.AF_INET, address)
    raise OSError("network disabled by test_no_egress")


def getaddrinfo(host, port, *args, **kwargs):
    record("getaddrinfo", None, (host, port))
    raise socket.gaierror(socket.EAI_NONAME, "name lookup disabled by test_no_egress")


def gethostbyname(host):
    record("gethostbyname", None, host)
    raise socket.gaierror(socket.EAI_NONAME, "name lookup disabled by test_no_egress")


socket.socket.connect, socket.socket.connect_ex = connect, connect_ex
socket.create_connection, socket.getaddrinfo, socket.gethostbyname = create_connection, getaddrinfo, gethostbyname


def save():
    report_path.write_text(json.dumps(report, indent=1))


def controls():
    """Prove the trap sees both kinds: an internet connect is caught, a unix-socket connect passes."""
    global phase
    phase = "control"
    try:
        socket.create_connection(("192.0.2.1", 443), timeout=1)  # TEST-NET-1, never routed
        report["control_internet_refused"] = False
    except OSError:
        report["control_internet_refused"] = True
    path = os.path.join(tempfile.mkdtemp(), "s")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.connect(path)
    report["control_unix_connected"] = True
    client.close()
    server.close()


if mode == "hub-without-dpokit":
    # What the trap sees when the HF client is used without dpokit's offline switches.
    phase = "hub"
    from huggingface_hub import HfApi
    try:
        HfApi().model_info("dpokit-tests/no-such-repo")
        report["hub_error"] = None
    except Exception as e:
        report["hub_error"] = type(e).__name__
    save()
    sys.exit(0)

if mode == "iterate":
    # A whole round of online/iterative DPO: sampling, a py: judge, pairing, training, held-out evaluation.
    model_dir, prompts, judge, output = sys.argv[3:7]
    phase = "dpokit"
    from dpokit.cli import main
    report["exit_code"] = main(["iterate", "--model", model_dir, "--prompts", prompts, "--judge", f"py:{judge}:longer",
                                "--output", output, "--rounds", "1", "--prompts-per-round", "4",
                                "--samples-per-prompt", "2", "--batch-size", "2", "--eval-prompts", "2",
                                "--eval-samples", "1", "--max-new-tokens", "8", "--max-length", "64",
                                "--max-prompt-length", "32", "--learning-rate", "1e-3", "--temperature", "1.0",
                                "--allow-truncated-chosen"])
    save()
    sys.exit(0)

model_dir, data, output = sys.argv[3:6]
phase = "dpokit"
from dpokit.cli import main

report["exit_code"] = main(["dpo", "--model", model_dir, "--data", data, "--output", output, "--max-steps", "3",
                            "--batch-size", "4", "--learning-rate", "1e-3", "--eval-fraction", "0.25",
                            "--max-length", "64", "--max-prompt-length", "32"])
report["env_after"] = {k: os.environ.get(k) for k in KEYS}

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

model = AutoModelForCausalLM.from_pretrained(Path(output) / "final")
tokenizer = AutoTokenizer.from_pretrained(Path(output) / "final")
ids = tokenizer.apply_chat_template([{"role": "user", "content": "What is 2 plus 3?"}], add_generation_prompt=True,
                                    return_tensors="pt", return_dict=True)["input_ids"]
with torch.no_grad():
    out = model.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=tokenizer.pad_token_id)
report["generated_tokens"] = int(out.shape[1] - ids.shape[1])
controls()
save()
'''


def egress(attempts: list[dict]) -> list[dict]:
    return [a for a in attempts if a["kind"] in LOOKUPS or a["family"] in INTERNET]


def run_runner(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, dict]:
    script = tmp_path / "runner.py"
    script.write_text(RUNNER % {"keys": CHECKED_ENV})
    report = tmp_path / "report.json"
    # The caller sets none of the offline/telemetry switches (conftest.py sets some for this process).
    env = {k: v for k, v in os.environ.items() if k not in CHECKED_ENV and k not in OFFLINE_ENVIRONMENT}
    env.update(OMP_NUM_THREADS="1", HF_HOME=str(tmp_path / "hf-home"))
    result = subprocess.run([sys.executable, str(script), str(report), *args], capture_output=True, text=True,
                            env=env, cwd=tmp_path, timeout=300)
    assert report.exists(), f"runner wrote no report (rc {result.returncode}):\n{result.stderr[-3000:]}"
    return result, json.loads(report.read_text())


@pytest.fixture()
def pairs_file(tmp_path) -> Path:
    rows = [{"prompt": f"What is {i} plus {i % 4 + 1}?", "chosen": f" It is {i + i % 4 + 1}.",
             "rejected": f" Maybe {3 * i}, no idea."} for i in range(16)]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_train_eval_generate_make_zero_connection_attempts(tiny_model_dir, pairs_file, tmp_path):
    output = tmp_path / "run"
    result, report = run_runner(tmp_path, "dpokit", str(tiny_model_dir), str(pairs_file), str(output))
    assert result.returncode == 0, result.stderr[-3000:]
    assert report["exit_code"] == 0

    # The work really happened: 3 steps, held-out eval at start and end, 4 generated tokens.
    metrics = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [0, 1, 2, 3]
    assert "eval/loss" in metrics[0] and "eval/loss" in metrics[-1]
    assert report["generated_tokens"] == 4

    during_run = [a for a in report["attempts"] if a["phase"] == "dpokit"]
    print(f"\nsocket attempts during train/eval/generate: {len(during_run)} "
          f"({len(egress(during_run))} to the network): {during_run}")
    assert egress(during_run) == []

    # dpokit set the switches itself: absent when the process started, "1" after the run.
    assert report["env_before"] == {k: None for k in CHECKED_ENV}
    assert report["env_after"] == {k: "1" for k in CHECKED_ENV}

    # The trap works: an internet connect is recorded and refused; a unix-socket connect is recorded, passes,
    # and is not counted as egress.
    controls = [a for a in report["attempts"] if a["phase"] == "control"]
    assert report["control_internet_refused"] is True
    assert [a["kind"] for a in egress(controls)] == ["create_connection"]
    assert report["control_unix_connected"] is True
    unix = [a for a in controls if a["family"] == int(socket.AF_UNIX)]
    assert len(unix) == 1 and unix[0] not in egress(controls)


def test_trap_catches_the_hub_client_when_dpokit_is_not_there(tmp_path):
    """Without dpokit's switches the HF client reaches for huggingface.co, and the trap records and refuses
    it; so the zero above means something."""
    result, report = run_runner(tmp_path, "hub-without-dpokit")
    assert result.returncode == 0, result.stderr[-3000:]
    assert report["env_before"] == {k: None for k in CHECKED_ENV}
    assert report["hub_error"] is not None  # refused, so the call failed
    hub = egress(report["attempts"])
    assert hub and all("huggingface.co" in a["target"] for a in hub), report


def test_a_whole_iterate_round_makes_zero_connection_attempts(tiny_model_dir, tmp_path):
    """Sampling, judging (a py: judge), pairing, training and the held-out evaluation of `dpokit iterate`."""
    prompts, judge, output = tmp_path / "prompts.txt", tmp_path / "judge.py", tmp_path / "iterate"
    prompts.write_text("".join(f"Tell me about the number {i}.\n" for i in range(10)))
    judge.write_text("def longer(prompts, responses):\n    return [float(len(r)) for r in responses]\n")
    result, report = run_runner(tmp_path, "iterate", str(tiny_model_dir), str(prompts), str(judge), str(output))
    assert result.returncode == 0 and report["exit_code"] == 0, result.stderr[-3000:]
    rounds = [json.loads(line) for line in (output / "rounds.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds] == [0, 1] and (output / "round-1" / "train" / "final").is_dir()
    assert egress([a for a in report["attempts"] if a["phase"] == "dpokit"]) == []
