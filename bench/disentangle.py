"""Disentanglement on the IRC corpus's dev split: the online linker against "Previous" and silence cuts, and its speed.

    python bench/disentangle.py CORPUS [--train-files 30] [--model PATH] [--pytorch]

CORPUS is the IRC disentanglement corpus in its own format (`train/` and `dev/` of `<stem>.raw.txt` and
`<stem>.annotation.txt`). The linker is fitted on --train-files logs of the train split (evenly spaced in name
order), its new-conversation bias tuned on 10 other train logs, and it and the baselines are scored on every dev log
with the paper's metrics, with the model's similarity (--model: the best published stage by default), without it,
with it but without the conversation pass, and with it fitted on every message in each boosting round (the default
learns from half, `LinkerParams.query_share`). The model encodes as the `disentangler` asset has it encode: with its
published ONNX int8 export (`onnx_model`) where there is one made from it, unless --pytorch; with the export, the
linker is also fitted on PyTorch's vectors, and the two compared on the same lines. Speed: messages per
second of linking the dev split end to end, encoding included, against encoding the same messages alone in the same
run.
"""

import argparse
import time
from pathlib import Path

import numpy as np

from threadembed_assets.chat.corpus import read_split
from threadembed_assets.chat.encoders import ONNX_MODEL, export_of
from threadembed_assets.chat.link_metrics import line_hits
from threadembed_assets.chat.linker import LinkerParams, fit, tune_new_bias
from threadembed_assets.chat.metrics import paired_test, verdict
from threadembed_assets.chat.retrievers import shared_embeddings
from threadembed_assets.disentangle.assets import METRICS, compare, sentence_encoder
from threadembed_assets.resources import ModelStore
from threadembed_assets.settings import exit_quietly
from threadembed_assets.training.assets import ranker_model

PUBLISHED_TEST = {  # Kummerfeld et al. (ACL 2019), test split: theirs, for reference, not measured here
    "feedforward (paper, test)": (None, None, 72.3, 91.3, 75.6, None, None, 36.2),
    "10-model vote (paper, test)": (None, None, 73.5, 91.5, 76.0, None, None, 38.0),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("corpus", type=Path)
    parser.add_argument("--train-files", type=int, default=30)
    parser.add_argument("--model", help="The model whose similarity the linker reads (default: the best published).")
    parser.add_argument("--pytorch", action="store_true", help="Encode with PyTorch even where an ONNX export exists.")
    args = parser.parse_args()
    train, dev = read_split(args.corpus / "train"), read_split(args.corpus / "dev")
    step = max(len(train) // (args.train_files + 10), 1)
    picked = train[::step][: args.train_files + 10]
    fit_logs, tune_logs = picked[: args.train_files], picked[args.train_files :]
    models = ModelStore()
    model_path = args.model or ranker_model(models)
    onnx = None if args.pytorch else export_of(model_path, models.latest(ONNX_MODEL))
    encoder = f"{model_path} [ONNX int8 {onnx.name}]" if onnx else f"{model_path} [PyTorch]"
    rows: dict[str, dict] = {}
    hits: dict[str, np.ndarray] = {}
    with shared_embeddings() as cache:  # a re-run reads the vectors of the run before
        with_model = sentence_encoder(model_path, "cpu", 64, cache, onnx)
        one_pass, every_message = LinkerParams(conversation_pass=False), LinkerParams(query_share=1.0)
        variants = [
            ("text and chat", None, None),
            ("with the model, one pass", with_model, one_pass),
            ("with the model, every message each round", with_model, every_message),
        ]
        if onnx:  # the same linker on PyTorch's vectors, to compare the encoders on the same lines
            variants.append(("with the model, PyTorch encoding", sentence_encoder(model_path, "cpu", 64, cache), None))
        for name, encode, params in [*variants, ("with the model", with_model, None)]:
            started = time.perf_counter()
            linker = fit(fit_logs, encode, params)
            tune_new_bias(linker, tune_logs, encode)
            print(f"fitted ({name}) on {sum(len(g) for g in fit_logs)} lines in {time.perf_counter() - started:.0f} s")
            scores, parents = compare(linker, dev, encode)
            rows.update({k: v for k, v in scores.items() if k != "disentangler"})
            rows[f"disentangler ({name})"] = scores["disentangler"]
            hits[name] = line_hits(dev, parents["disentangler"])
    annotated = sum(len(log.annotated()) for log in dev)
    print(f"\ndev split, {len(dev)} logs, {annotated} annotated lines; model {encoder}")
    print("| system | " + " | ".join(METRICS) + " |")
    print("|" + " --- |" * (len(METRICS) + 1))
    for name, row in rows.items():
        print(f"| {name} | " + " | ".join(f"{row[m]:.1f}" for m in METRICS) + " |")
    for name, values in PUBLISHED_TEST.items():
        print(f"| {name} | " + " | ".join("" if v is None else f"{v:.1f}" for v in values) + " |")
    print("\nper-line link accuracy, paired randomization test (delta of the disentangler with the model):")
    for baseline, outcome in rows["disentangler (with the model)"].items():
        if baseline.startswith("vs_"):
            print(f"  {baseline}: {outcome['verdict']} {outcome['delta']:+.4f} p={outcome['p']:.4f}")
    others = [("text and chat", "without the model"), ("with the model, one pass", "one pass")]
    others += [("with the model, every message each round", "fitted on every message each round")]
    others += [("with the model, PyTorch encoding", "on PyTorch's vectors")] if onnx else []
    for other, what in others:
        delta, p = paired_test(hits["with the model"], hits[other])
        print(f"  vs the linker {what}: {verdict(delta, p)} {delta:+.4f} p={p:.4f}")
    texts = [t for log in dev for t in log.texts]
    bare = {}  # speed: nothing cached
    for name, folder in [("PyTorch", None), *([("ONNX int8", onnx)] if onnx else [])]:
        encode = sentence_encoder(model_path, "cpu", 64, None, folder)
        started = time.perf_counter()
        encode(texts)
        bare[name] = len(texts) / (time.perf_counter() - started)
    started = time.perf_counter()
    for log in dev:
        linker.link(log, encode)  # the last linker, with the last encoder
    linked = len(texts) / (time.perf_counter() - started)
    print(
        f"\nspeed: {linked:.0f} messages/s linked end to end (encoding included), {bare[name]:.0f} messages/s encoded "
        f"alone: {linked / bare[name]:.2f}x bare encoding ({len(texts)} messages, "
        f"{np.mean([len(t) for t in texts]):.0f} chars; {name} encodes)"
    )
    if onnx:
        speedup = bare[name] / bare["PyTorch"]
        print(f"encoded alone by PyTorch: {bare['PyTorch']:.0f} messages/s; ONNX int8 {speedup:.2f}x PyTorch")
    return 0


if __name__ == "__main__":
    exit_quietly(main())
