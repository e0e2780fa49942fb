"""lm-eval integration: the `accbench` model through lm_eval.simple_evaluate with the offline
accbench_mbpp / accbench_cnndm task files (tiny model, tiny budgets)."""

import math

import pytest

lm_eval = pytest.importorskip("lm_eval", reason="lm-eval is not installed (pip install 'accbench[lmeval]')")

import accbench.lmeval as L  # noqa: E402  (registers the `accbench` lm-eval model)
from accbench.methods.ar import ARDecoder  # noqa: E402
from accbench.suites.mbpp import MBPPSuite  # noqa: E402
from accbench.suites.summarization import CNNDMSuite, rouge  # noqa: E402


@pytest.fixture(scope="module")
def lm():
    return L.register()(model="tiny-random-llama", method="pld")


@pytest.fixture(scope="module")
def evaluated(lm):
    res = lm_eval.simple_evaluate(model=lm, tasks=["accbench_mbpp", "accbench_cnndm"], limit=2,
                                  task_manager=L.task_manager(), gen_kwargs={"max_gen_toks": 8}, log_samples=True)
    return res


def test_registered_for_lm_eval():
    from lm_eval.api.registry import get_model

    assert get_model("accbench") is L.register()
    assert (L.tasks_dir() / "accbench_mbpp.yaml").is_file() and (L.tasks_dir() / "accbench_cnndm.yaml").is_file()


def test_simple_evaluate_uses_our_prompts_decoder_and_scores(evaluated, lm, data_dir):
    res = evaluated
    assert res["results"]["accbench_mbpp"]["pass_at_1,none"] == 0.0  # a random model writes no working code
    for k in ("rouge1,none", "rouge2,none", "rougeL,none"):
        assert math.isfinite(res["results"]["accbench_cnndm"][k])
    # lm-eval's contexts are exactly our suites' prompts, and the generations are our decoder's
    suite = MBPPSuite(data_dir=data_dir)
    ours = {s.id: s for s in suite.samples(limit=2)}
    ar = ARDecoder(lm.loaded.model, lm.tokenizer)
    from accbench.methods import StopChecker

    for s in res["samples"]["accbench_mbpp"]:
        context, gen_kwargs = s["arguments"][0]
        sample = ours[str(s["doc"]["task_id"])]
        assert context == sample.prompt
        stop = StopChecker(lm.tokenizer, gen_kwargs["until"], ar.eos_ids)
        rec = ar.generate(lm._encode(sample.prompt), 8, stop)
        assert s["resps"][0][0] == stop.text(rec.tokens)  # pld is lossless: AR's text
    cnn = {s.id: s for s in CNNDMSuite(data_dir=data_dir).samples(limit=2)}
    for s in res["samples"]["accbench_cnndm"]:
        sample = cnn[str(s["doc"]["index"])]
        assert s["arguments"][0][0] == sample.prompt
        assert s["rougeL"] == pytest.approx(rouge(sample.reference, s["resps"][0][0])["rougeL"])
    speed = res["config"]["accbench"]["speed"]
    assert res["config"]["accbench"]["method"] == "pld"
    assert speed["requests"] == 4 and speed["new_tokens"] <= 4 * 8 and speed["tokens_per_s"] > 0
    assert speed["tau"] >= 1.0


def test_mbpp_scorer_runs_reference_code_in_the_sandbox(data_dir):
    import importlib.util

    spec = importlib.util.spec_from_file_location("_accbench_task_utils", L.tasks_dir() / "utils.py")
    utils = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(utils)
    doc = MBPPSuite(data_dir=data_dir).docs[0]
    ref = "\n".join(doc["test_list"])
    assert utils.pass_at_1([ref], [[doc["code"]]]) == 1.0
    assert utils.pass_at_1([ref], [["def nothing():\n    pass"]]) == 0.0


def test_loglikelihood_matches_the_base_model(lm):
    import torch
    from lm_eval.api.instance import Instance

    def inst(kind, args):
        return Instance(request_type=kind, doc={}, arguments=args, idx=0)

    (ll, greedy), = lm.loglikelihood([inst("loglikelihood", ("The cat", " sat down"))])
    ctx = lm.tokenizer("The cat", add_special_tokens=False).input_ids
    cont = lm.tokenizer("The cat sat down", add_special_tokens=False).input_ids[len(ctx):]
    with torch.no_grad():
        logits = lm.loaded.model(input_ids=torch.tensor([ctx + cont[:-1]])).logits[0, -len(cont):]
    ref = torch.log_softmax(logits.float(), -1).gather(-1, torch.tensor(cont)[:, None]).sum().item()
    assert ll == pytest.approx(ref, abs=1e-4)
    assert greedy == bool((logits.argmax(-1) == torch.tensor(cont)).all())
    (rolling,) = lm.loglikelihood_rolling([inst("loglikelihood_rolling", ("hello world",))])
    (empty_ctx, _), = lm.loglikelihood([inst("loglikelihood", ("", "hello world"))])
    assert rolling == pytest.approx(empty_ctx, abs=1e-4)


def test_shim_prints_tasks_dir(capsys):
    L.main(["--tasks-dir"])
    assert capsys.readouterr().out.strip() == str(L.tasks_dir())


def test_prompt_format_defaults_to_the_suites_own(evaluated, lm, data_dir):
    """auto: accbench_cnndm through the chat template (as `accbench run`), accbench_mbpp raw
    few-shot, any other lm-eval task raw; an explicit format wins."""
    from accbench.engine.prompts import encode_prompt

    assert lm.format_for("accbench_cnndm") == "chat" and lm.format_for("accbench_mbpp") == "raw"
    assert lm.format_for("gsm8k") == "raw" and lm.format_for(None) == "raw"
    cnn = list(CNNDMSuite(data_dir=data_dir).samples(limit=2))
    chat = {len(encode_prompt(lm.tokenizer, s.prompt, "chat")) for s in cnn}
    raw = {len(encode_prompt(lm.tokenizer, s.prompt, "raw")) for s in cnn}
    assert chat != raw and chat <= {st["prompt_tokens"] for st in lm.stats}
    forced = L.register()(model="tiny-random-llama", method="ar", prompt_format="raw")
    assert forced.format_for("accbench_cnndm") == "raw"
    with pytest.raises(L.AccbenchError if hasattr(L, "AccbenchError") else Exception, match="auto, raw or chat"):
        L.register()(model="tiny-random-llama", prompt_format="html")
