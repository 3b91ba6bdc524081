"""Checks before any work, and how failures end: prompts against the model, the output directory and its
lock, one `error:` line per failure."""

import json
import os
import socket
import subprocess
import sys

import pytest

from ipg.driver.cli import main
from ipg.errors import InputError

pytestmark = pytest.mark.unit

LONG = "What is 1 + 2?" * 1430  # 20,020 characters: far beyond the organism's 256-token context


def test_prompts_beyond_the_context_or_with_dropped_characters_are_refused_before_sampling(organism, monkeypatch):
    from ipg import attribution, rollouts
    from ipg.attribution import attribute
    from ipg.prompts import format_examples

    model, tok = organism
    calls = []
    monkeypatch.setattr(rollouts, "generate", lambda *a, **k: calls.append(1))  # nothing may be sampled
    monkeypatch.setattr(attribution, "sample_rollouts", lambda *a, **k: calls.append(1))
    for prompt, message in (
        (
            LONG,
            r"example 'long': its prompt is \d+ tokens, and with max_new_tokens 64 that is beyond "
            r"the model's context of 256 tokens; shorten the prompt or lower max_new_tokens",
        ),
        (
            "What is 1 + 2? 😀 一二",
            r"example 'long': this model's tokenizer drops characters of its "
            r"prompt \(一二😀\)",
        ),
    ):
        with pytest.raises(InputError, match=message):
            attribute(model, tok, [{"id": "long", "prompt": prompt, "answer": "3"}], layers=[1], max_new_tokens=64)
    assert not calls
    # on_error skip: left out and recorded, the others kept
    skipped = {}
    kept = format_examples(
        tok,
        [{"id": "a", "prompt": "What is 1 + 2?"}, {"id": "b", "prompt": LONG}, {"id": "c", "prompt": "7 😀"}],
        context=256,
        max_new_tokens=64,
        on_error="skip",
        skipped=skipped,
    )
    assert (
        [ex["id"] for ex in kept] == ["a"]
        and sorted(skipped) == ["b", "c"]
        and "beyond the model's context" in skipped["b"]
    )
    with pytest.raises(InputError, match="every example was refused"):
        format_examples(tok, [{"id": "b", "prompt": LONG}], context=256, on_error="skip", skipped={})
    # a prompt that fits: no refusal at the edge
    ids = format_examples(tok, [{"id": "a", "prompt": "What is 1 + 2?"}])[0]["prompt_ids"]
    assert format_examples(tok, [{"id": "a", "prompt": "What is 1 + 2?"}], context=len(ids) + 5, max_new_tokens=5)


def test_the_real_models_tokenizer_loses_nothing_on_ordinary_text():
    """No false alarms: byte-level BPE (SmolLM2's kind) round-trips any text, emoji and CJK included."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from ipg.prompts import dropped_characters

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    tok.train_from_iterator(
        ["What is 12 + 30?"], trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    )
    fast = PreTrainedTokenizerFast(tokenizer_object=tok)
    for text in ("What is 12 + 30?  Think step by step.\n", "Ünïcödé, 😀 and 一二三: ½ ≤ x²"):
        assert dropped_characters(fast, text) == ""


def test_out_is_checked_and_locked_before_any_work(tmp_path, capsys):
    from ipg.driver.run_dir import LOCK, claim

    a_file = tmp_path / "f"
    a_file.write_text("x")
    assert main(["attribute", "--layers", "1", "--limit", "2", "--out", str(a_file)]) == 2
    assert "error: --out: '%s' is a file; give a directory" % a_file in capsys.readouterr().err
    out = tmp_path / "run"
    with claim(out, "test"):
        held = json.loads((out / LOCK).read_text())
        assert held["pid"] == os.getpid() and held["host"] == socket.gethostname()
        # a second run on the directory is refused at once, and writes nothing
        assert main(["attribute", "--layers", "1", "--limit", "2", "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert f"error: --out: '{out}' is held by another run (test, pid {os.getpid()}" in err
        assert sorted(p.name for p in out.iterdir()) == [LOCK]
    assert not (out / LOCK).exists()
    # a stale lock (its process is gone) is taken over
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (out / LOCK).write_text(json.dumps({"pid": int(dead.stdout), "host": socket.gethostname(), "command": "old"}))
    with claim(out, "test"):
        assert json.loads((out / LOCK).read_text())["pid"] == os.getpid()
    # a lock from another host cannot be checked: refused, saying how to remove it
    (out / LOCK).write_text(json.dumps({"pid": 1, "host": "elsewhere", "command": "ipg run"}))
    with pytest.raises(
        InputError, match=rf"held by another run \(ipg run, pid 1 on host elsewhere.*remove {out / LOCK}"
    ):
        claim(out, "test")


def test_a_directory_holding_another_run_is_refused_unless_resumed_or_overwritten(tmp_path, capsys):
    from ipg.driver.run_dir import claim

    out = tmp_path / "run"
    assert (
        main(
            [
                "attribute",
                "--layers",
                "1",
                "--limit",
                "2",
                "--attribution.n_samples=2",
                "--attribution.q=2",
                "--attribution.max_new_tokens=16",
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    capsys.readouterr()
    first = (out / "scores.parquet").read_bytes()
    assert main(["attribute", "--layers", "2", "--limit", "2", "--out", str(out)]) == 2
    assert (
        f"error: --out: '{out}' holds another run (config.yaml); continue it with --resume {out}, replace it with "
        "--overwrite" in capsys.readouterr().err
    )
    assert (out / "scores.parquet").read_bytes() == first  # untouched
    with claim(out, "test", resume=True):
        pass
    with claim(out, "test", overwrite=True):
        assert sorted(p.name for p in out.iterdir()) == [".ipg.lock"]  # the previous run removed
    results = tmp_path / "other"
    results.mkdir()
    (results / "scores.parquet").write_text("not ours to remove")
    with pytest.raises(
        InputError, match="--overwrite: .* holds results but no config.yaml of a run, so it is not removed"
    ):
        claim(results, "test", overwrite=True)


def test_every_failure_ends_in_one_error_line(tmp_path, capsys, monkeypatch):
    from ipg.driver import attribute_command

    def boom(*a, **k):
        raise RuntimeError("disk on fire\nsecond line of detail")

    monkeypatch.setattr(attribute_command, "_attribute", boom)
    out = tmp_path / "run"
    assert main(["attribute", "--layers", "1", "--limit", "2", "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: RuntimeError: disk on fire (details in ") and "--debug" in err[0]
    log = out / "error.log"
    assert "second line of detail" in log.read_text() and "Traceback" in log.read_text()
    assert main(["--debug", "attribute", "--layers", "1", "--limit", "2", "--out", str(out)]) == 1
    assert "Traceback" in capsys.readouterr().err


def test_a_cluster_that_does_not_answer_fails_at_once_and_writes_nothing(tmp_path, capsys):
    import socket as sockets

    with sockets.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "run"
    assert (
        main(["attribute", "--layers", "1", "--limit", "2", "--address", f"127.0.0.1:{port}", "--out", str(out)]) == 2
    )
    assert f"error: ray.address: nothing answers at '127.0.0.1:{port}' within 10 s" in capsys.readouterr().err
    assert not out.exists()


def test_atomic_writes_leave_the_process_umask_alone(tmp_path, monkeypatch):
    """Reading the umask means setting it, for every thread of the process: atomic writes never do; the file
    gets the mode the umask gives any new file."""
    import stat

    from ipg.files import atomic_write_text

    umask = os.umask(0o022)
    os.umask(umask)

    def forbidden(*a):
        raise AssertionError("os.umask called")

    monkeypatch.setattr(os, "umask", forbidden)
    path = atomic_write_text(tmp_path / "x.txt", "hello")
    assert path.read_text() == "hello" and stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
