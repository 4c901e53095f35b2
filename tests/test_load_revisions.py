"""hz.load_model(name, revision=...): training checkpoints as hub revisions, local folders of
revisions, and headzoo checkpoint folders, all offline (the hub is only ever monkeypatched)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import headzoo as hz
from headzoo._backends import from_bridge_state_dict
from headzoo._checkpoint import CheckpointError, save_checkpoint
from headzoo._errors import InvalidOptionError, ModelNotFoundError
from headzoo.testing import word_tokenizer

REVISIONS = ("step1000", "step2000")


@pytest.fixture
def hf_repo(tmp_path, monkeypatch):
    """A local "repo" of two revisions, each a tiny GPT-2-shaped Hugging Face model folder with
    different weights: ``(repo, {revision: hf_model})``."""
    from transformers import GPT2Config, GPT2LMHeadModel

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    repo = tmp_path / "repo"
    models = {}
    for seed, revision in enumerate(REVISIONS):
        config = GPT2Config(vocab_size=64, n_positions=32, n_embd=32, n_layer=2, n_head=2, bos_token_id=0,
                            eos_token_id=0, attn_implementation="eager")
        torch.manual_seed(seed)
        models[revision] = GPT2LMHeadModel(config).eval()
        models[revision].save_pretrained(repo / revision)
        word_tokenizer([f"w{i}" for i in range(62)]).save_pretrained(repo / revision)
    return repo, models


def _headzoo_checkpoint(folder: Path, seed: int, **info) -> Path:
    from transformer_lens.config import TransformerBridgeConfig
    from transformer_lens.model_bridge import TransformerBridge

    cfg = dict(n_layers=1, d_model=32, n_ctx=32, d_head=16, n_heads=2, d_vocab=20, d_mlp=64, act_fn="gelu",
               normalization_type="LN", positional_embedding_type="standard")
    torch.manual_seed(seed)
    model = TransformerBridge.boot_native(TransformerBridgeConfig(**cfg))
    return save_checkpoint(folder, from_bridge_state_dict(model.state_dict(), cfg), cfg,
                           word_tokenizer([f"w{i}" for i in range(18)]), **info)


def test_each_local_revision_loads_its_own_weights(hf_repo):
    repo, hf = hf_repo
    x = torch.randint(0, 64, (2, 12))
    logits = {}
    for revision in REVISIONS:
        model = hz.load_model(repo, revision=revision)
        logits[revision] = model(x).detach()
        with torch.no_grad():
            torch.testing.assert_close(logits[revision], hf[revision](x).logits, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(logits["step1000"], logits["step2000"], atol=1e-3)
    # the same folder by its own path loads the same weights
    torch.testing.assert_close(hz.load_model(repo / "step2000")(x).detach(), logits["step2000"])


def test_a_missing_revision_is_refused_with_the_ones_there(hf_repo):
    repo, _ = hf_repo
    with pytest.raises(ModelNotFoundError, match=r"no revision 'step3000'.*step1000, step2000"):
        hz.load_model(repo, revision="step3000")
    # a revision cannot leave the folder of revisions
    with pytest.raises(ModelNotFoundError, match="no revision '..'"):
        hz.load_model(repo / "step1000", revision="..")
    with pytest.raises(ModelNotFoundError, match="no revision"):
        hz.load_model(repo, revision=str(repo / "step1000"))


@pytest.mark.parametrize("revision", [1000, b"step1000", "", "  "])
def test_a_revision_that_is_not_a_name_is_refused(revision):
    import inspect

    # the test suite's runtime type checks would refuse a non-string first; users get ours
    with pytest.raises(InvalidOptionError, match="revision"):
        inspect.unwrap(hz.load_model)("EleutherAI/pythia-70m", revision=revision)


def test_a_bundled_model_has_no_revisions():
    with pytest.raises(InvalidOptionError, match="bundled model, which has one version"):
        hz.load_model("zoo-small", revision="step1000")


def test_a_headzoo_checkpoint_folder_loads_by_path_named_by_its_step(tmp_path):
    stepped = _headzoo_checkpoint(tmp_path / "run" / "step-000042", 0, name="zoo-test", step=42)
    plain = _headzoo_checkpoint(tmp_path / "final", 1, name="zoo-test")
    a = hz.load_model(stepped)
    assert a.cfg.model_name == "zoo-test@step-42" and hz.model_info(a).name == "zoo-test@step-42"
    assert hz.load_model(str(plain)).cfg.model_name == "zoo-test"
    # and as a revision of the run folder, with the same weights
    b = hz.load_model(tmp_path / "run", revision="step-000042")
    x = torch.randint(0, 20, (2, 8))
    torch.testing.assert_close(a(x), b(x))
    assert not torch.allclose(a(x), hz.load_model(plain)(x), atol=1e-3)


def test_a_damaged_headzoo_checkpoint_is_refused_by_load_model(tmp_path):
    folder = _headzoo_checkpoint(tmp_path / "ckpt", 0, name="zoo-test", step=3)
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="does not match the hash"):
        hz.load_model(folder)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        hz.load_model(folder)
    config = {"format": "headzoo.checkpoint/9"}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="not a headzoo checkpoint"):
        hz.load_model(folder)


def test_a_checkpoint_with_a_bad_step_is_refused(tmp_path):
    folder = _headzoo_checkpoint(tmp_path / "ckpt", 0, name="zoo-test", step="late")
    with pytest.raises(CheckpointError, match="step='late'"):
        hz.load_model(folder)


class _Booted:
    """Stands in for a booted model: load_model only calls eval() on it."""

    def eval(self):
        return self


def test_a_hub_revision_reaches_boot_transformers(monkeypatch):
    from transformer_lens.model_bridge import TransformerBridge

    calls = []

    def boot(name, device=None, dtype=torch.float32, revision=None, hf_model=None):
        calls.append((name, revision))
        return _Booted()

    monkeypatch.setattr(TransformerBridge, "boot_transformers", boot)
    hz.load_model("EleutherAI/pythia-70m", revision="step1000")
    hz.load_model("EleutherAI/pythia-70m")
    assert calls == [("EleutherAI/pythia-70m", "step1000"), ("EleutherAI/pythia-70m", None)]


def test_a_boot_without_revision_gets_the_hf_model_at_that_revision(monkeypatch):
    """TransformerLens versions whose boot_transformers has no revision= get the model loaded
    by transformers at the revision and handed in as hf_model."""
    import transformers
    from transformer_lens.model_bridge import TransformerBridge

    loaded, booted = [], []
    hf_model = object()

    def from_pretrained(name, revision=None, **kwargs):
        loaded.append((name, revision))
        return hf_model

    def boot(name, device=None, dtype=torch.float32, hf_model=None):
        booted.append((name, hf_model))
        return _Booted()

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", from_pretrained)
    monkeypatch.setattr(TransformerBridge, "boot_transformers", boot)
    hz.load_model("EleutherAI/pythia-70m", revision="step2000")
    assert loaded == [("EleutherAI/pythia-70m", "step2000")]
    assert booted == [("EleutherAI/pythia-70m", hf_model)]


def test_a_hub_revision_reaches_hooked_transformer(monkeypatch):
    """backend="hooked" (TransformerLens 3.x) passes revision= to HookedTransformer.from_pretrained;
    on 4.x the class is faked, since only the call is under test."""
    import transformer_lens

    import headzoo._zoo as zoo

    calls = []

    class Hooked:
        @staticmethod
        def from_pretrained(name, **kwargs):
            calls.append((name, kwargs.get("revision")))
            return _Booted()

    monkeypatch.setattr(zoo, "check_backend", lambda backend: None)
    monkeypatch.setitem(vars(transformer_lens), "HookedTransformer", Hooked)  # 4.x: its __getattr__ raises
    hz.load_model("EleutherAI/pythia-70m", backend="hooked", revision="step1000")
    assert calls == [("EleutherAI/pythia-70m", "step1000")]


def test_an_unloadable_hub_revision_says_which(monkeypatch):
    from transformer_lens.model_bridge import TransformerBridge

    def boot(name, device=None, dtype=torch.float32, revision=None):
        raise OSError(f"{revision} is not a valid git identifier")

    monkeypatch.setattr(TransformerBridge, "boot_transformers", boot)
    with pytest.raises(ModelNotFoundError, match="at revision 'step7'"):
        hz.load_model("EleutherAI/pythia-70m", revision="step7")


def test_a_boot_that_takes_no_revision_at_all_is_refused_clearly(monkeypatch):
    from transformer_lens.model_bridge import TransformerBridge

    monkeypatch.setattr(TransformerBridge, "boot_transformers", lambda name, device=None, dtype=torch.float32: _Booted())
    with pytest.raises(hz.UnsupportedModelError, match="neither revision= nor hf_model="):
        hz.load_model("EleutherAI/pythia-70m", revision="step1000")
