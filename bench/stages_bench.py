"""Selection stages: language-ID accuracy and speed per library, docs/s of each stage and of the whole
job against a plain fastText loop, and our MinHash dedup against datatrove's, on the same input.

    python bench/stages_bench.py [--docs 20000] [--per-language 50] [--lingua-high]

Prints, in one run (with the load average, as the machine is shared):
1. language ID on the gettext sample of `pipeline.locales` (translated message catalogs that ship
   with the install): accuracy per language and docs/s of each library (gcld3 is listed when it
   imports; it needs a protobuf compiler to build), and the speed of a fastText language-ID model
   (lid.176.bin's format; trained here on half the sample, as no such model ships in a package);
2. docs/s of each stage as a plain loop in one process (language ID, Gopher+C4 filters, MinHash
   band keys, token counts, fastText predict);
3. the whole job (`--languages en --filters gopher,c4 --dedup minhash --scorer fasttext --keep-top
   0.3`) and the scorer-only job on the DirectRunner, as docs/s and as ratios to the fastText loop;
4. dedup alone: our job with `--dedup minhash` (no scorer) against datatrove 0.10's four-step
   MinHash pipeline (signatures, buckets, clusters, filter; same 14x8 bands, 5-grams; sha1 hashing,
   as its xxhash path fails with xxhash 4) on the same JSONL files, one worker each, with the number
   of documents each removes. datatrove (and spaCy, for its word tokenizer) is the `bench` extra.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from score_bench import DOMAINS, documents, rate, write_inputs  # noqa: E402

from pipeline.corpus import CorpusOptions, build_corpus  # noqa: E402
from pipeline.dedup import DedupOptions, band_keys  # noqa: E402
from pipeline.filters import first_failure, parse_filters  # noqa: E402
from pipeline.job import ScoreJobConfig, run_score_job  # noqa: E402
from pipeline.langid import LanguageIdentifier, LanguageOptions  # noqa: E402
from pipeline.locales import multilingual_sample  # noqa: E402
from pipeline.registry import ScorerConfig  # noqa: E402
from pipeline.select import Selection  # noqa: E402
from pipeline.tokenize import TokenCounter, train_byte_level_bpe  # noqa: E402
from scorers.fasttext import FastTextQualityClassifier, load_model, normalize  # noqa: E402

LOCALES = ("en", "de", "fr", "es", "it", "pt", "nl", "sv", "pl", "ru", "uk", "cs", "tr", "ja", "zh_CN", "ko")
IN_PROCESS = ["--direct_running_mode=in_memory", "--direct_num_workers=1"]


def mixed_documents(corpus: Path, n_docs: int) -> list[tuple[str, str]]:
    """The bench corpus's paragraphs, domains taken in turn, cycled to `n_docs` (so repeats, which
    dedup should find, appear once every domain's paragraphs are used)."""
    per = {d: [p for p in documents(corpus, 10**6) if p[0] == d] for d in DOMAINS}
    distinct = {d: list(dict.fromkeys(ps)) for d, ps in per.items()}
    return [distinct[DOMAINS[i % 3]][(i // 3) % len(distinct[DOMAINS[i % 3]])] for i in range(n_docs)]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _gcld3():
    try:
        import gcld3
    except ImportError:
        return None
    detector = gcld3.NNetLanguageIdentifier(min_num_bytes=0, max_num_bytes=2000)

    def identify(texts):
        results = [detector.FindLanguage(text=t) for t in texts]
        return [r.language.split("-")[0] for r in results], [r.probability for r in results]

    return identify


def language_table(per_language: int, lingua_high: bool) -> dict:
    sample = multilingual_sample(LOCALES, per_language)
    texts, gold = [t for _, t in sample], [c for c, _ in sample]
    models = ["lingua", "langid"] + (["lingua-high"] if lingua_high else [])
    out: dict = {"docs": len(texts), "languages": sorted(set(gold)), "models": {}}
    for name in [*models, "gcld3"]:
        if name == "gcld3":
            identify = _gcld3()
            if identify is None:
                out["models"]["gcld3"] = "not installed (its wheel builds only with a protobuf compiler)"
                continue
            load = 0.0
        else:
            start = time.perf_counter()
            identifier = LanguageIdentifier(name).setup()
            identifier.identify(["warm up the model"])
            load, identify = time.perf_counter() - start, identifier.identify
        start = time.perf_counter()
        found, _ = identify(texts)
        seconds = time.perf_counter() - start
        per: dict[str, list[bool]] = defaultdict(list)
        for g, f in zip(gold, found, strict=True):
            per[g].append(g == f)
        out["models"][name] = {
            "accuracy": round(sum(map(sum, per.values())) / len(gold), 4),
            "per_language": {k: round(sum(v) / len(v), 3) for k, v in sorted(per.items())},
            "docs_per_s": round(rate(len(texts), seconds), 1),
            "load_s": round(load, 2),
        }
        row = out["models"][name]
        log(f"language ID {name}: {row['accuracy']} at {row['docs_per_s']} docs/s")
    out["models"]["fasttext_trained_here"] = fasttext_lid_row(sample)
    return out


def fasttext_lid_row(sample: list[tuple[str, str]]) -> dict:
    """A fastText language-ID model (the format of lid.176.bin and GlotLID) trained here on half the
    sample: accuracy on the other half; speed on the whole sample, as the `--language-model PATH`
    stage reads it."""
    import fasttext

    train, test = sample[::2], sample[1::2]
    with tempfile.TemporaryDirectory(prefix="lid-") as tmp:
        path = Path(tmp) / "train.txt"
        path.write_text("".join(f"__label__{c} {' '.join(t.split())}\n" for c, t in train))
        params = {"minn": 2, "maxn": 4, "dim": 16, "epoch": 50, "lr": 0.5, "thread": 1, "seed": 0}
        fasttext.train_supervised(str(path), verbose=0, **params).save_model(str(Path(tmp) / "lid.bin"))
        identifier = LanguageIdentifier(str(Path(tmp) / "lid.bin")).setup()
        found, _ = identifier.identify([t for _, t in test])
        start = time.perf_counter()
        identifier.identify([t for _, t in sample])
        seconds = time.perf_counter() - start
    accuracy = sum(f == c for f, (c, _) in zip(found, test, strict=True)) / len(test)
    return {"accuracy_held_out_half": round(accuracy, 4), "docs_per_s": round(rate(len(sample), seconds), 1)}


def stage_rates(texts: list[str], model_path: str, tokenizer_json: str) -> dict[str, float]:
    """docs/s of each stage as a plain loop over the same texts, one process."""
    n = len(texts)
    identifier = LanguageIdentifier("lingua").setup()
    filters = parse_filters("gopher,c4")
    counter = TokenCounter(tokenizer_json).setup()
    model = load_model(model_path)
    steps = {
        "language_id": lambda: identifier.identify(texts),
        "filters_gopher_c4": lambda: [first_failure(filters, t) for t in texts],
        "minhash_band_keys": lambda: band_keys(texts, DedupOptions("minhash")),
        "exact_hash": lambda: band_keys(texts, DedupOptions("exact")),
        "token_count": lambda: counter.count(texts),
        "fasttext_loop": lambda: [model.predict(normalize(t), k=-1) for t in texts],
    }
    out = {}
    for name, step in steps.items():
        start = time.perf_counter()
        step()
        out[name] = round(rate(n, time.perf_counter() - start), 1)
        log(f"{name}: {out[name]} docs/s")
    return out


def run_job(inputs, out: Path, **stages) -> tuple[float, dict]:
    config = ScoreJobConfig(inputs=inputs, output=str(out), **stages)
    start = time.perf_counter()
    result = run_score_job(config, beam_args=IN_PROCESS)
    return time.perf_counter() - start, result


def datatrove_minhash(files: list[str], work: Path) -> tuple[float, int] | str:
    """(seconds, documents removed) of datatrove's MinHash pipeline, or why it could not run."""
    try:
        from datatrove.executor import LocalPipelineExecutor
        from datatrove.pipeline.dedup.minhash import MinhashConfig
        from datatrove.utils.hashing import HashConfig

        # sha1: datatrove 0.10.1's xxhash path passes str to xxhash 4, which wants bytes (TypeError)
        hashing = HashConfig(precision=64, hash_fc="sha1")
        config = MinhashConfig(num_buckets=14, hashes_per_bucket=8, n_grams=5, hash_config=hashing)
        steps = _datatrove_steps(work / "input", work, config)
    except ImportError as exc:  # datatrove is the bench extra; its English word tokenizer needs spaCy
        return f"datatrove cannot run: {exc}"
    (work / "input").mkdir(parents=True)
    for f in files:
        os.link(f, work / "input" / Path(f).name)
    tasks = [1, config.num_buckets, 1, 1]
    start = time.perf_counter()
    try:
        for i, (pipeline, n) in enumerate(zip(steps, tasks, strict=True)):
            logs = str(work / f"logs{i}")
            LocalPipelineExecutor(pipeline=pipeline, tasks=n, workers=1, logging_dir=logs).run()
    except Exception as exc:  # noqa: BLE001 - the bench reports why the peer could not run
        return f"datatrove failed: {type(exc).__name__}: {exc}"
    seconds = time.perf_counter() - start
    kept = sum(1 for p in (work / "out").rglob("*.jsonl*") for _ in _lines(p))
    return seconds, kept


def _datatrove_steps(data: Path, work: Path, config) -> list[list]:
    """Signatures, buckets (one task per band), clusters, filter: datatrove's README recipe."""
    from datatrove.pipeline.dedup.minhash import (
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter

    sigs, buckets, remove = str(work / "sigs"), str(work / "buckets"), str(work / "remove")
    return [
        [JsonlReader(str(data)), MinhashDedupSignature(output_folder=sigs, config=config)],
        [MinhashDedupBuckets(input_folder=sigs, output_folder=buckets, config=config)],
        [MinhashDedupCluster(input_folder=buckets, output_folder=remove, config=config)],
        [JsonlReader(str(data)), MinhashDedupFilter(input_folder=remove), JsonlWriter(str(work / "out"))],
    ]


def _lines(path: Path):
    import gzip

    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as fh:
        yield from fh


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--docs", type=int, default=20_000)
    parser.add_argument("--per-language", type=int, default=50)
    parser.add_argument(
        "--lingua-high", action="store_true", help="also lingua's high-accuracy mode (~1 min load)"
    )
    args = parser.parse_args()
    logging.getLogger("apache_beam").setLevel(logging.ERROR)
    load_before = os.getloadavg()
    result: dict = {"load_before": [round(x, 2) for x in load_before]}
    result["language_id"] = language_table(args.per_language, args.lingua_high)
    with tempfile.TemporaryDirectory(prefix="stages-bench-") as tmp:
        tmp = Path(tmp)
        build_corpus(tmp / "corpus", CorpusOptions())
        docs = mixed_documents(tmp / "corpus", args.docs)
        texts = [t for _, t in docs]
        inputs = write_inputs(docs, tmp / "in", 2)
        positive = [t for d, t in docs if d == "prose"][:2000]
        negative = [t for d, t in docs if d != "prose"][:2000]
        model = str(FastTextQualityClassifier(preset="dclm").fit(positive, negative).save(tmp / "q.bin"))
        tokenizer = train_byte_level_bpe(texts[:5000]).to_str()
        (tmp / "tokenizer.json").write_text(tokenizer)
        result["stages_docs_per_s"] = stage_rates(texts, model, tokenizer)
        loop = result["stages_docs_per_s"]["fasttext_loop"]
        scorer = ScorerConfig("fasttext", model=model)
        common = {"tokenizer": str(tmp / "tokenizer.json")}
        seconds, plain = run_job(
            inputs, tmp / "plain", scorer=scorer, selection=Selection(keep_top=0.3), **common
        )
        full_s, full = run_job(
            inputs,
            tmp / "full",
            scorer=scorer,
            selection=Selection(keep_top=0.3),
            language=LanguageOptions(languages=("en",)),
            filters=parse_filters("gopher,c4"),
            dedup=DedupOptions("minhash"),
            **common,
        )
        dedup_s, dedup = run_job(inputs, tmp / "dedup", dedup=DedupOptions("minhash"), **common)
        result["jobs"] = {
            "scorer_only": {
                "docs_per_s": round(rate(len(docs), seconds), 1),
                "ratio_to_loop": round(rate(len(docs), seconds) / loop, 3),
            },
            "all_stages": {
                "docs_per_s": round(rate(len(docs), full_s), 1),
                "ratio_to_loop": round(rate(len(docs), full_s) / loop, 3),
                "kept": full["kept"],
                "dropped": {k: v for k, v in full.items() if k.startswith("dropped_")},
            },
            "dedup_only": {
                "docs_per_s": round(rate(len(docs), dedup_s), 1),
                "removed": dedup["dropped_duplicate"],
            },
        }
        files = [f for fs in inputs.values() for f in fs]
        peer = datatrove_minhash(files, tmp / "datatrove")
        if isinstance(peer, str):
            result["datatrove_minhash"] = peer
        else:
            dt_s, dt_kept = peer
            result["datatrove_minhash"] = {
                "docs_per_s": round(rate(len(docs), dt_s), 1),
                "removed": len(docs) - dt_kept,
                "ours_over_datatrove": round(dt_s / dedup_s, 3),
            }
    result["docs"] = args.docs
    result["load_after"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
