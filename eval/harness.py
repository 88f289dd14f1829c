"""Run lm-eval on the shipped task folder (or lm-eval's own tasks) and keep its results.

lm-eval is imported inside the functions so that ``import phalanx_eval`` stays cheap.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from phalanx_conversion import CONVERSION_RECORD

if TYPE_CHECKING:
    from lm_eval.tasks import TaskManager

TASK_DIR = Path(__file__).resolve().parent / "tasks"
DEFAULT_MAX_LENGTH_CAP = 16384
SHIPPED_PREFIX = "phalanx"
# JSON files of a model folder that results must never replace (``--output`` must end in .json).
MODEL_JSON_FILES = (
    "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
    "added_tokens.json", "chat_template.json", "model.safetensors.index.json", CONVERSION_RECORD,
    "adapter_config.json", "trainer_state.json",
)
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def shipped_task_manager() -> TaskManager:
    """A ``TaskManager`` that indexes only the shipped tasks (no network, no built-in YAML scan)."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(TASK_DIR), include_defaults=False)


def resolve_task_manager(tasks: list[str]) -> TaskManager:
    """The smallest ``TaskManager`` that knows every name (or glob) in ``tasks``.

    Shipped names resolve without touching lm-eval's built-in tasks. Other names fall back to a
    manager that also indexes lm-eval's own tasks (slow: thousands of YAML files; their data may need
    the network), except names in the shipped ``phalanx`` namespace, which fail at once. Raises
    ``ValueError`` listing the shipped tasks when a name is unknown.
    """
    from lm_eval import utils as lm_utils
    from lm_eval.tasks import TaskManager

    if not tasks:
        raise ValueError("no tasks given")
    manager = shipped_task_manager()
    shipped = manager.all_tasks

    def unknown(tm: TaskManager) -> list[str]:
        return [t for t in tasks if not lm_utils.pattern_match([t], tm.all_tasks)]

    missing = unknown(manager)
    if not missing:
        return manager
    if not any(t.startswith(SHIPPED_PREFIX) for t in missing):
        manager = TaskManager(include_path=str(TASK_DIR), include_defaults=True)
        missing = unknown(manager)
        if not missing:
            return manager
    raise ValueError(
        f"unknown task(s): {', '.join(missing)}. Shipped tasks: {', '.join(shipped)}. "
        "lm-eval's built-in tasks are accepted too (`lm-eval ls tasks` lists them)."
    )


def check_model_path(model: str) -> None:
    """Fail early on a local model folder that is missing or has no readable ``config.json``.

    A string that is not a local path but looks like ``org/name`` is left to the Hub.
    """
    path = Path(model)
    if not path.exists():
        if _REPO_ID.match(model):
            return
        raise FileNotFoundError(f"model folder not found: {model}")
    config = path / "config.json"
    if not path.is_dir() or not config.is_file():
        raise FileNotFoundError(f"not a model folder (no config.json): {model}")
    try:
        json.loads(config.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"corrupt config.json in {model}: {err}") from err


def one_line(err: BaseException) -> str:
    """An exception's message on one line (Transformers' loading errors span several)."""
    return " ".join(str(err).split())


def check_remote_code(model: str | Path, trust_remote_code: bool) -> None:
    """Refuse a local model folder whose loading would run its own Python code, unless trusted.

    A folder runs its own code when ``config.json`` has an ``auto_map`` and its ``model_type`` is not
    registered with Transformers in this process (Phalanx folders use the installed classes once
    ``modeling_phalanx`` is imported, so they need no flag). Call after ``check_model_path``.
    """
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    import modeling_phalanx  # noqa: F401  (registers the phalanx model type)

    config = Path(model) / "config.json"
    if trust_remote_code or not config.is_file():
        return
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"corrupt config.json in {model}: {err}") from None
    if not isinstance(data, dict) or not data.get("auto_map"):
        return
    model_type = data.get("model_type")
    if not isinstance(model_type, str) or model_type not in CONFIG_MAPPING:
        raise ValueError(
            f"{model} ships its own model code (auto_map in config.json, model_type {model_type!r} is not "
            "installed); pass --trust-remote-code to run it"
        )


def check_device(device: str) -> None:
    """Fail early, naming the device, when a CUDA device is asked for and CUDA is not available."""
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available on this machine (use --device cpu)")


def default_max_length(model: str) -> int:
    """``max_position_embeddings`` of a local model, capped at 16384 (lm-eval would use it uncapped)."""
    config = Path(model) / "config.json"
    if config.is_file():
        value = json.loads(config.read_text(encoding="utf-8")).get("max_position_embeddings")
        if isinstance(value, int) and value > 0:
            return min(value, DEFAULT_MAX_LENGTH_CAP)
    return 2048


def evaluate(
    model: str,
    tasks: list[str],
    *,
    limit: float | None = None,
    batch_size: int | str = 1,
    device: str = "cpu",
    max_length: int | None = None,
    dtype: str = "auto",
    trust_remote_code: bool = False,
    gen_kwargs: str | None = None,
) -> dict[str, Any]:
    """``lm_eval.simple_evaluate`` with lm-eval's ``hf`` model on ``model``; ``gen_kwargs`` (``"k=v,k=v"``, as
    lm-eval's ``--gen_kwargs``) reaches ``generate`` in generation tasks.

    Importing ``modeling_phalanx`` first registers the local Phalanx classes, which Transformers then
    prefers to the folder's remote code, so an installed project uses its Triton kernels and a Phalanx
    folder needs no ``trust_remote_code``; any other folder's own code runs only when
    ``trust_remote_code``. A model that fails to load (corrupt weights, missing tokenizer) raises
    ``ValueError`` naming the folder.
    """
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    import modeling_phalanx  # noqa: F401  (registers PhalanxConfig / models with the Auto classes)
    from phalanx_training.checks import check_finite_weights

    check_model_path(model)
    check_remote_code(model, trust_remote_code)
    check_device(device)
    if max_length is None:
        max_length = default_max_length(model)
    if max_length < 2:
        raise ValueError(f"max_length must be at least 2, got {max_length}")
    manager = resolve_task_manager(tasks)
    model_args = {"pretrained": model, "trust_remote_code": trust_remote_code, "max_length": max_length, "dtype": dtype}
    try:
        lm = HFLM(**model_args, batch_size=batch_size, device=device)
    except Exception as err:  # loading fails in many ways (safetensors, OSError, config errors)
        raise ValueError(f"cannot load the model {model}: {type(err).__name__}: {one_line(err)}") from err
    check_finite_weights(lm.model.state_dict(), model)
    # model_args, batch_size and device only label the results: the model is already built.
    results = lm_eval.simple_evaluate(
        model=lm,
        model_args=model_args,
        tasks=tasks,
        limit=limit,
        batch_size=batch_size,
        device=device,
        task_manager=manager,
        log_samples=False,
        gen_kwargs=gen_kwargs,
    )
    if results is None:  # only non-zero ranks of a distributed run get None
        raise ValueError("lm-eval returned no results (not the main process of a distributed run?)")
    results["config"]["max_length"] = max_length
    return results


def write_json(data: dict[str, Any], path: str | Path, model: str | None = None) -> Path:
    """Write lm-eval results as JSON atomically; never over one of the files that make up ``model``."""
    from lm_eval.utils import handle_non_serializable

    from phalanx_training.folders import write_file

    text = json.dumps(data, indent=2, default=handle_non_serializable, ensure_ascii=False)
    folder = Path(model) if model is not None else None
    protected = [folder / name for name in MODEL_JSON_FILES] if folder is not None and folder.is_dir() else []
    return write_file(path, text + "\n", protected=protected)
