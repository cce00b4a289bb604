"""Calibrated refusal decisions from the command line, on the shipped tiny base model: `honed guard
fit-refusal` writes the file; `chat`, `generate`, `eval` and `serve --refusal-calibration FILE` apply it.

The case is built so that plain greedy decoding "refuses": the training mix's refusal IS the
model's own greedy reply to QUESTION, so the refusal opening is that reply's first token. A
calibration with threshold 1 bans the opening wherever P(refuse) < 1, so the reply must change
to the one that starts with the best other token. The expected values (P(refuse) as the softmax
of the first token, the changed reply) are computed from the model's logits directly.
"""

from __future__ import annotations

import json
from importlib import resources

import pytest
import torch

from honed.cli import main
from honed.data.conversation import Conversation, Message
from honed.data.tokenize import render_prompt_ids

TINY = str(resources.files("honed") / "resources" / "tiny_base")
QUESTION, OTHER = "What does HbA1c measure?", "Who won the World Cup?"
NEW = 6  # new tokens per reply
ANSWERS = ["Ferritin stores iron.", "TSH is a pituitary hormone.", "A CBC counts blood cells."]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def qa(kind, question, answer="x"):
    return {"kind": kind, "messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """The model's logits for both questions, its plain reply, and the files fitted from them."""
    from honed.infer.generate import ChatModel, GenerationSettings
    from honed.infer.refusal_calibration import reply_token_ids

    tmp = tmp_path_factory.mktemp("refusal-cli")
    bot = ChatModel.load(TINY, device="cpu")
    prompts = {q: render_prompt_ids(Conversation([Message("user", q)]), bot.tokenizer, bot.template) for q in (QUESTION, OTHER)}
    with torch.no_grad():
        first = {q: bot.model(input_ids=torch.tensor([p])).logits[0, -1].double() for q, p in prompts.items()}
    plain = bot.reply([Message("user", QUESTION)], GenerationSettings(max_new_tokens=NEW)).text
    opening = reply_token_ids(plain, bot.tokenizer, bot.template)[0]
    assert opening == int(first[QUESTION].argmax())  # the refusal opens as the greedy reply does
    assert all(reply_token_ids(a, bot.tokenizer, bot.template)[0] != opening for a in ANSWERS)  # so one token tells it apart
    # The reply once the opening is banned: the best other first token, then plain greedy decoding.
    masked = first[QUESTION].clone()
    masked[opening] = -torch.inf
    start = int(masked.argmax())
    with torch.no_grad():
        rest = bot.model.generate(input_ids=torch.tensor([prompts[QUESTION] + [start]]), max_new_tokens=NEW - 1, do_sample=False,
                                  eos_token_id=bot.stop_ids, pad_token_id=bot.tokenizer.pad_token_id)[0, len(prompts[QUESTION]) + 1:]
    banned = bot._decode([start, *rest.tolist()], NEW).text
    p_refuse = {q: torch.softmax(f, -1)[opening].item() for q, f in first.items()}

    mix = write_jsonl(tmp / "mix.jsonl", [qa("in_domain", f"q{i}", a) for i, a in enumerate(ANSWERS)] + [qa("refusal", "Bake bread?", plain)])
    val = write_jsonl(tmp / "val.jsonl", [qa("in_domain", QUESTION), qa("out_of_domain", OTHER), qa(None, "no kind")])
    cal = tmp / "ban_all.json"
    assert main(["guard", "fit-refusal", "--model", TINY, "--train", str(mix), "--threshold", "1", "--out", str(cal), "--device", "cpu"]) == 0
    return {"tmp": tmp, "plain": plain, "banned": banned, "p": p_refuse, "opening": opening, "mix": mix, "val": val, "cal": cal}


def chat(capsys, *flags) -> str:
    capsys.readouterr()
    assert main(["chat", "--model", TINY, "--prompt", QUESTION, "--max-new-tokens", str(NEW), "--device", "cpu", *flags]) == 0
    return capsys.readouterr().out.strip()


def test_fit_refusal_writes_the_openings_and_the_fitted_threshold(case, capsys):
    from honed.guard.refusal_fit import fit_threshold

    out = case["tmp"] / "fitted.json"
    argv = ["guard", "fit-refusal", "--model", TINY, "--train", str(case["mix"]), "--validation", str(case["val"]), "--out", str(out), "--device", "cpu"]
    assert main(argv) == 0
    cal = json.loads(out.read_text(encoding="utf-8"))
    assert cal["openings"] == [[case["opening"]]]
    assert cal["fitted"]["p_refuse"]["in_domain"] == pytest.approx([case["p"][QUESTION]], abs=2e-5)
    assert cal["fitted"]["p_refuse"]["out_of_domain"] == pytest.approx([case["p"][OTHER]], abs=2e-5)
    assert cal["threshold"] == pytest.approx(fit_threshold([case["p"][QUESTION]], [case["p"][OTHER]]), abs=1e-5)
    assert cal["fitted"]["unmarked_validation_records"] == 1 and cal["fitted"]["model"] == TINY
    before = out.read_bytes()
    capsys.readouterr()
    assert main(argv) == 2  # never replaced silently
    assert "exists" in capsys.readouterr().err and out.read_bytes() == before
    assert main([*argv, "--max-false-refusal", "0", "--overwrite"]) == 0
    assert json.loads(out.read_text(encoding="utf-8"))["fitted"]["rule"] == "max false refusal 0.0"
    folder = case["tmp"] / "adapter"  # a folder: its refusal_calibration.json, which --refusal-calibration DIR reads
    folder.mkdir()
    assert main([*argv[:-4], "--out", str(folder), "--threshold", "1", "--device", "cpu"]) == 0
    assert json.loads((folder / "refusal_calibration.json").read_text(encoding="utf-8"))["threshold"] == 1.0


def test_chat_and_generate_with_the_flag_change_the_refusing_reply(case, capsys, tmp_path):
    assert chat(capsys) == case["plain"]  # plain decoding opens with the refusal
    assert chat(capsys, "--refusal-calibration", str(case["cal"])) == case["banned"] != case["plain"]

    prompts = write_jsonl(tmp_path / "in.jsonl", [{"prompt": QUESTION}, {"prompt": OTHER}])
    for name, flags in (("plain", []), ("calibrated", ["--refusal-calibration", str(case["cal"])])):
        assert main(["generate", "--model", TINY, "--input", str(prompts), "--output", str(tmp_path / f"{name}.jsonl"),
                     "--max-new-tokens", str(NEW), "--device", "cpu", *flags]) == 0
    plain, calibrated = ([json.loads(line) for line in (tmp_path / f"{n}.jsonl").read_text(encoding="utf-8").splitlines()] for n in ("plain", "calibrated"))
    assert [r["response"] for r in plain][0] == case["plain"] and "refusal_probability" not in plain[0]
    assert calibrated[0]["response"] == case["banned"]
    assert calibrated[1]["response"] == plain[1]["response"]  # its greedy opening is no refusal's: untouched
    assert [r["refusal_probability"] for r in calibrated] == pytest.approx([case["p"][QUESTION], case["p"][OTHER]], abs=2e-5)


def test_eval_records_refusal_probability_and_its_auroc(case, tmp_path):
    from sklearn.metrics import roc_auc_score

    data = write_jsonl(tmp_path / "eval.jsonl", [qa("in_domain", QUESTION, "Average glucose."), qa("out_of_domain", OTHER, "Sorry.")])
    out = tmp_path / "report"
    assert main(["eval", "--model", TINY, "--data", str(data), "--output", str(out), "--max-new-tokens", str(NEW), "--device", "cpu",
                 "--no-progress", "--refusal-calibration", str(case["cal"])]) == 0
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    samples = [next(iter(r["models"].values())) for r in rows]
    assert [s["refusal_probability"] for s in samples] == pytest.approx([case["p"][QUESTION], case["p"][OTHER]], abs=2e-5)
    assert samples[0]["answer"] == case["banned"]
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    want = roc_auc_score([False, True], [case["p"][QUESTION], case["p"][OTHER]])
    assert report["models"][0]["metrics"]["domain"]["auroc"] == pytest.approx(want)
    assert report["refusal_calibration"]["threshold"] == 1.0


def test_serve_applies_it_to_chat_rows_of_a_batch_only(case):
    from fastapi.testclient import TestClient

    from honed.infer.generate import ChatModel, GenerationSettings
    from honed.serve.app import create_app
    from honed.serve.backends import HFBackend, Job
    from honed.serve.settings import ServeSettings

    backend = HFBackend.load(TINY, device="cpu", refusal_calibration=str(case["cal"]))
    with TestClient(create_app(backend, settings=ServeSettings())) as client:
        body = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": QUESTION}], "max_tokens": NEW}).json()
    assert body["choices"][0]["message"]["content"] == case["banned"]
    assert body["honed"]["refusal_probability"] == pytest.approx(case["p"][QUESTION], abs=2e-5)

    settings = GenerationSettings(max_new_tokens=NEW)
    chat_job = Job(backend.chat_prompt([Message("user", QUESTION)]), settings)
    text_job = Job(backend.text_prompt(QUESTION), settings, chat=False)  # a raw completion: no reply start to decide
    both = backend.run([chat_job, text_job])
    alone = HFBackend(ChatModel.load(TINY, device="cpu")).run([Job(text_job.prompt_ids, settings, chat=False)])[0]
    assert both[0].text == case["banned"] and both[0].refusal_probability == pytest.approx(case["p"][QUESTION], abs=2e-5)
    assert (both[1].text, both[1].refusal_probability) == (alone.text, None)


def test_serve_streams_the_refusal_probability_on_the_finishing_chunk(case):
    """The openai client's stream: same text and the same P(refuse) as the non-streamed reply, on the chunk with finish_reason."""
    import openai
    from fastapi.testclient import TestClient

    from honed.serve.app import create_app
    from honed.serve.backends import HFBackend
    from honed.serve.settings import ServeSettings

    backend = HFBackend.load(TINY, device="cpu", refusal_calibration=str(case["cal"]))
    messages = [{"role": "user", "content": QUESTION}]
    with TestClient(create_app(backend, settings=ServeSettings())) as client:
        oai = openai.OpenAI(base_url="http://testserver/v1", api_key="none", http_client=client, max_retries=0)
        whole = oai.chat.completions.create(model="honed", messages=messages, max_tokens=NEW)
        chunks = list(oai.chat.completions.create(model="honed", messages=messages, max_tokens=NEW, stream=True))
    p = whole.model_extra["honed"]["refusal_probability"]
    assert p == pytest.approx(case["p"][QUESTION], abs=2e-5)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == whole.choices[0].message.content == case["banned"]
    carrying = [c for c in chunks if (c.model_extra or {}).get("honed")]
    assert len(carrying) == 1 and carrying[0] is chunks[-1] and carrying[0].choices[0].finish_reason is not None
    assert carrying[0].model_extra["honed"] == {"refusal_probability": p}


def test_bad_inputs_are_named(case, capsys, tmp_path, tiny_model_dir):
    def error(argv) -> str:
        capsys.readouterr()
        assert main(argv) == 2
        return capsys.readouterr().err

    missing = tmp_path / "missing.json"
    assert f"--refusal-calibration {missing}: no refusal calibration" in error(["chat", "--model", TINY, "--prompt", "hi", "--refusal-calibration", str(missing)])
    data = write_jsonl(tmp_path / "eval.jsonl", [qa("in_domain", QUESTION)])
    for ranks in ([], ["--nproc-per-node", "2"]):  # stops before any model or worker
        assert f"--refusal-calibration {missing}" in error(["eval", "--model", TINY, "--data", str(data), "--output", str(tmp_path / "report"),
                                                           "--refusal-calibration", str(missing), *ranks])
    assert not (tmp_path / "report").exists()
    err = error(["serve", "--gguf", str(tmp_path / "m.gguf"), "--refusal-calibration", str(case["cal"])])
    assert "--refusal-calibration" in err and "GGUF" in err
    foreign = error(["chat", "--model", str(tiny_model_dir("llama3")), "--prompt", "hi", "--device", "cpu", "--refusal-calibration", str(case["cal"])])
    assert f"{case['cal']}: fitted for another tokenizer" in foreign
    fit = ["guard", "fit-refusal", "--model", TINY, "--out", str(tmp_path / "c.json"), "--device", "cpu"]
    assert "--train " + str(tmp_path / "nope.jsonl") + ": no such file" in error([*fit, "--train", str(tmp_path / "nope.jsonl"), "--threshold", "1"])
    assert "--validation FILE" in error([*fit, "--train", str(case["mix"])])
    unmarked = write_jsonl(tmp_path / "unmarked.jsonl", [qa(None, QUESTION)])
    assert f"{unmarked}: no record has a `kind`" in error([*fit, "--train", str(case["mix"]), "--validation", str(unmarked)])
    assert "--threshold 1.5" in error([*fit, "--train", str(case["mix"]), "--threshold", "1.5"])
    answers_only = write_jsonl(tmp_path / "answers.jsonl", [qa("in_domain", "q", a) for a in ANSWERS])
    assert f"{answers_only}: no refusal records" in error([*fit, "--train", str(answers_only), "--threshold", "1"])
    assert f"{answers_only}: fitting a refusal threshold needs" in error([*fit, "--train", str(case["mix"]), "--validation", str(answers_only)])
    assert not (tmp_path / "c.json").exists()  # nothing written half
