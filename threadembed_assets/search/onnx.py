"""A published sentence-transformers model as ONNX for CPU serving: the transformer exported once, its weights
quantized to int8 (onnxruntime's dynamic quantization, per channel), and an encoder that tokenizes, runs the graph
and pools as the model's own modules do, so `ChatIndex` encodes with it in place of PyTorch.

sentence-transformers' own ONNX backend (`backend="onnx"`, `export_dynamic_quantized_onnx_model`) goes through
`optimum-onnx`, whose releases require transformers < 4.58 while this project pins transformers 5; the export here
is the same graph by `torch.onnx.export` and the same quantization call that optimum makes.
"""

import inspect
import json
import logging
import time
import warnings
from pathlib import Path

from threadembed_assets.benchmark.score import scored
from threadembed_assets.chat.encoders import CONFIG_FILE, FLOAT_FILE, INT8_FILE
from threadembed_assets.chat.metrics import paired_test, verdict
from threadembed_assets.chat.retrievers import CachedEncoder, HeldVectors, dense_scores, pooled_vectors
from threadembed_assets.chat.task import Task

POOLINGS = ("mean", "cls")


def export_onnx(model, model_path: str, out_dir: Path, opset: int = 17) -> dict:
    """Export `model`, the sentence-transformers model loaded from `model_path` on the CPU (Transformer, Pooling
    mean|cls, optional Normalize), to `out_dir`: `model.onnx` (float32), `model_qint8.onnx` (int8 weights), the
    tokenizer and a config. Returns the config. A model of another shape is a clear error."""
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic

    names = [type(module).__name__ for module in model]
    if names[:2] != ["Transformer", "Pooling"] or any(name != "Normalize" for name in names[2:]):
        raise ValueError(f"ONNX export takes Transformer + Pooling [+ Normalize] models, not {' + '.join(names)}")
    pooling = model[1].get_config_dict().get("pooling_mode")
    if pooling not in POOLINGS:
        raise ValueError(f"ONNX export supports pooling {POOLINGS}, not {pooling!r}")
    transformer, tokenizer = model[0].auto_model.eval(), model.tokenizer
    sample = tokenizer(["an example message", "another, longer example message"], padding=True, return_tensors="pt")
    accepted = inspect.signature(transformer.forward).parameters
    inputs = [name for name in tokenizer.model_input_names if name in sample and name in accepted]

    class LastHiddenState(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, *tensors):
            return self.inner(**dict(zip(inputs, tensors, strict=True))).last_hidden_state

    out_dir.mkdir(parents=True, exist_ok=True)
    axes = {name: {0: "batch", 1: "tokens"} for name in [*inputs, "token_embeddings"]}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on constant branches (masks present, not causal)
        torch.onnx.export(
            LastHiddenState(transformer),
            tuple(sample[name] for name in inputs),
            str(out_dir / FLOAT_FILE),
            input_names=inputs,
            output_names=["token_embeddings"],
            dynamic_axes=axes,
            opset_version=opset,
            dynamo=False,
        )
    root = logging.getLogger()
    dropped = logging.NullHandler()  # the quantizer's advice goes to the root logger, which would install a handler
    root.addHandler(dropped)  # that prints every library's debug lines for the rest of the process
    try:
        quantize_dynamic(out_dir / FLOAT_FILE, out_dir / INT8_FILE, weight_type=QuantType.QInt8, per_channel=True)
    finally:
        root.removeHandler(dropped)
    tokenizer.save_pretrained(str(out_dir))
    config = {
        "source_model": str(Path(model_path).resolve()) if Path(model_path).exists() else model_path,
        "inputs": inputs,
        "pooling": pooling,
        "normalize": "Normalize" in names,
        "max_seq_length": int(model.max_seq_length),
        "dimension": int(model.get_embedding_dimension()),
        "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (out_dir / CONFIG_FILE).write_text(json.dumps(config, indent=1))
    return config


def compare_encoders(
    reference,
    candidate,
    tasks: list[Task],
    batch_size: int = 64,
    *,
    cache: CachedEncoder | None = None,
    reference_key: str = "",
    speed_texts: int = 512,
) -> dict:
    """Dense MRR@10 of `reference` (the PyTorch model, `reference_key` its cache key) and `candidate` (its export)
    on the same tasks, a document being the mean of its messages' vectors as search reads it
    (`retrievers.pooled_vectors`), by task, with the paired difference and its verdict, and the encoding speed of
    each (texts/s, both timed on the same first `speed_texts` messages of the tasks in the same run). With `cache`,
    vectors either model already has for a text are read from it and new ones kept, so that no text is encoded twice
    by one model across the run's assets."""
    cache = cache if cache is not None else HeldVectors()
    encoders = {"reference": (reference, reference_key), "candidate": (candidate, candidate.key)}
    by_task = {}
    for task in tasks:
        scores = {}
        for name, (encoder, key) in encoders.items():
            queries = cache.encode(encoder, key, task.queries, batch_size)
            docs = pooled_vectors(encoder, key, task.docs, cache, batch_size)
            scores[name] = scored(name, "dense", None, task, dense_scores(queries, docs)).mrr()
        delta, p_value = paired_test(scores["candidate"], scores["reference"])
        by_task[task.name] = {
            "queries": len(task.queries),
            "mrr@10_reference": round(float(scores["reference"].mean()), 4),
            "mrr@10_candidate": round(float(scores["candidate"].mean()), 4),
            "delta": round(float(delta), 4),
            "p_value": round(float(p_value), 4),
            "verdict": verdict(delta, p_value),
        }
    messages = [line for task in tasks for text in [*task.queries, *task.docs] for line in text.split("\n")]
    sample = list(dict.fromkeys(messages))[:speed_texts]
    seconds = {}
    for name, (encoder, _) in encoders.items():
        started = time.perf_counter()
        encoder.encode(sample, batch_size=batch_size, convert_to_numpy=True)
        seconds[name] = time.perf_counter() - started
    return {
        "tasks": by_task,
        "texts": len(sample),
        "texts_per_second_reference": round(len(sample) / max(seconds["reference"], 1e-9), 1),
        "texts_per_second_candidate": round(len(sample) / max(seconds["candidate"], 1e-9), 1),
        "speedup": round(seconds["reference"] / max(seconds["candidate"], 1e-9), 2),
    }
