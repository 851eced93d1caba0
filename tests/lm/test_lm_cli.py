"""`testtime lm eval` end to end: a tiny model, a small memory, a prompts file, resume."""

from __future__ import annotations

import json

from test_ttft import CONTINUATION, MEMORY, LetterEmbedder
from typer.testing import CliRunner

from testtime.cli import app
from testtime.lm.memory import Corpus, build_index


def invoke(*args: str):
    return CliRunner().invoke(app, list(args), catch_exceptions=False, env={"COLUMNS": "200"})


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

    none = invoke("lm", "eval", "--prompts", str(prompts), "--select", "none", "--model", str(tiny_model_dir))
    assert none.exit_code == 0, none.output
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
