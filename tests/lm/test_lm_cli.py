"""`testtime lm eval` end to end: a tiny model, a small memory, a prompts file, resume."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch

from cli_helpers import invoke  # tests/ is on sys.path under pytest
from helpers import CONTINUATION, LetterEmbedder, letter_index, rewrite_settings
from testtime.lm.bpb import continuation_bits
from testtime.models import load_model


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


def write_with_old_names(run_dir) -> None:
    """Rewrite an `lm eval` run directory as a testtime before the ttft -> ttt rename wrote it: the settings
    under `config.ttft.`, every record sealed with the fingerprint of those settings."""
    rewrite_settings(run_dir, "results",
                     lambda settings: {k.replace("config.ttt.", "config.ttft."): v for k, v in settings.items()})


def test_eval_scores_every_prompt_by_domain_and_resumes(tmp_path, tokenizer, tiny_model_dir, monkeypatch):
    import testtime.lm.embed as embed

    monkeypatch.setattr(embed, "load_embedder", lambda *a, **k: LetterEmbedder())
    letter_index(tmp_path, tokenizer, domain="prose")
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
    for domain in ("prose", "noise", "every prompt"):
        assert f"│ {domain} " in result.output
    run_dir = tmp_path / "run" / "sift"  # each selector has its own run directory inside --out
    assert sorted(p.name for p in (run_dir / "results").iterdir()) == ["a.json", "b.json"]
    config = json.loads((run_dir / "config.json").read_text())
    assert config["command"] == "lm eval" and config["settings"]["config.ttt.select"] == "sift"
    assert config["settings"]["config.ttt.n"] == 2 and config["options"]["steps"] == 2
    saved = json.loads((run_dir / "results" / "a.json").read_text())
    assert saved["status"] == "ok" and saved["prompt_id"] == "a"
    assert saved["steps"] == 2 and len(saved["picks"]) == 2 and saved["bpb"] > 0

    again = invoke(*args)
    assert again.exit_code == 0 and json.loads((run_dir / "results" / "a.json").read_text()) == saved
    assert again.output.count(": resumed") == 2

    write_with_old_names(run_dir)  # as testtime wrote it before TTFTArgs became PromptTTT (config.ttft.*)
    older = invoke(*args)
    assert older.exit_code == 0 and older.output.count(": resumed") == 2, older.output
    assert json.loads((run_dir / "config.json").read_text())["settings"]["config.ttt.select"] == "sift"

    limited = invoke(*args[:-2], "--out", str(tmp_path / "limited"), "-n", "1")  # -n is --limit, as in arc solve
    assert limited.exit_code == 0, limited.output
    assert [p.name for p in (tmp_path / "limited" / "sift" / "results").iterdir()] == ["a.json"]

    assert table_row(result.output, "every prompt")[1] == f"{bpb_of(run_dir):.4f}"  # total bits over total bytes

    none = invoke("lm", "eval", "--prompts", str(prompts), "--select", "none", "--model", str(tiny_model_dir),
                  "--out", str(tmp_path / "run"), "--dtype", "float32")  # float32: the sums below are exact
    assert none.exit_code == 0, none.output
    assert table_row(none.output, "every prompt")[:2] == ["2", f"{bpb_of(tmp_path / 'run' / 'none'):.4f}"]
    loaded = load_model(str(tiny_model_dir), dtype="float32")  # `none`: the untouched model, its bits computed apart
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


def lm_setup(tmp_path, tokenizer, monkeypatch):
    """A memory index of MEMORY (letter-count embeddings) and a prompts file of three prompts, two domains."""
    import testtime.lm.embed as embed

    monkeypatch.setattr(embed, "load_embedder", lambda *a, **k: LetterEmbedder())
    letter_index(tmp_path, tokenizer, domain="prose")
    prompts = tmp_path / "prompts.jsonl"
    rows = [{"id": "a", "domain": "prose", "prompt": "the quick brown fox", "continuation": CONTINUATION},
            {"id": "b", "domain": "noise", "prompt": "zzz", "continuation": " yyy xxx"},
            {"id": "c", "domain": "prose", "prompt": "a lazy dog", "continuation": " jumps over the fox"}]
    prompts.write_text("\n".join(json.dumps(r) for r in rows))
    return tmp_path / "index", prompts


def test_an_index_rebuilt_at_the_same_path_is_a_changed_setting(tmp_path, tokenizer, tiny_model_dir, monkeypatch):
    """The run directory records the index's content: other chunks (or embeddings) at the same --index path are
    refused by name, not mixed with the records made on the old ones; a directory from before resumes."""
    index, prompts = lm_setup(tmp_path, tokenizer, monkeypatch)
    args = ["lm", "eval", "--prompts", str(prompts), "--index", str(index), "--model", str(tiny_model_dir),
            "--select", "nn", "--steps", "1", "--k", "3", "--out", str(tmp_path / "run")]
    assert invoke(*args).exit_code == 0
    run_dir = tmp_path / "run" / "nn"
    recorded = json.loads((run_dir / "config.json").read_text())["settings"]["index_sha256"]
    assert isinstance(recorded, str) and len(recorded) == 64
    rewrite_settings(run_dir, "results", lambda settings: {k: v for k, v in settings.items() if k != "index_sha256"})
    older = invoke(*args)  # written before the index was recorded: taken to be this index
    assert older.exit_code == 0 and older.output.count(": resumed") == 3, older.output
    shutil.rmtree(index)
    letter_index(tmp_path, tokenizer, domain="prose")  # rebuilt as it was (new files, the same chunks): resumes
    same = invoke(*args)
    assert same.exit_code == 0 and same.output.count(": resumed") == 3, same.output
    shutil.rmtree(index)
    letter_index(tmp_path, tokenizer, domain="other")  # the same texts, another domain on every chunk
    changed = invoke(*args)
    flat = " ".join(changed.output.split())
    assert changed.exit_code == 2 and "--index (its chunks and embeddings)" in flat, flat
    assert records(run_dir)["a"]["picks"] is not None  # the old records stay until --restart
    fresh = invoke(*args, "--restart")
    assert fresh.exit_code == 0 and fresh.output.count(": resumed") == 0, fresh.output
    assert json.loads((run_dir / "config.json").read_text())["settings"]["index_sha256"] not in (recorded, None)
    none = invoke(*args[:-2], "--select", "none", "--out", str(tmp_path / "run"))
    assert none.exit_code == 0, none.output  # the untouched model reads no index: nothing recorded
    assert json.loads((tmp_path / "run" / "none" / "config.json").read_text())["settings"]["index_sha256"] is None


def records(run_dir) -> dict[str, dict]:
    return {r["prompt_id"]: r for r in (json.loads(p.read_text()) for p in (run_dir / "results").iterdir())}


def test_us_adaptive_full_fine_tuning_and_the_comparison_table(tmp_path, tokenizer, tiny_model_dir, monkeypatch):
    index, prompts = lm_setup(tmp_path, tokenizer, monkeypatch)
    common = ["lm", "eval", "--prompts", str(prompts), "--index", str(index), "--model", str(tiny_model_dir),
              "--steps", "2", "--k", "5", "--lr", "1e-2"]
    out, full = tmp_path / "run", tmp_path / "full"
    for extra in (["--select", "none"], ["--select", "nn"], ["--select", "us"],
                  ["--select", "sift", "--adaptive", "2.5"], ["--select", "sift", "--lora-rank", "0"]):
        result = invoke(*common, *extra, "--out", str(full if "--lora-rank" in extra else out))
        assert result.exit_code == 0, result.output
    flat = " ".join(result.output.split())
    assert "full fine-tuning" in flat and "3 scored, 0 failed" in flat
    assert sorted(p.name for p in out.iterdir()) == ["nn", "none", "sift-adaptive", "us"]  # one dir per method
    assert json.loads((full / "sift" / "config.json").read_text())["settings"]["config.lora.r"] == 0
    adaptive = records(out / "sift-adaptive")
    assert json.loads((out / "sift-adaptive" / "config.json").read_text())["settings"]["config.ttt.adaptive"] == 2.5
    for r in adaptive.values():  # 2.5 x sigma_1 > 1 or 2.5 x 2 x sigma_2 > 1: never both steps
        assert r["method"] == "sift-adaptive" and r["stopped"] == "adaptive" and r["stopped_at"] == r["steps"] < 2
        assert len(r["sigma_before"]) == len(r["sigma_after"]) == r["steps"]
    us = records(out / "us")
    assert all(r["select"] == "us" and r["steps"] == 2 and r["var_after"] < r["var_before"] for r in us.values())

    table = invoke("lm", "compare", str(out), str(full / "sift"))
    assert table.exit_code == 0, table.output
    header = next(ln for ln in table.output.splitlines() if "domain" in ln)
    assert [c.strip() for c in header.strip().strip("┃").split("┃")] == \
        ["domain", "prompts", "none bpb", "nn", "sift-adaptive", "us", "sift"]
    none = records(out / "none")
    ratios = [100 * us[p]["bpb"] / none[p]["bpb"] for p in ("a", "c")]  # by hand: the prose prompts under US
    mean, se = np.mean(ratios), np.std(ratios, ddof=1) / np.sqrt(2)
    assert table_row(table.output, "prose")[:1] + table_row(table.output, "prose")[4:5] == \
        ["2", f"{mean:.1f} ({se:.1f})"]
    assert table_row(table.output, "noise")[4].endswith("(-)")  # one prompt: no standard error
    assert table_row(table.output, "All")[0] == "3"
    steps = table_row(table.output, "mean steps")
    assert steps[2:] == ["2.0", f"{np.mean([r['steps'] for r in adaptive.values()]):.1f}", "2.0", "2.0"]
    assert "Spearman" in table.output and "(n=3)" in table.output

    md = invoke("lm", "compare", str(out), "--markdown")
    assert md.exit_code == 0 and "| domain | prompts | none bpb | nn | sift-adaptive | us |" in md.output
    no_base = invoke("lm", "compare", str(out / "nn"))
    assert no_base.exit_code == 2 and "need exactly one `none` run" in " ".join(no_base.output.split())
    not_a_run = invoke("lm", "compare", str(tmp_path / "index"))
    assert not_a_run.exit_code == 2 and "not a run directory" in " ".join(not_a_run.output.split())
