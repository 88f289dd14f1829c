"""Model cards for exported Phalanx models: Hub metadata, layer table, evaluation and provenance.

The card is ``huggingface_hub.ModelCard`` content: YAML metadata from ``ModelCardData`` (with a
``model-index`` built from lm-eval results) followed by the body rendered from
``templates/model_card.md`` with ``string.Template`` (no Jinja dependency).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from string import Template
from typing import TYPE_CHECKING, Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from modeling_phalanx.configuration_phalanx import (
    FULL_ATTENTION,
    HYENA_LI,
    HYENA_MR,
    HYENA_SE,
    MLSTM_MIXER,
    PHALANX_MIXER,
    SLIDING_ATTENTION,
)
from phalanx_conversion import CONVERSION_RECORD

if TYPE_CHECKING:
    from modeling_phalanx import PhalanxConfig

TEMPLATE_DIR = Path(__file__).resolve().parent / "templates"
PROVENANCE_KEYS = ("source_model_type", "source_path", "converted_layers")
PROVENANCE_ALIASES = {"model_type": "source_model_type", "source": "source_path"}
LM_EVAL_URL = "https://github.com/EleutherAI/lm-evaluation-harness"
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
MIXER_NAMES = {
    FULL_ATTENTION: "full attention",
    SLIDING_ATTENTION: "sliding-window attention",
    PHALANX_MIXER: "Phalanx (sliding window recurrence)",
    HYENA_SE: "Hyena-SE (short explicit filter)",
    HYENA_MR: "Hyena-MR (medium regularized filter)",
    HYENA_LI: "Hyena-LI (long implicit filter)",
    MLSTM_MIXER: "mLSTM (xLSTM matrix memory)",
}


def _natural_key(name: str) -> list[str | int]:
    """Sort key that orders ``task_64`` before ``task_128``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def load_results(path: str | Path) -> dict[str, Any]:
    """Read lm-eval results JSON (``simple_evaluate`` output): ``results`` maps tasks to metric dicts.

    ``FileNotFoundError`` if missing, ``ValueError`` if it is not JSON or not lm-eval output.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"results file not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is not JSON: {err}") from err
    results = data.get("results") if isinstance(data, dict) else None
    if not isinstance(results, dict) or not results or not all(isinstance(m, dict) for m in results.values()):
        raise ValueError(f"{path} is not lm-eval output (expected a 'results' object mapping tasks to metrics)")
    if not metric_values(data):
        raise ValueError(f"{path} is not lm-eval output (no numeric 'metric,filter' entries in 'results')")
    return data


def metric_values(results: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Numeric metrics per task from lm-eval results, e.g. ``{"phalanx_bpb": {"bits_per_byte": 1.9}}``.

    lm-eval keys are ``"<metric>,<filter>"``; the filter is dropped when it is ``none``; stderr entries
    and non-numeric values (``"N/A"``, aliases) are skipped.
    """
    table: dict[str, dict[str, float]] = {}
    for task, metrics in sorted(results["results"].items(), key=lambda item: _natural_key(item[0])):
        for key, value in metrics.items():
            name, sep, filt = key.partition(",")
            if not sep or name.endswith("_stderr") or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            table.setdefault(task, {})[name if filt == "none" else f"{name} ({filt})"] = float(value)
    return table


def load_provenance(model_dir: str | Path) -> dict[str, Any] | None:
    """The conversion record ``phalanx_conversion.json`` of a converted model folder, or None if absent.

    Required keys are :data:`PROVENANCE_KEYS`; ``model_type`` and ``source`` (the field names of
    ``phalanx_conversion.ConversionResult``) are read as ``source_model_type`` and ``source_path``.
    """
    path = Path(model_dir) / CONVERSION_RECORD
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"corrupt {CONVERSION_RECORD} in {model_dir}: {err}") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object")
    for alias, key in PROVENANCE_ALIASES.items():
        if key not in data and alias in data:
            data[key] = data.pop(alias)
    missing = [k for k in PROVENANCE_KEYS if k not in data]
    if missing:
        raise ValueError(f"{path} lacks {', '.join(missing)}")
    return data


def hub_base_model(provenance: dict[str, Any] | None) -> str | None:
    """The conversion source as a Hub id (``org/name`` that is not a local path), else None."""
    source = provenance.get("source_path") if provenance is not None else None
    if isinstance(source, str) and _REPO_ID.match(source) and not Path(source).exists():
        return source
    return None


def eval_limit(results: dict[str, Any]) -> int | float | None:
    """lm-eval's ``--limit`` of a run (documents per task, or a fraction of each task), None for full tasks."""
    return (results.get("config") or {}).get("limit")


def eval_results(results: dict[str, Any]) -> list[EvalResult]:
    """``model-index`` entries, one per task and metric, attributed to lm-evaluation-harness (and its ``--limit``)."""
    limit = eval_limit(results)
    source = "lm-evaluation-harness" if limit is None else f"lm-evaluation-harness (--limit {limit})"
    return [
        EvalResult(
            task_type="text-generation",
            task_name="Text Generation",
            dataset_type=task,
            dataset_name=task,
            dataset_split="test",
            metric_type=metric,
            metric_name=metric,
            metric_value=round(value, 6),
            source_name=source,
            source_url=LM_EVAL_URL,
        )
        for task, metrics in metric_values(results).items()
        for metric, value in metrics.items()
    ]


def card_data(
    *,
    model_name: str,
    license: str,
    results: dict[str, Any] | None = None,
    provenance: dict[str, Any] | None = None,
) -> ModelCardData:
    """Hub metadata: license, library, pipeline, tags, base model of conversions, model-index."""
    tags = ["phalanx", "sliding-window-recurrence", "hybrid", "custom_code"]
    if provenance is not None:
        tags += ["converted", f"converted-from-{provenance['source_model_type']}"]
    return ModelCardData(
        model_name=model_name,
        license=license,
        library_name="transformers",
        pipeline_tag="text-generation",
        tags=tags,
        base_model=hub_base_model(provenance),
        eval_results=eval_results(results) if results else None,
    )


def layer_table(config: PhalanxConfig) -> str:
    """Markdown table of the decoder's layers: index, mixer kind and what it sees."""
    block_len, window_blocks = config.swr_block_len, config.swr_window_blocks
    low, high = config.hyena_mr_decay
    details = {
        FULL_ATTENTION: f"{config.num_attention_heads} heads, {config.num_key_value_heads} KV heads",
        SLIDING_ATTENTION: f"window {config.sliding_window} tokens",
        PHALANX_MIXER: (
            f"{config.phalanx_num_heads} heads of dim {config.phalanx_head_dim}, blocks of {block_len}, "
            f"{window_blocks} blocks ({(window_blocks - 1) * block_len + 1}-{window_blocks * block_len} tokens)"
        ),
        HYENA_SE: f"{config.hyena_se_len} taps",
        HYENA_MR: f"{config.hyena_mr_len} taps, decay rates {low:g}-{high:g} per tap",
        HYENA_LI: f"{config.hyena_li_modes} modes over the whole sequence",
        MLSTM_MIXER: (
            f"{config.mlstm_num_heads} heads, key dim {int(config.hidden_size * config.mlstm_qk_dim_factor)}, "
            f"value dim {int(config.hidden_size * config.mlstm_v_dim_factor)}, {config.mlstm_forget_gate} forget gate, "
            f"gate soft cap {config.mlstm_gate_soft_cap}"
        ),
    }
    rows = ["| layer | mixer | details |", "|---:|---|---|"]
    rows += [
        f"| {i} | {MIXER_NAMES.get(kind, kind)} | {details.get(kind, '')} |"
        for i, kind in enumerate(config.layer_types)
    ]
    return "\n".join(rows)


def _results_section(results: dict[str, Any] | None) -> str:
    if not results:
        return "No evaluation results were supplied at export time (`phalanx export --eval-results`)."
    rows = ["| task | metric | value |", "|---|---|---:|"]
    rows += [
        f"| {task} | {metric} | {value:.6g} |"
        for task, metrics in metric_values(results).items()
        for metric, value in metrics.items()
    ]
    max_length = (results.get("config") or {}).get("max_length")
    note = f" with `max_length={max_length}`" if max_length else ""
    text = (
        f"lm-evaluation-harness{note} (tasks from the Phalanx repository's `eval/tasks/`, run offline; "
        "distances of the passkey and MQAR tasks are in bytes of text):\n\n" + "\n".join(rows)
    )
    return text + _limit_note(results)


def _limit_note(results: dict[str, Any]) -> str:
    """A warning under the results when lm-eval scored only part of each task (``--limit``)."""
    limit = eval_limit(results)
    if limit is None:
        return ""
    counts = [
        f"{task} {n['effective']} of {n['original']}"
        for task, n in sorted((results.get("n-samples") or {}).items(), key=lambda item: _natural_key(item[0]))
        if isinstance(n, dict) and {"effective", "original"} <= set(n)
    ]
    scored = f" (documents scored: {', '.join(counts)})" if counts else ""
    return (
        f"\n\n**Partial evaluation:** lm-eval ran with `--limit {limit}`, so each task was scored on part of its "
        f"documents only{scored}. These numbers are a quick check, not comparable with full-task results."
    )


def _provenance_section(provenance: dict[str, Any] | None) -> str:
    if provenance is None:
        return f"No conversion record (`{CONVERSION_RECORD}`) was found: the model was not made by `phalanx convert`."
    layers = provenance["converted_layers"]
    layers_text = ", ".join(map(str, layers)) if isinstance(layers, list) else str(layers)
    extra = {k: v for k, v in provenance.items() if k not in PROVENANCE_KEYS}
    lines = [
        (
            f"Converted from a `{provenance['source_model_type']}` checkpoint (`{provenance['source_path']}`) by "
            "`phalanx convert`: its sliding-window attention layers were replaced by Phalanx mixers."
        ),
        "",
        f"- converted layers: {layers_text}",
    ]
    lines += [f"- {key}: `{json.dumps(value)}`" for key, value in sorted(extra.items())]
    return "\n".join(lines)


def render_card(
    config: PhalanxConfig,
    *,
    model_name: str,
    repo_id: str,
    license: str,
    results: dict[str, Any] | None = None,
    provenance: dict[str, Any] | None = None,
) -> ModelCard:
    """The full model card (metadata + body) of a model with ``config``."""
    data = card_data(model_name=model_name, license=license, results=results, provenance=provenance)
    layer_types = config.layer_types
    counts = ", ".join(
        f"{layer_types.count(kind)} {MIXER_NAMES.get(kind, kind)}" for kind in dict.fromkeys(layer_types)
    )
    body = Template((TEMPLATE_DIR / "model_card.md").read_text(encoding="utf-8")).substitute(
        model_name=model_name,
        repo_id=repo_id,
        num_layers=len(layer_types),
        layer_counts=counts,
        layer_table=layer_table(config),
        results_section=_results_section(results),
        provenance_section=_provenance_section(provenance),
        license=license,
    )
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}")
