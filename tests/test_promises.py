"""README promises that no other test runs, each end to end through the CLI (tiny models, offline).

The Ray tests come last in this module: the module-scoped `ray_local` fixture keeps one Ray
instance for them, and the two that need the command to start (or fail to reach) its own Ray
run in a subprocess, where no fixture has initialised Ray.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from cli_helpers import flat, invoke  # tests/ is on sys.path under pytest
from helpers import LetterEmbedder, letter_index, save_random_adapter

REPO = Path(__file__).resolve().parents[1]


def write_tasks(folder: Path, n: int = 4) -> Path:
    """Task i: 2x2 grids of colour i + 1 (output = input), two demonstrations, one test."""
    folder.mkdir()
    for i in range(n):
        grid = [[i + 1] * 2] * 2
        (folder / f"task{i}.json").write_text(json.dumps({"train": [{"input": grid, "output": grid}] * 2,
                                                          "test": [{"input": grid, "output": grid}]}))
    return folder


def table_row(output: str, first: str) -> list[str]:
    """The cells after `first` in the row of a printed table that starts with it."""
    line = next(ln for ln in output.splitlines() if ln.startswith(f"│ {first} "))
    return [c.strip() for c in line.strip().strip("│").split("│")][1:]


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment for a subprocess, without a Ray address to join."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return {**env, "COLUMNS": "200", **extra}


def run_python(script: str, env: dict[str, str], timeout: int = 300) -> dict:
    """Run `script` in a fresh interpreter; it prints one JSON object as its last line."""
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=REPO)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


# --- arc solve --tasks -------------------------------------------------------------------------

def test_solve_tasks_runs_that_subset_in_the_order_given(tmp_path, tiny_model_dir):
    tasks = write_tasks(tmp_path / "tasks")
    out = tmp_path / "run"
    result = invoke("arc", "solve", str(tasks), "--model", str(tiny_model_dir), "--no-ttt", "--max-new-tokens", "4",
                    "--tasks", "task3,task1,task3", "--out", str(out))  # a repeated id counts once
    assert result.exit_code == 0, result.output
    assert "2 tasks" in flat(result)
    lines = re.findall(r"^  (task\d): ", result.output, flags=re.M)  # one line per task as it finishes
    assert lines == ["task3", "task1"]
    assert sorted(p.name for p in (out / "tasks").iterdir()) == ["task1.json", "task3.json"]
    assert list(json.loads((out / "submission.json").read_text())) == ["task3", "task1"]
    config = json.loads((out / "config.json").read_text())
    assert config["options"]["tasks"] == "task3,task1,task3" and "tasks" not in config["settings"]

    more = invoke("arc", "solve", str(tasks), "--model", str(tiny_model_dir), "--no-ttt", "--max-new-tokens", "4",
                  "--tasks", "task0,task1", "--out", str(out))  # --tasks may differ on a rerun: task1 resumes
    assert more.exit_code == 0, more.output
    assert "task1: resumed" in flat(more) and "task0: ok" in flat(more)
    unknown = invoke("arc", "solve", str(tasks), "--tasks", "task1,nope,gone")
    assert unknown.exit_code == 2 and "--tasks: no task nope, gone in this data set" in flat(unknown)


# --- arc pretrain on a re-ARC file ---------------------------------------------------------------

def write_rearc(path: Path, ids: list[str], per_task: int = 4) -> Path:
    """A re-ARC style file: {task_id: [{"input", "output"}, ...]}, gzipped; output = input + 1 (mod 10)."""
    rng = np.random.default_rng(0)
    data = {}
    for task_id in ids:
        examples = []
        for _ in range(per_task):
            grid = rng.integers(0, 10, (2, 3))
            examples.append({"input": grid.tolist(), "output": ((grid + 1) % 10).tolist()})
        data[task_id] = examples
    with gzip.open(path, "wt") as f:
        json.dump(data, f)
    return path


def test_pretrain_reads_rearc_leaves_out_evaluation_tasks_trains_token_rows_and_restarts(tmp_path, tiny_model_dir,
                                                                                          tokenizer):
    from testtime.arc.pretrain import format_token_ids
    from testtime.arc.pretrain_data import evaluation_ids

    eval_id = sorted(evaluation_ids())[0]
    rearc = write_rearc(tmp_path / "re_arc.json.gz", ["aaaa0000", "bbbb0000", "cccc0000", "dddd0000", eval_id])
    out, allowed = tmp_path / "pt", tmp_path / "pt-allowed"

    def pretrain(where: Path, *extra: str):
        return invoke("arc", "pretrain", str(rearc), "--model", str(tiny_model_dir), "--out", str(where), "--steps",
                      "2", "--warmup", "0", "--grad-accum", "1", "--val-tasks", "1", "--val-sequences", "2",
                      "--val-every", "2", "--checkpoint-every", "2", "--lora-rank", "2", "--max-len", "200", *extra)
    result = pretrain(out, "--max-demos", "2")
    assert result.exit_code == 0, result.output
    assert "4 tasks, 16 examples" in flat(result)
    card = json.loads((out / "card.json").read_text())
    assert card["data"]["sources"][str(rearc)] == {"tasks": 4, "examples": 16, "bad_examples": 0,
                                                   "evaluation_tasks_left_out": 1}
    assert eval_id not in card["data"]["validation_tasks"]
    assert json.loads((out / "adapter_config.json").read_text()).get("trainable_token_indices") is None

    result = pretrain(allowed, "--max-demos", "2", "--allow-evaluation", "--train-token-rows")
    assert result.exit_code == 0, result.output
    assert "5 tasks, 20 examples" in flat(result)
    card = json.loads((allowed / "card.json").read_text())
    assert card["data"]["sources"][str(rearc)]["evaluation_tasks_left_out"] == 0
    assert card["config"]["train_token_rows"] is True
    adapter_config = json.loads((allowed / "adapter_config.json").read_text())
    assert adapter_config["trainable_token_indices"] == format_token_ids(tokenizer)
    from safetensors import safe_open

    with safe_open(str(allowed / "adapter_model.safetensors"), "pt") as f:
        assert any("trainable_tokens" in key for key in f.keys())  # the token rows are saved with the LoRA

    refused = pretrain(out, "--max-demos", "3")
    assert refused.exit_code == 2 and "--max-demos: 2 -> 3" in flat(refused) and "--restart" in flat(refused)
    before = (out / "card.json").read_text()
    restarted = pretrain(out, "--max-demos", "3", "--restart")
    assert restarted.exit_code == 0, restarted.output
    assert "step 2/2" in flat(restarted)  # trained again from step 1, not resumed at the old final checkpoint
    card = json.loads((out / "card.json").read_text())
    assert card != json.loads(before) and card["config"]["data"]["max_demos"] == 3
    config = json.loads((out / "config.json").read_text())
    assert config["settings"]["data.max_demos"] == 3 and sorted(p.name for p in (out / "checkpoints").iterdir()) == \
        ["step-000002"]


def test_pretrain_refuses_a_rerun_that_changes_allow_evaluation(tmp_path, tiny_model_dir):
    from testtime.arc.pretrain_data import evaluation_ids

    rearc = write_rearc(tmp_path / "re_arc.json.gz", ["aaaa0000", "bbbb0000", "cccc0000", sorted(evaluation_ids())[0]])
    args = ["arc", "pretrain", str(rearc), "--model", str(tiny_model_dir), "--out", str(tmp_path / "pt"), "--steps",
            "1", "--warmup", "0", "--grad-accum", "1", "--val-tasks", "1", "--val-sequences", "1", "--lora-rank", "2",
            "--max-len", "200"]
    assert invoke(*args).exit_code == 0
    again = invoke(*args, "--allow-evaluation")
    assert again.exit_code == 2 and "--allow-evaluation: False -> True" in flat(again) and "--restart" in flat(again)


# --- lm index with the default embedder ------------------------------------------------------

DOCS = {"cooking.txt": "Whisk the eggs with sugar, fold in the flour and bake the cake for forty minutes.",
        "astronomy.txt": "The telescope showed the rings of Saturn and four moons of Jupiter on a clear night.",
        "football.txt": "The striker scored twice in the second half and the team won the league title."}


@pytest.mark.slow
def test_lm_index_embeds_with_minilm_by_default_and_finds_each_document(tmp_path, tiny_model_dir):
    from testtime.lm.embed import load_embedder
    from testtime.lm.memory import Memory

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for name, text in DOCS.items():
        (corpus / name).write_text(text + "\n")
    result = invoke("lm", "index", str(corpus), "--out", str(tmp_path / "index"), "--model", str(tiny_model_dir),
                    "--chunk-tokens", "64")
    assert result.exit_code == 0, result.output
    assert "embedder minilm (384-d" in flat(result)
    meta = json.loads((tmp_path / "index" / "meta.json").read_text())
    assert (meta["embedder"], meta["dim"], meta["count"], meta["documents"]) == ("minilm", 384, 3, 3)
    memory = Memory.load(tmp_path / "index")
    assert np.allclose(np.linalg.norm(memory.embeddings, axis=1), 1.0, atol=1e-2)  # L2-normalised (float16)
    embedder = load_embedder("minilm", dtype=meta["embed_dtype"] or "auto")
    questions = {"cooking.txt": "how long do I bake a cake", "astronomy.txt": "planets seen through a telescope",
                 "football.txt": "who won the league"}
    for name, question in questions.items():
        (best,) = memory.search(embedder.embed([question])[0], 1)
        assert memory.texts([best]) == [DOCS[name] + "\n"] and memory.sources([best])[0].endswith(name)


# --- lm eval: nn, nn-repeats and random in one --out -------------------------------------------

def test_lm_eval_selectors_share_one_out_each_in_its_own_run_directory(tmp_path, tokenizer, tiny_model_dir,
                                                                       monkeypatch):
    import testtime.lm.embed as embed
    from testtime.lm.memory import Memory
    from testtime.lm.select import select_nn

    monkeypatch.setattr(embed, "load_embedder", lambda *a, **k: LetterEmbedder())
    letter_index(tmp_path, tokenizer)
    rows = [{"id": "p1", "domain": "prose", "prompt": "the quick brown fox", "continuation": " jumps over"},
            {"id": "p2", "domain": "noise", "prompt": "zzz yyy", "continuation": " xxx www"},
            {"id": "p3", "domain": "noise", "prompt": "kkk jjj", "continuation": " iii"}]
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join(json.dumps(r) for r in rows))
    out = tmp_path / "out"

    def run(select: str):
        return invoke("lm", "eval", "--prompts", str(prompts), "--index", str(tmp_path / "index"), "--model",
                      str(tiny_model_dir), "--select", select, "--steps", "2", "--k", "5", "--lora-rank", "2",
                      "--limit", "2", "--out", str(out))

    printed = {}
    for select in ("nn", "nn-repeats", "random"):
        result = run(select)
        assert result.exit_code == 0, result.output
        printed[select] = table_row(result.output, "every prompt")
    assert sorted(p.name for p in out.iterdir()) == ["nn", "nn-repeats", "random"]

    memory, embedder = Memory.load(tmp_path / "index"), LetterEmbedder()
    for select in ("nn", "nn-repeats", "random"):
        run_dir = out / select
        assert json.loads((run_dir / "config.json").read_text())["settings"]["config.ttt.select"] == select
        assert sorted(p.name for p in (run_dir / "results").iterdir()) == ["p1.json", "p2.json"]  # --limit 2
        results = [json.loads((run_dir / "results" / f"{pid}.json").read_text()) for pid in ("p1", "p2")]
        assert printed[select][:2] == ["2", f"{sum(r['bits'] for r in results) / sum(r['bytes'] for r in results):.4f}"]
        for row, res in zip(rows, results):
            query = embedder.embed([row["prompt"]])[0]
            positions = memory.search(query, 5)
            nearest = [int(positions[i]) for i in select_nn(query, memory.embeddings[positions], 2).indices]
            assert res["select"] == select and res["steps"] == 2 and len(res["picks"]) == 2
            if select == "nn":
                assert res["picks"] == nearest
            elif select == "nn-repeats":
                assert res["picks"] == [nearest[0]] * 2
            else:
                assert len(set(res["picks"])) == 2 and set(res["picks"]) <= {int(p) for p in positions}
    again = run("nn")
    assert again.exit_code == 0 and again.output.count(": resumed") == 2


# --- models: another GGUF file, a Hugging Face id from the local cache ------------------------

def write_tiny_gguf(model_dir: Path, path: Path) -> Path:
    """The tiny Llama of `model_dir` as a float32 GGUF file, with the embedded model's tokenizer metadata.

    Tensor names and the q/k row order follow llama.cpp's converter (which transformers undoes on load).
    """
    import gguf
    from safetensors.torch import load_file
    from transformers import AutoConfig

    from testtime.models import embedded_gguf

    config = AutoConfig.from_pretrained(model_dir)
    weights = load_file(str(model_dir / "model.safetensors"))
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads

    def permute(w: np.ndarray, n_head: int) -> np.ndarray:
        return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)

    writer = gguf.GGUFWriter(str(path), "llama")
    source = gguf.GGUFReader(str(embedded_gguf()))
    for key, field in source.fields.items():
        if key.startswith("tokenizer."):
            main, sub = field.types[0], (field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None)
            writer.add_key_value(key, field.contents(), main, sub)
    writer.add_name("testtime tiny test model")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_dimension_count(config.hidden_size // heads)
    writer.add_rope_freq_base(float(config.rope_parameters["rope_theta"]))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    names = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
             "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
             "post_attention_layernorm": "ffn_norm", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down"}
    writer.add_tensor("token_embd.weight", weights["model.embed_tokens.weight"].numpy())
    writer.add_tensor("output_norm.weight", weights["model.norm.weight"].numpy())
    for block in range(config.num_hidden_layers):
        for hf, ours in names.items():
            w = weights[f"model.layers.{block}.{hf}.weight"].numpy()
            if ours in ("attn_q", "attn_k"):
                w = permute(w, heads if ours == "attn_q" else kv_heads)
            writer.add_tensor(f"blk.{block}.{ours}.weight", np.ascontiguousarray(w))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.mark.slow
def test_a_gguf_file_other_than_the_embedded_one_loads_converts_once_and_solves(tmp_path, tiny_model_dir,
                                                                               tokenizer, monkeypatch):
    from transformers import AutoModelForCausalLM

    from testtime.models import CACHE_ENV, load_model, load_tokenizer

    (tmp_path / "models").mkdir()
    path = write_tiny_gguf(tiny_model_dir, tmp_path / "models" / "tiny.gguf")
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    loaded = load_model(str(path), dtype=torch.float32)  # exact: the float32 GGUF read as it is
    reference = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    state = loaded.model.state_dict()
    assert loaded.model.config.num_hidden_layers == 2 and loaded.model.config.hidden_size == 32
    for name, value in reference.items():
        assert torch.equal(state[name], value), name
    text = "input\n0120\n3456\noutput\n<|im_start|>user hello"
    assert loaded.tokenizer(text).input_ids == tokenizer(text).input_ids
    (converted,) = (tmp_path / "cache" / "gguf").iterdir()
    assert converted.name.startswith("tiny-") and (converted / "model.safetensors").is_file()

    import transformers.modeling_gguf_pytorch_utils as gguf_utils

    def no_gguf(*args, **kwargs):
        raise AssertionError("the GGUF was read although its conversion is cached")
    monkeypatch.setattr(gguf_utils, "load_gguf_checkpoint", no_gguf)
    load_tokenizer.cache_clear()
    tasks = write_tasks(tmp_path / "tasks", n=1)
    result = invoke("arc", "solve", str(tasks), "--model", str(path), "--no-ttt", "--max-new-tokens", "4")
    assert result.exit_code == 0, result.output
    assert "task0: ok" in flat(result)
    load_tokenizer.cache_clear()


@pytest.mark.slow
def test_a_hugging_face_id_loads_from_the_local_cache_with_no_network(tmp_path, tiny_model_dir):
    hub = tmp_path / "hub"
    repo = hub / "models--testtime-test--tiny-llama"
    revision = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(tiny_model_dir, repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    tasks = write_tasks(tmp_path / "tasks", n=1)
    dead = "http://127.0.0.1:9"  # any request would fail here: only the cache can answer
    env = clean_env(HF_HOME=str(tmp_path / "hf-home"), HF_HUB_CACHE=str(hub), HTTPS_PROXY=dead, HTTP_PROXY=dead,
                    https_proxy=dead, http_proxy=dead, NO_PROXY="", no_proxy="")
    for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        env.pop(key, None)
    found = run_python(f"""
        import json
        import torch
        from safetensors.torch import load_file
        from typer.testing import CliRunner
        from testtime.cli import app
        from testtime.models import ModelLoadError, load_model

        loaded = load_model("testtime-test/tiny-llama", dtype=torch.float32)
        saved = load_file({str(repo / "snapshots" / revision / "model.safetensors")!r})
        state = loaded.model.state_dict()
        same = all(torch.equal(state[k], v) for k, v in saved.items())
        try:
            load_model("testtime-test/not-cached")
            missing = ""
        except ModelLoadError as err:
            missing = str(err)
        solved = CliRunner().invoke(app, ["arc", "solve", {str(tasks)!r}, "--model", "testtime-test/tiny-llama",
                                          "--no-ttt", "--max-new-tokens", "4"], env={{"COLUMNS": "200"}})
        print(json.dumps({{"same": same, "missing": missing, "exit": solved.exit_code, "output": solved.output}}))
    """, env)
    assert found["same"]
    assert found["exit"] == 0 and "task0: ok" in found["output"], found["output"]
    assert "testtime-test/not-cached" in found["missing"] and "local cache" in found["missing"]


# --- Ray ---------------------------------------------------------------------------------------

RAY_SCRIPT = """
    import json, os, time
    import ray
    from typer.testing import CliRunner
    from testtime.cli import app

    sessions = []
    real_init = ray.init

    def init(*args, **kwargs):  # remember the session each ray.init makes, to look for its processes later
        context = real_init(*args, **kwargs)
        sessions.append(ray._private.worker._global_node.get_session_dir_path())
        return context
    ray.init = init

    def descendants(pid):
        children = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    stat = open(f"/proc/{entry}/stat").read()
                    cmd = open(f"/proc/{entry}/cmdline", "rb").read().replace(b"\\0", b" ").decode(errors="replace")
                except OSError:
                    continue
                if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                    children += [(int(entry), cmd)] + descendants(int(entry))
        return children

    args = ["arc", "solve", TASKS, "--model", MODEL, "--no-ttt", "--max-new-tokens", "4", "--ray", *EXTRA]
    t0 = time.monotonic()
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    found = {"exit": result.exit_code, "output": result.output, "seconds": time.monotonic() - t0,
             "initialized_after": ray.is_initialized(), "sessions": sessions}
    deadline = time.monotonic() + 20
    while any("ray" in cmd for _, cmd in descendants(os.getpid())) and time.monotonic() < deadline:
        time.sleep(0.5)  # shutdown kills its processes; give them a moment to be reaped
    found["left"] = [cmd for _, cmd in descendants(os.getpid())]
    print(json.dumps(found))
"""


def ray_command(tasks: Path, model_dir: Path, *extra: str, timeout: int) -> dict:
    """`arc solve --no-ttt --ray ...` in a fresh interpreter (no Ray initialised there): what it printed, whether
    Ray is still initialised after it, the sessions it made and any process of this interpreter left behind."""
    script = RAY_SCRIPT.replace("TASKS", repr(str(tasks))).replace("MODEL", repr(str(model_dir))) \
        .replace("*EXTRA", ", ".join(map(repr, extra)))
    return run_python(script, clean_env(), timeout=timeout)


def ray_processes(session: str) -> list[str]:
    """Command lines of live processes that belong to a Ray session (raylet, gcs_server, workers)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if session in cmd:
                found.append(cmd)
    return found


@pytest.mark.slow
def test_a_ray_command_starts_and_stops_its_own_local_instance(tmp_path, tiny_model_dir):
    pytest.importorskip("ray")
    tasks = write_tasks(tmp_path / "tasks", n=2)
    found = ray_command(tasks, tiny_model_dir, "--workers", "1", "--out", str(tmp_path / "run"), timeout=300)
    assert found["exit"] == 0, found["output"]
    assert "local Ray instance (1 CPUs)" in " ".join(found["output"].split())
    assert sorted(p.name for p in (tmp_path / "run" / "tasks").iterdir()) == ["task0.json", "task1.json"]
    assert found["initialized_after"] is False
    assert found["left"] == [], found["left"]  # no raylet, gcs_server or worker outlives the command
    (session,) = found["sessions"]
    assert ray_processes(session) == []  # nor anywhere else on the machine


@pytest.mark.slow
def test_an_unreachable_ray_address_is_a_clear_error_within_seconds(tmp_path, tiny_model_dir):
    pytest.importorskip("ray")
    tasks = write_tasks(tmp_path / "tasks", n=1)
    found = ray_command(tasks, tiny_model_dir, "--ray-address", "127.0.0.1:1", "--out", str(tmp_path / "run"),
                        timeout=30)
    assert found["exit"] == 2, found["output"]
    assert "--ray-address 127.0.0.1:1: cannot connect" in " ".join(found["output"].split())
    assert found["initialized_after"] is False and found["left"] == []
    assert list((tmp_path / "run" / "tasks").iterdir()) == []  # no task ran, none was recorded failed


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.mark.slow
def test_an_adapter_reaches_the_ray_workers(ray_local, tmp_path, tiny_model_dir):
    adapter = save_random_adapter(tiny_model_dir, tmp_path / "adapter")
    tasks = write_tasks(tmp_path / "tasks", n=2)

    def solve(out: str, *extra: str) -> dict[str, dict]:
        args = ["arc", "solve", str(tasks), "--model", str(tiny_model_dir), "--ttt-sequences", "2", "--max-new-tokens",
                "4", "--lora-rank", "2", "--lora-targets", "q_proj,v_proj", "--out", str(tmp_path / out), *extra]
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # like each Ray worker, so results match
        try:
            result = invoke(*args)
        finally:
            torch.set_num_threads(threads)
        assert result.exit_code == 0, result.output
        return {t: json.loads((tmp_path / out / "tasks" / f"{t}.json").read_text()) for t in ("task0", "task1")}

    on_ray = solve("ray", "--adapter", str(adapter), "--ray", "--workers", "1")
    here = solve("here", "--adapter", str(adapter))
    bare = solve("bare", "--no-adapter")
    assert json.loads((tmp_path / "ray" / "config.json").read_text())["settings"]["config.adapter"] == str(adapter)
    for task_id in ("task0", "task1"):
        # TTT's first loss is the merged model's loss on the task: the workers merged the same adapter
        assert on_ray[task_id]["ttt"]["first_loss"] == pytest.approx(here[task_id]["ttt"]["first_loss"], rel=1e-5)
        assert on_ray[task_id]["ttt"]["first_loss"] != pytest.approx(bare[task_id]["ttt"]["first_loss"], rel=1e-3)
        assert [t["candidates"] for t in on_ray[task_id]["tests"]] == [t["candidates"] for t in here[task_id]["tests"]]
