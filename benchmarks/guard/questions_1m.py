"""Up to ~10^6 distinct clinical-lab questions from a seeded combinatorial generator, and their embeddings.

The gate benchmark needs an index of realistic in-domain questions (random vectors are IVF-PQ's worst
case and say nothing of real data), and no network is at hand, so the questions are composed from
lab tests, results, specimens, patients and question frames (English; `--lang zh` for Chinese).

    PYTHONPATH=src python benchmarks/guard/questions_1m.py embed --rows 1000000 --out DIR

writes DIR/emb-NNNNN.npy (EMBED_CHUNK rows each, atomically, so a crash keeps what was embedded and a
rerun resumes) with the embedder honed's gate uses for the questions' script: `honed guard fit`'s
default `auto` gate sends Latin-script questions to all-MiniLM-L6-v2 (`default`) and Chinese ones
to `zh-words` (8,192 floats a question: about 31 GiB at 10^6 rows). The texts are not stored: `generate` gives them back, row for row.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

EMBED_CHUNK = 8192

TESTS_EN = [
    "hemoglobin", "hematocrit", "white blood cell count", "platelet count", "MCV", "ferritin", "serum iron", "transferrin saturation",
    "vitamin B12", "folate", "glucose", "HbA1c", "fasting insulin", "total cholesterol", "LDL cholesterol", "HDL cholesterol",
    "triglycerides", "creatinine", "eGFR", "blood urea nitrogen", "potassium", "sodium", "calcium", "magnesium", "phosphate",
    "ALT", "AST", "alkaline phosphatase", "GGT", "bilirubin", "albumin", "total protein", "TSH", "free T4", "free T3", "cortisol",
    "prolactin", "testosterone", "estradiol", "hCG", "PSA", "CRP", "ESR", "procalcitonin", "D-dimer", "INR", "fibrinogen",
    "troponin", "BNP", "CK", "LDH", "lactate", "uric acid", "lipase", "amylase", "vitamin D", "parathyroid hormone", "ammonia",
    "homocysteine", "anti-CCP", "rheumatoid factor", "ANA", "urine protein", "urine albumin-to-creatinine ratio", "arterial pH",
    "bicarbonate", "reticulocyte count", "neutrophil count", "lymphocyte count", "eosinophil count",
]
RESULTS_EN = ["high", "low", "borderline", "slightly raised", "very high", "falling", "rising", "normal but symptomatic", "fluctuating", "undetectable"]
FRAMES_EN = [
    "What does {ar} {t} result mean {p}?",
    "Why might {t} be {r} {p}?",
    "Is {ar} {t} a concern {p}?",
    "How should {ar} {t} be followed up {p}?",
    "Which conditions can make {t} {r} {p}?",
    "Can medication make {t} {r} {p}?",
    "How often should {t} be rechecked {p} when it is {r}?",
    "Does {ar} {t} need a repeat test {p}?",
    "What other tests are ordered after {ar} {t} {p}?",
    "How reliable is {ar} {t} from a {s} {p}?",
    "Does fasting change {ar} {t} {p}?",
    "What is the reference range for {t} {p}, and when is it called {r}?",
    "Can a {s} give a falsely {r} {t} {p}?",
    "How is {t} measured in a {s} {p}?",
    "What symptoms go with {ar} {t} {p}?",
    "Should I worry about {ar} {t} {p}?",
    "Why was my {t} from a {s} reported as {r} {p}?",
    "Should {ar} {t} on a {s} be repeated {p}?",
]
SPECIMENS_EN = ["serum sample", "plasma sample", "hemolysed sample", "capillary sample", "fasting sample", "delayed sample",
                "lipemic sample", "EDTA tube", "heparin tube", "random urine sample", "24-hour urine collection", "point-of-care test"]
PATIENTS_EN = [
    "in an adult", "in a child", "in a newborn", "in an older adult", "during pregnancy", "after surgery", "in a blood donor",
    "in someone with diabetes", "in someone with kidney disease", "in someone with liver disease", "in an athlete after a race",
    "in a patient on dialysis", "in a patient on warfarin", "in a patient taking statins", "in a heavy drinker", "in a vegetarian",
    "after a heart attack", "in a patient with sepsis", "in a teenager", "in a postmenopausal woman", "in a man over 50",
    "in a patient on chemotherapy", "after a transfusion", "in someone with thyroid disease",
]

TESTS_ZH = ["血红蛋白", "红细胞压积", "白细胞计数", "血小板计数", "平均红细胞体积", "铁蛋白", "血清铁", "维生素B12", "叶酸", "血糖",
            "糖化血红蛋白", "胰岛素", "总胆固醇", "低密度脂蛋白", "高密度脂蛋白", "甘油三酯", "肌酐", "尿素氮", "血钾", "血钠", "血钙",
            "谷丙转氨酶", "谷草转氨酶", "碱性磷酸酶", "谷氨酰转移酶", "胆红素", "白蛋白", "促甲状腺激素", "游离T4", "皮质醇", "催乳素",
            "睾酮", "雌二醇", "HCG", "PSA", "C反应蛋白", "血沉", "降钙素原", "D-二聚体", "INR", "纤维蛋白原", "肌钙蛋白", "BNP",
            "肌酸激酶", "乳酸脱氢酶", "乳酸", "尿酸", "脂肪酶", "淀粉酶", "维生素D", "甲状旁腺激素", "血氨", "同型半胱氨酸", "尿蛋白"]
RESULTS_ZH = ["偏高", "偏低", "临界", "轻度升高", "明显升高", "持续下降", "持续上升", "正常但有症状", "波动", "测不出"]
FRAMES_ZH = ["{p}{t}{r}是什么意思？", "{p}{t}为什么会{r}？", "{p}{t}{r}需要担心吗？", "{p}{t}{r}要怎么复查？", "{p}哪些病会让{t}{r}？",
             "{p}吃药会让{t}{r}吗？", "{p}{t}{r}还要做哪些检查？", "{s}测的{t}{r}准吗？{p}呢？", "{p}空腹会影响{t}{r}吗？",
             "{p}{t}{r}有什么症状？", "{s}会让{t}假性{r}吗？{p}常见吗？", "{p}{t}的参考范围是多少，多少算{r}？"]
SPECIMENS_ZH = ["血清标本", "血浆标本", "溶血标本", "指尖血", "空腹血", "放置过久的标本", "脂血标本", "EDTA管", "肝素管", "随机尿", "24小时尿", "床旁检测"]
PATIENTS_ZH = ["成人", "儿童", "新生儿", "老年人", "孕妇", "术后病人", "献血者", "糖尿病人", "肾病患者", "肝病患者", "运动员跑完比赛后",
               "透析病人", "吃华法林的人", "吃他汀的人", "长期饮酒的人", "素食者", "心梗后病人", "脓毒症病人", "青少年", "绝经后女性",
               "50岁以上男性", "化疗病人", "输血后病人", "甲状腺病人"]

VOCAB = {"en": (FRAMES_EN, TESTS_EN, RESULTS_EN, SPECIMENS_EN, PATIENTS_EN), "zh": (FRAMES_ZH, TESTS_ZH, RESULTS_ZH, SPECIMENS_ZH, PATIENTS_ZH)}


def capacity(lang: str = "en") -> int:
    """How many distinct slot combinations the generator has for `lang`."""
    return int(np.prod([len(v) for v in VOCAB[lang]]))


def generate(n: int, seed: int = 0, lang: str = "en") -> list[str]:
    """`n` distinct questions: a seeded sample, without replacement, of the slot combinations
    (frames without a specimen slot can repeat a text across specimens, so duplicates are skipped
    and the sample is drawn a little larger)."""
    frames, tests, results, specimens, patients = VOCAB[lang]
    radix = [len(frames), len(tests), len(results), len(specimens), len(patients)]
    total = capacity(lang)
    order = np.random.default_rng(seed).permutation(total)  # 10^7 int64 is 80 MB: fine for a benchmark
    out, seen = [], set()
    for code in order:
        code = int(code)
        slots = []
        for size in reversed(radix):
            code, digit = divmod(code, size)
            slots.append(digit)
        p, s, r, t, f = slots
        article = "an" if results[r][0] in "aeiou" else "a"
        text = frames[f].format(t=tests[t], r=results[r], ar=f"{article} {results[r]}", s=specimens[s], p=patients[p])
        if text not in seen:
            seen.add(text)
            out.append(text)
            if len(out) == n:
                return out
    raise ValueError(f"the {lang} generator has only {len(out)} distinct questions, not {n}")


def _save_atomic(path: Path, array: np.ndarray) -> None:
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, array)
    os.replace(tmp, path)


def embed(out: Path, rows: int, lang: str, embedder_spec: str, batch_size: int) -> None:
    """Embed the first `rows` generated questions into `out`/emb-*.npy, resuming from the chunks already there."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn, TimeRemainingColumn

    from honed.guard.embedders import load_embedder

    out.mkdir(parents=True, exist_ok=True)
    texts = generate(rows, lang=lang)
    embedder = load_embedder(embedder_spec)
    meta = {"rows": rows, "lang": lang, "embedder": embedder.name, "chunk": EMBED_CHUNK}
    (out / "meta.json").write_text(json.dumps(meta))
    done = sum(EMBED_CHUNK for i in range(0, rows, EMBED_CHUNK) if (out / f"emb-{i // EMBED_CHUNK:05d}.npy").exists())
    t0, fresh = time.perf_counter(), 0
    columns = ("{task.description}", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns) as bar:
        task = bar.add_task(f"embedding ({embedder.name})", total=rows, completed=min(done, rows))
        for start in range(0, rows, EMBED_CHUNK):
            path = out / f"emb-{start // EMBED_CHUNK:05d}.npy"
            if path.exists():
                continue
            chunk = texts[start : start + EMBED_CHUNK]
            _save_atomic(path, embedder.encode(chunk, batch_size=batch_size).astype(np.float32))
            fresh += len(chunk)
            bar.advance(task, len(chunk))
            rate = fresh / (time.perf_counter() - t0)
            print(f"{start + len(chunk)} rows; {rate:.0f} texts/s; 10^6 would take {1e6 / rate / 60:.0f} min", flush=True)


def load_embeddings(folder: Path) -> tuple[np.ndarray, list[str], dict]:
    """The stored embeddings (all chunks, in order), their texts and meta.json."""
    meta = json.loads((folder / "meta.json").read_text())
    chunks = sorted(folder.glob("emb-[0-9][0-9][0-9][0-9][0-9].npy"))
    vectors = np.concatenate([np.load(c) for c in chunks])
    return vectors, generate(meta["rows"], lang=meta["lang"])[: len(vectors)], meta


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("embed", help="embed the first --rows generated questions into --out (resumable)")
    e.add_argument("--rows", type=int, default=1_000_000)
    e.add_argument("--out", required=True)
    e.add_argument("--lang", choices=sorted(VOCAB), default="en")
    e.add_argument("--embedder", help="default: what `honed guard fit`'s auto gate uses for the language (en: default = MiniLM, zh: zh-words)")
    e.add_argument("--batch-size", type=int, default=256)
    s = sub.add_parser("sample", help="print a few generated questions")
    s.add_argument("--lang", choices=sorted(VOCAB), default="en")
    s.add_argument("-n", type=int, default=10)
    a = p.parse_args()
    if a.cmd == "sample":
        print(f"{capacity(a.lang)} slot combinations")
        print("\n".join(generate(a.n, lang=a.lang)))
        return
    spec = a.embedder or {"en": "default", "zh": "zh-words"}[a.lang]
    embed(Path(a.out), a.rows, a.lang, spec, a.batch_size)


if __name__ == "__main__":
    main()
