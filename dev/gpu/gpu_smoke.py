"""The first GPU call's smoke test: every CUDA path of testtime on a tiny random model, in about a minute.

Each check runs the project's own code (`load_model`, `AdapterHost`, `pretrain`, the `arc solve`
and `arc pretrain` commands) on a 2-layer Llama with the embedded tokenizer, so a failure costs
seconds here instead of the second call's minutes. `run_smoke` returns one entry per check:
`{"ok": True | False | None, ...measurements}`, None meaning not checked (CPU, or no time left).
`gate` turns them into the one GO/STOP line.
"""

from __future__ import annotations

import contextlib
import json
import math
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

REQUIRED = ("device", "bf16_load", "autocast_loss", "adapter_dtype")
"""Without these nothing in the second call can work: STOP even when they were not reached."""


class Smoke:
    """The checks, sharing one tiny model directory, one data set and the adapters they train."""

    def __init__(self, work: Path, tokenizer_dir: Path, device: str, deadline: Callable[[], float],
                 env: dict[str, str], log: Callable[[str], None] = print) -> None:
        self.work, self.device, self.left, self.env, self.log = work, device, deadline, env, log
        self.results: dict[str, dict[str, Any]] = {}
        self.tokenizer_dir = tokenizer_dir
        self.model_dir = work / "tiny-model"
        self.adapter: Path | None = None
        self._examples: tuple | None = None
        self.fast_dtype = "bfloat16" if device == "cuda" else "float32"
        """The commands' base weights: bf16 on the GPU (the path to check), float32 on a CPU (bf16 is slow there)."""

    def examples(self) -> tuple:
        """ARC-AGI-1 training tasks as pretraining examples (read once)."""
        from testtime.arc.pretrain_data import load_examples

        if self._examples is None:
            self._examples = load_examples(["arc-agi-1/training"])
        return self._examples

    # ------------------------------------------------------------ plumbing

    @contextlib.contextmanager
    def check(self, name: str, need_s: float = 5.0) -> Iterator[dict[str, Any]]:
        """Run the block as check `name`: its dict is the result; an exception marks it failed."""
        entry: dict[str, Any] = {"ok": None}
        self.results[name] = entry
        if self.left() < need_s:
            entry["skipped"] = "no time left in the smoke stage"
            self.log(f"  smoke {name}: skipped (no time)")
            return
        t0 = time.monotonic()
        try:
            yield entry
            if entry["ok"] is None and "skipped" not in entry:
                entry["ok"] = True
        except Exception as err:  # a check's failure is a result, not the end of the smoke
            entry.update(ok=False, error=f"{type(err).__name__}: {err}"[:500],
                         trace=traceback.format_exc(limit=4)[-1500:])
        entry["seconds"] = round(time.monotonic() - t0, 2)
        self.log(f"  smoke {name}: {_word(entry)} ({entry['seconds']:.1f}s)"
                 + (f" {entry['error']}" if entry.get("error") else ""))

    def tiny(self, dtype: str = "float32") -> Any:
        from testtime.models import load_model

        return load_model(str(self.model_dir), device=self.device, dtype=dtype)

    def sequences(self, n: int = 4) -> list:
        from testtime.arc.pretrain_data import InContextSampler
        from testtime.arc.settings import SamplerArgs
        from testtime.models import load_tokenizer

        examples, _ = self.examples()
        return InContextSampler(examples, load_tokenizer(str(self.model_dir)), SamplerArgs(max_len=768)).sequences(0, n)

    def cli(self, *args: str, timeout: float) -> subprocess.CompletedProcess:
        code = "from testtime.cli import app; app()"
        return subprocess.run([sys.executable, "-c", code, *args], env=self.env, capture_output=True, text=True,
                              timeout=max(5.0, min(timeout, self.left())))

    # ------------------------------------------------------------ the checks

    def run(self) -> dict[str, dict[str, Any]]:
        for step in (self.device_info, self.bf16_load, self.autocast_loss, self.adapter_dtype, self.checkpointing,
                     self.save_resume, self.merge, self.cli_solve, self.cli_pretrain):
            step()
        self.results["gpus_per_worker"] = {"ok": None, "skipped": "ray is not on the GPU image and its 76 MiB wheel "
                                                                   "cannot travel: --gpus-per-worker stays unchecked"}
        return self.results

    def device_info(self) -> None:
        import torch
        from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

        with self.check("device") as r:
            r["torch"], r["cuda_available"] = torch.__version__, torch.cuda.is_available()
            if self.device == "cuda":
                props = torch.cuda.get_device_properties(0)
                r.update(name=props.name, capability=f"{props.major}.{props.minor}",
                         memory_gib=round(props.total_memory / 2**30, 1), bf16=torch.cuda.is_bf16_supported())
                r["ok"] = bool(r["cuda_available"] and r["bf16"])
            tokenizer = AutoTokenizer.from_pretrained(self.tokenizer_dir)
            torch.manual_seed(0)
            config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                                 num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                 max_position_embeddings=4096, tie_word_embeddings=True,
                                 bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                 pad_token_id=tokenizer.pad_token_id)
            LlamaForCausalLM(config).save_pretrained(self.model_dir)
            tokenizer.save_pretrained(self.model_dir)

    def bf16_load(self) -> None:
        import torch

        with self.check("bf16_load") as r:
            loaded = self.tiny("bfloat16")
            dtypes = {str(p.dtype) for p in loaded.model.parameters()}
            devices = {p.device.type for p in loaded.model.parameters()}
            r.update(dtypes=sorted(dtypes), devices=sorted(devices))
            logits = loaded.model(torch.tensor([[1, 2, 3]], device=self.device)).logits
            r["ok"] = dtypes == {"torch.bfloat16"} and devices == {self.device} and bool(torch.isfinite(logits).all())

    def autocast_loss(self) -> None:
        from testtime.finetune import evaluate_loss

        with self.check("autocast_loss") as r:
            seqs = self.sequences(2)
            here = self.tiny("float32")
            seen: list[str] = []
            hook = here.model.model.layers[0].self_attn.q_proj.register_forward_hook(
                lambda _m, _i, out: seen.append(str(out.dtype)))
            loss = evaluate_loss(here.model, seqs)
            hook.remove()
            cpu = evaluate_loss(here.model.to("cpu"), seqs)
            r.update(loss=loss, loss_cpu_float32=cpu, rel_diff=abs(loss - cpu) / cpu, matmul_dtype=seen[0])
            want = "torch.bfloat16" if self.device == "cuda" else "torch.float32"
            r["ok"] = math.isfinite(loss) and r["rel_diff"] < 0.05 and seen[0] == want

    def adapter_dtype(self) -> None:
        from testtime.lora import AdapterHost
        from testtime.settings import LoraArgs

        with self.check("adapter_dtype") as r:
            host = AdapterHost(self.tiny("bfloat16").model, LoraArgs(r=8, alpha=16))
            host.fresh(seed=0)
            trainable = {str(p.dtype) for p in host.model.parameters() if p.requires_grad}
            frozen = {str(p.dtype) for p in host.model.parameters() if not p.requires_grad}
            r.update(adapter=sorted(trainable), base=sorted(frozen))
            r["ok"] = trainable == {"torch.float32"} and frozen == {"torch.bfloat16"}

    def _pretrain(self, out: Path, steps: int, *, checkpointing: bool = False, stop_at: int | None = None,
                  seen: list | None = None, every: int = 2) -> dict:
        import torch

        from testtime.arc.pretrain import pretrain
        from testtime.arc.settings import PretrainConfig, SamplerArgs
        from testtime.settings import LoraArgs, TrainArgs

        class Stop(Exception):
            pass

        def on_progress(p) -> None:
            if seen is not None:
                seen.append(p)
            if stop_at is not None and p.step == stop_at:
                raise Stop

        config = PretrainConfig(model=str(self.model_dir), lora=LoraArgs(r=8, alpha=16), val_tasks=2, val_sequences=4,
                                val_every=every, checkpoint_every=every, data=SamplerArgs(max_len=768),
                                train=TrainArgs(lr=1e-2, max_steps=steps, warmup_steps=1, batch_size=4, grad_accum=1,
                                                log_every=0, gradient_checkpointing=checkpointing))
        examples, info = self.examples()
        if self.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        try:
            return pretrain(self.tiny("float32"), examples, config, out, info=info, on_progress=on_progress)
        except Stop:
            return {}

    def checkpointing(self) -> None:
        import torch

        for on in (False, True):
            with self.check(f"train_checkpointing_{'on' if on else 'off'}", need_s=10) as r:
                seen: list = []
                card = self._pretrain(self.work / f"smoke-gc-{on}", 3, checkpointing=on, seen=seen)
                r.update(val_history=card["val_history"], losses=[p.loss for p in seen],
                         tokens_per_s=seen[-1].tokens_per_s, mfu=seen[-1].mfu)
                if self.device == "cuda":
                    r["peak_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
                learnt = card["val_loss_final"] < card["val_loss_initial"]
                r["ok"] = all(math.isfinite(x) for x in r["losses"]) and learnt
                if not on:
                    self.adapter = self.work / "smoke-gc-False"
        off, on = self.results["train_checkpointing_off"], self.results["train_checkpointing_on"]
        if off.get("ok") and on.get("ok"):
            on["max_rel_loss_diff_vs_off"] = max(abs(a - b) / abs(a) for a, b in zip(off["losses"], on["losses"]))
            on["ok"] = on["max_rel_loss_diff_vs_off"] < 0.02
        with self.check("mfu", need_s=0) as r:
            r["mfu"] = off.get("mfu")
            if self.device != "cuda":
                r["skipped"] = "no MFU on the CPU (no peak FLOP/s)"
            else:
                r["ok"] = r["mfu"] is not None and 0 < r["mfu"] < 1

    def save_resume(self) -> None:
        with self.check("save_resume", need_s=10) as r:
            whole = self._pretrain(self.work / "smoke-whole", 2, every=1)
            self._pretrain(self.work / "smoke-cut", 2, stop_at=1, every=1)  # checkpoint at step 1, then stopped
            resumed = self._pretrain(self.work / "smoke-cut", 2, every=1)
            a, b = whole["val_history"][-1][1], resumed["val_history"][-1][1]
            r.update(val_whole=a, val_resumed=b, rel_diff=abs(a - b) / a)
            r["ok"] = r["rel_diff"] < (1e-3 if self.device == "cuda" else 1e-6)

    def merge(self) -> None:
        import torch
        from peft import PeftModel

        from testtime.lora import AdapterHost
        from testtime.settings import LoraArgs

        with self.check("merge") as r:
            assert self.adapter is not None, "no adapter was trained (train_checkpointing_off failed)"
            ids = torch.tensor([self.sequences(1)[0].input_ids[:512]], device=self.device)

            def logits(model: Any) -> torch.Tensor:
                with torch.no_grad():
                    return model(input_ids=ids).logits.float()
            base = logits(self.tiny("float32").model)
            ref = logits(PeftModel.from_pretrained(self.tiny("float32").model, str(self.adapter)))
            into32 = logits(AdapterHost(self.tiny("float32").model, LoraArgs(r=8, alpha=16),
                                        start_adapter=self.adapter).model)
            into16 = logits(AdapterHost(self.tiny("bfloat16").model, LoraArgs(r=8, alpha=16),
                                        start_adapter=self.adapter).model)
            effect = (ref - base).abs().mean().item()
            r.update(adapter_effect=effect, float32_merge_error=(into32 - ref).abs().mean().item(),
                     bf16_merge_error=(into16 - ref).abs().mean().item())
            r["bf16_kept"] = 1 - r["bf16_merge_error"] / effect if effect else None
            r["ok"] = effect > 0 and r["float32_merge_error"] < 1e-3 * max(effect, 1e-3)

    def cli_solve(self) -> None:
        with self.check("cli_solve_generate", need_s=15) as r:
            assert self.adapter is not None, "no adapter was trained (train_checkpointing_off failed)"
            out = self.work / "smoke-solve"
            proc = self.cli("arc", "solve", "arc-agi-1/evaluation", "--tasks", "66e6c45b", "--model",
                            str(self.model_dir), "--adapter", str(self.adapter), "--ttt-sequences", "2",
                            "--max-new-tokens", "16", "--dtype", self.fast_dtype, "--out", str(out), timeout=120)
            r.update(exit=proc.returncode, tail=(proc.stdout + proc.stderr)[-600:])
            record = json.loads((out / "tasks" / "66e6c45b.json").read_text()) if proc.returncode == 0 else {}
            r.update(status=record.get("status"), prompts=record.get("predict", {}).get("prompts"),
                     ttt_steps=record.get("ttt", {}).get("steps"))
            r["ok"] = proc.returncode == 0 and record.get("status") == "ok" and bool(r["prompts"])

    def cli_pretrain(self) -> None:
        with self.check("cli_pretrain", need_s=15) as r:
            out = self.work / "smoke-cli-pretrain"
            proc = self.cli("arc", "pretrain", "arc-agi-1/training", "--model", str(self.model_dir), "--steps", "2",
                            "--warmup", "1", "--batch-size", "4", "--grad-accum", "1", "--max-len", "768",
                            "--val-tasks", "2", "--val-sequences", "2", "--lora-rank", "8", "--lora-alpha", "16",
                            "--gradient-checkpointing", "--dtype", self.fast_dtype, "--max-minutes", "2",
                            *(["--init-adapter", str(self.adapter)] if self.adapter else []), "--out", str(out),
                            timeout=120)
            r.update(exit=proc.returncode, tail=(proc.stdout + proc.stderr)[-600:])
            r["ok"] = proc.returncode == 0 and (out / "card.json").is_file()


def _word(entry: dict[str, Any]) -> str:
    return {True: "ok", False: "FAILED", None: "not checked"}[entry["ok"]]


def gate(results: dict[str, dict[str, Any]], extra_failures: list[str], seconds: float) -> tuple[bool, str]:
    """(go, the one line): GO when no check failed and the required ones passed."""
    failed = [f"{name} ({r.get('error') or 'check failed'})" for name, r in results.items() if r["ok"] is False]
    failed += extra_failures
    missing = [name for name in REQUIRED if results.get(name, {}).get("ok") is not True]
    passed = sum(r["ok"] is True for r in results.values())
    unchecked = [name for name, r in results.items() if r["ok"] is None]
    if failed or missing:
        why = "; ".join(failed + [f"{m} not reached" for m in missing if m not in " ".join(failed)])
        return False, f"STOP: {why[:400]}. Do not send call 2; fix this here first."
    note = f" (not checked: {', '.join(unchecked)})" if unchecked else ""
    return True, f"GO: {passed} checks passed in {seconds:.0f} s{note}. Send call 2 now, within 30 s."
