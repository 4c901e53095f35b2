"""Models larger than one device: device maps, bfloat16 and the memory model.

The device-map path is exercised for real on a CPU-only machine by offloading one layer of a
tiny Hugging Face GPT-2 to "disk": accelerate then keeps that layer's weights on the meta device
and loads them inside its forward pass, which is what breaks code that assumes every weight of a
model is in memory on one device. Memory formulas are checked on meta-device models (no
weights) and against the tensors the runner's hooks really receive.
"""

from __future__ import annotations

import pytest
import torch
from _gpt2 import gpt2_tokenizer

import headzoo as hz
from headzoo._errors import InvalidOptionError
from headzoo._memory import largest_elements, peak_bytes
from headzoo._models import model_info, pattern_hook
from headzoo._probes import RepeatedTokens

#: a GPT-2-shaped module map with layer 0 offloaded (lm_head is tied to wte: keep them together)
SPLIT = {"transformer.wte": "cpu", "transformer.wpe": "cpu", "transformer.h.0": "disk",
         "transformer.h.1": "cpu", "transformer.ln_f": "cpu", "lm_head": "cpu"}


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A 2-layer GPT-2 with random weights and the real tokenizer, saved as a local HF folder."""
    from transformers import GPT2Config, GPT2LMHeadModel

    folder = tmp_path_factory.mktemp("tiny-gpt2")
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=4, n_embd=64, n_positions=64, vocab_size=50257)).save_pretrained(folder)
    gpt2_tokenizer().save_pretrained(folder)
    return str(folder)


def _bridge_offloads_to_disk() -> bool:
    """Whether this TransformerLens' TransformerBridge can offload layers to disk (4.x can; 3.x refuses)."""
    import inspect

    from transformer_lens.model_bridge import TransformerBridge

    return "offload_folder" in inspect.signature(TransformerBridge.boot_transformers).parameters


@pytest.fixture(scope="module")
def split_pair(tiny_gpt2: str) -> tuple[object, object]:
    """The same model on one device and split by a device map (layer 0 offloaded)."""
    if not _bridge_offloads_to_disk():
        pytest.skip("this TransformerLens' TransformerBridge refuses disk offload (4.x has it); "
                    "test_disk_offload_on_a_bridge_without_it_is_refused_clearly covers this line")
    return hz.load_model(tiny_gpt2), hz.load_model(tiny_gpt2, device_map=SPLIT)


@pytest.mark.skipif(_bridge_offloads_to_disk(), reason="this TransformerLens offloads to disk (see split_pair)")
def test_disk_offload_on_a_bridge_without_it_is_refused_clearly(tiny_gpt2: str) -> None:
    with pytest.raises(hz.UnsupportedModelError, match=r"offloads layers to 'disk'.*Upgrade transformer-lens to 4\.x"):
        hz.load_model(tiny_gpt2, device_map=SPLIT)


def test_device_map_really_splits(split_pair: tuple[object, object]) -> None:
    whole, split = split_pair
    assert {p.device.type for p in whole.parameters()} == {"cpu"}  # type: ignore[attr-defined]
    # the offloaded layer's weights are not in memory outside its forward pass
    assert {p.device.type for p in split.parameters()} == {"cpu", "meta"}  # type: ignore[attr-defined]
    assert split.original_model.hf_device_map == SPLIT  # type: ignore[attr-defined]


@pytest.mark.slow
@pytest.mark.parametrize("detector", ["previous_token", "induction", "copying", "copy_suppression", "relation"])
def test_detect_on_split_model_equals_single_device(split_pair: tuple[object, object], detector: str) -> None:
    whole, split = split_pair
    a = hz.detect(whole, detector, progress=False).to_frame()
    b = hz.detect(split, detector, progress=False).to_frame()
    assert len(a) == 2 * 4 and list(a[["layer", "head"]].values.tolist()) == list(b[["layer", "head"]].values.tolist())
    assert (a["score"] - b["score"]).abs().max() <= 1e-6


def test_composition_on_split_model_equals_single_device(split_pair: tuple[object, object]) -> None:
    whole, split = split_pair
    a = hz.composition_scores(whole).to_frame()
    b = hz.composition_scores(split).to_frame()
    assert len(a) > 0
    assert (a["score"] - b["score"]).abs().max() <= 1e-6


def test_split_model_weights_are_left_offloaded(split_pair: tuple[object, object]) -> None:
    _, split = split_pair
    before = {n: p.device.type for n, p in split.blocks[0].named_parameters()}  # type: ignore[attr-defined]
    assert "meta" in before.values()
    hz.detect(split, "copying", progress=False)
    # reading weights materialised layer 0 for the computation only: it is offloaded again
    assert {n: p.device.type for n, p in split.blocks[0].named_parameters()} == before  # type: ignore[attr-defined]


@pytest.mark.slow
def test_device_map_auto_on_cpu_loads_on_cpu(tiny_gpt2: str) -> None:
    if torch.cuda.is_available():
        pytest.skip("checks the CPU-only behaviour of device_map='auto'")
    model = hz.load_model(tiny_gpt2, device_map="auto")
    assert {p.device.type for p in model.parameters()} == {"cpu"}
    assert hz.load_model("planted-demo", device_map="auto").cfg.n_layers == 3


@pytest.mark.parametrize("kwargs", [
    {"device_map": {"blocks.0": "cuda:7"}},
    {"device_map": {"transformer.h.0": 3}},
    {"device_map": "everywhere"},
    {"device_map": 0},
    {"device_map": {}},
    {"device_map": "auto", "device": "cpu"},
    {"device_map": {"embed": "cpu", "blocks.0": "disk"}},  # bundled models fit one device
])
def test_bad_device_maps_are_refused_before_loading(kwargs: dict) -> None:
    if torch.cuda.device_count() > 7:
        pytest.skip("this machine has the devices the map names")
    with pytest.raises(InvalidOptionError):
        hz.load_model("planted-demo", **kwargs)


@pytest.mark.slow
def test_bundled_model_with_a_one_device_map() -> None:
    model = hz.load_model("planted-demo", device_map={"embed": "cpu", "blocks.0": "cpu"})
    assert {p.device.type for p in model.parameters()} == {"cpu"}


# -- the memory model ---------------------------------------------------------------------

GPT2_SMALL = dict(n_layers=12, d_model=768, n_ctx=1024, d_head=64, n_heads=12, d_vocab=50257, d_mlp=3072)
ONE_B = dict(n_layers=16, d_model=2048, n_ctx=2048, d_head=64, n_heads=32, d_vocab=50304, d_mlp=8192)


def _meta_model(dims: dict) -> object:
    from transformer_lens.config import TransformerBridgeConfig
    from transformer_lens.model_bridge import TransformerBridge

    with torch.device("meta"):
        return TransformerBridge.boot_native(  # pyright: ignore[reportAttributeAccessIssue]
            TransformerBridgeConfig(**dims, act_fn="gelu_new", normalization_type="LN"))


@pytest.mark.slow
@pytest.mark.parametrize("dims", [GPT2_SMALL, ONE_B], ids=["gpt2-small", "1b"])
def test_memory_plan_on_meta_model_follows_the_formulas(dims: dict) -> None:
    model = _meta_model(dims)
    assert {p.device.type for p in model.parameters()} == {"meta"}  # type: ignore[attr-defined]
    plan = hz.memory_plan(model, ["previous_token", "copying", "name_mover"], batch_size=2, n_ctx=256, dtype="bfloat16")
    assert list(plan.columns) == ["detector", "kind", "peak_bytes", "formula", "chunk"]
    got = dict(zip(plan["detector"], plan["peak_bytes"], strict=True))
    B, C, s = 2, 256, 2
    H, D, L, V, M, dh = (dims[k] for k in ("n_heads", "d_model", "n_layers", "d_vocab", "d_mlp", "d_head"))
    assert got["previous_token"] == (2 * s + 4) * B * H * C * C + s * B * C * (2 * D + M)
    assert got["name_mover"] == 4 * B * C * V + s * L * B * C * D + 2 * s * B * H * C * C
    block = 24 * 2**20 // (4 * H * 512)
    assert got["copying"] == max(4 * (2 * V * D + D * D), 24 * 2**20 + 4 * D * block + 16 * H * D * dh)
    # a plan from the bare config agrees with the one from the meta model
    assert hz.memory_plan(dims, ["previous_token"], batch_size=2, n_ctx=256, dtype="bfloat16")["peak_bytes"][0] == got["previous_token"]


def test_memory_plan_scales_with_dtype_and_rejects_bad_input() -> None:
    f32 = peak_bytes(GPT2_SMALL, "pattern", batch=1, n_ctx=1024, dtype=torch.float32)
    bf16 = peak_bytes(GPT2_SMALL, "pattern", batch=1, n_ctx=1024, dtype="bfloat16")
    assert bf16 < f32
    with pytest.raises(InvalidOptionError):
        hz.memory_plan({"n_layers": 2}, ["previous_token"])
    with pytest.raises(InvalidOptionError):
        hz.memory_plan(GPT2_SMALL, ["previous_token"], batch_size=0)
    with pytest.raises(InvalidOptionError):
        hz.memory_plan(GPT2_SMALL, ["previous_token"], dtype="int8")


@pytest.mark.parametrize(("batch", "half_len"), [(2, 8), (3, 20)])
def test_memory_model_predicts_the_pattern_the_hook_sees(batch: int, half_len: int) -> None:
    model = hz.load_model("planted-demo")
    info = model_info(model)
    seen: list[int] = []
    handles = [model.hook_dict[pattern_hook(layer)].register_forward_hook(lambda m, i, out: seen.append(out.numel()))
               for layer in range(info.n_layers)]
    try:
        hz.detect(model, "previous_token", n_prompts=batch, batch_size=batch, half_len=half_len, progress=False)
    finally:
        for h in handles:
            h.remove()
    _, bos, _ = RepeatedTokens(half_len=half_len).resolve(info)
    n_ctx = 2 * half_len + int(bos)
    assert max(seen) == largest_elements(info, "previous_token", batch=batch, n_ctx=n_ctx) == batch * info.n_heads * n_ctx**2


# -- bfloat16 -------------------------------------------------------------------------------

#: bfloat16 keeps 8 bits of mantissa; patterns are softmaxes in [0, 1] and averaged scores agree
#: to about 1e-4 on the planted model (measured), so 1e-3 leaves room without hiding a bug
BF16_TOLERANCE = 1e-3


@pytest.mark.slow
@pytest.mark.parametrize("detector", ["previous_token", "induction", "copying", "successor"])
def test_bfloat16_scores_agree_with_float32(detector: str) -> None:
    f32 = hz.load_model("planted-demo")
    bf16 = hz.load_model("planted-demo", dtype="bfloat16")
    assert next(bf16.parameters()).dtype == torch.bfloat16
    a = hz.detect(f32, detector, progress=False).to_frame()
    b = hz.detect(bf16, detector, progress=False).to_frame()
    assert len(a) == len(b) == 12
    assert (a["score"] - b["score"]).abs().max() <= BF16_TOLERANCE
