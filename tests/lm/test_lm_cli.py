"""`testtime lm eval` end to end: a tiny model, a small memory, a prompts file, resume."""

from __future__ import annotations

import json
import math

import pytest
import torch
from test_ttft import CONTINUATION, MEMORY, LetterEmbedder
from typer.testing import CliRunner

from testtime.cli import app
from testtime.lm.bpb import continuation_bits
from testtime.lm.memory import Corpus, build_index
from testtime.models import load_model


def invoke(*args: str):
    return CliRunner().invoke(app, list(args), catch_exceptions=False, env={"COLUMNS": "200"})


def table_row(output: str, domain: str) -> list[str]:
    """The cells after the domain in the bits-per-byte table's row for `domain`: prompts, bits/byte, ..."""
    line = next(ln for ln in output.splitlines() if ln.startswith(f"│ {domain} "))
    return [c.strip() for c in line.strip().strip("│").split("│")][1:]


def bpb_of(run_dir) -> float:
    """Total bits over total bytes of a run directory's result files."""
    results = [json.loads(p.read_text()) for p in (run_dir / "results").iterdir()]
    return sum(r["bits"] for r in results) / sum(r["bytes"] for r in results)


def by_hand(loaded, prompt: str, continuation: str) -> float:
    """-sum log2 p(continuation token | everything before it), straight from the model's logits."""
    p_ids = loaded.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    c_ids = loaded.tokenizer(continuation, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = loaded.model(torch.tensor([p_ids + c_ids])).logits[0].float()
    logp = torch.log_softmax(logits, dim=-1)
    return -sum(logp[len(p_ids) - 1 + i, c].item() for i, c in enumerate(c_ids)) / math.log(2)


def test_eval_scores_every_prompt_by_domain_and_resumes(tmp_path, tokenizer, tiny_model_dir, monkeypatch):
    import testtime.lm.embed as embed

    monkeypatch.setattr(embed, "load_embedder", lambda *a, **k: LetterEmbedder())
    memory_file = tmp_path / "memory.jsonl"
    memory_file.write_text("\n".join(json.dumps({"text": t, "domain": "prose"}) for t in MEMORY))
    build_index(Corpus([memory_file]), tmp_path / "index", LetterEmbedder(), tokenizer, chunk_tokens=32)
    prompts = tmp_path / "prompts.jsonl"
    rows = [{"id": "a", "domain": "prose", "prompt": "the quick brown fox", "continuation": CONTINUATION},
            {"id": "b", "domain": "noise", "prompt": "zzz", "continuation": " yyy xxx"}]
    prompts.write_text("\n".join(json.dumps(r) for r in rows) + "\n{broken\n")
    args = ["lm", "eval", "--prompts", str(prompts), "--index", str(tmp_path / "index"), "--model",
            str(tiny_model_dir), "--select", "sift", "--steps", "2", "--k", "5", "--out", str(tmp_path / "run")]
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    flat = " ".join(result.output.split())
    assert "skipped bad prompt line" in flat and "prompts.jsonl:3" in flat
    assert "2 scored, 0 failed, 1 bad lines" in flat
    for domain in ("prose", "noise", "all"):
        assert f"│ {domain} " in result.output
    run_dir = tmp_path / "run" / "sift"  # each selector has its own run directory inside --out
    assert sorted(p.name for p in (run_dir / "results").iterdir()) == ["a.json", "b.json"]
    config = json.loads((run_dir / "config.json").read_text())
    assert config["command"] == "lm eval" and config["settings"]["config.ttft.select"] == "sift"
    assert config["settings"]["config.ttft.n"] == 2 and config["options"]["steps"] == 2
    saved = json.loads((run_dir / "results" / "a.json").read_text())
    assert saved["status"] == "ok" and saved["prompt_id"] == "a"
    assert saved["steps"] == 2 and len(saved["picks"]) == 2 and saved["bpb"] > 0

    again = invoke(*args)
    assert again.exit_code == 0 and json.loads((run_dir / "results" / "a.json").read_text()) == saved
    assert again.output.count(": resumed") == 2

    limited = invoke(*args[:-2], "--out", str(tmp_path / "limited"), "-n", "1")  # -n is --limit, as in arc solve
    assert limited.exit_code == 0, limited.output
    assert [p.name for p in (tmp_path / "limited" / "sift" / "results").iterdir()] == ["a.json"]

    assert table_row(result.output, "all")[1] == f"{bpb_of(run_dir):.4f}"  # total bits over total bytes

    none = invoke("lm", "eval", "--prompts", str(prompts), "--select", "none", "--model", str(tiny_model_dir),
                  "--out", str(tmp_path / "run"))
    assert none.exit_code == 0, none.output
    assert table_row(none.output, "all")[:2] == ["2", f"{bpb_of(tmp_path / 'run' / 'none'):.4f}"]
    loaded = load_model(str(tiny_model_dir))  # `none` is the untouched model: its bits, computed independently
    for row in rows:
        saved = json.loads((tmp_path / "run" / "none" / "results" / f"{row['id']}.json").read_text())
        bits, n_bytes = continuation_bits(loaded.model, loaded.tokenizer, row["prompt"], row["continuation"])
        assert saved["steps"] == 0 and saved["picks"] == [] and saved["bytes"] == n_bytes
        assert saved["bits"] == pytest.approx(bits, rel=1e-5)
        assert saved["bits"] == pytest.approx(by_hand(loaded, row["prompt"], row["continuation"]), rel=1e-4)
    # every prompt over a 2-token context: each one fails, and a run where all failed exits 1
    failing = invoke("lm", "eval", "--prompts", str(prompts), "--select", "none", "--model", str(tiny_model_dir),
                     "--context", "2")
    assert failing.exit_code == 1, failing.output
    assert "every prompt failed" in " ".join(failing.output.split())


def test_eval_flags_are_checked_together(tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("")
    result = invoke("lm", "eval", "--prompts", str(prompts), "--select", "best", "--steps", "0", "--lam", "0")
    assert result.exit_code == 2
    flat = " ".join(result.output.split())
    assert "--select must be one of" in flat and "--steps" in flat and "--lam" in flat
    needs_index = invoke("lm", "eval", "--prompts", str(prompts), "--select", "nn")
    assert needs_index.exit_code == 2 and "--index is needed by --select nn" in " ".join(needs_index.output.split())
    no_prompts = invoke("lm", "eval", "--prompts", str(prompts), "--select", "none", "--limit", "0")
    assert no_prompts.exit_code == 2 and "--limit must be at least 1" in " ".join(no_prompts.output.split())
