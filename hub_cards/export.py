"""`phalanx export MODEL OUT`: a Hub-ready folder that loads with ``trust_remote_code=True``.

The folder holds safetensors weights, ``config.json`` whose ``auto_map`` names AutoConfig, AutoModel
and AutoModelForCausalLM, the flat modeling files of the ``modeling_phalanx`` package (sibling imports
only, so Transformers can fetch them), a ``custom_generate/`` strategy (Phalanx's decode loop without
per-token host synchronisation, ``modeling_phalanx/generation_phalanx.py``), the tokenizer, the generation
config, the conversion record and lm-eval results when given, and a ``README.md`` model card. It is written by
``phalanx_training.folders.output_folder``: never over MODEL, atomically, so a failure leaves nothing
half-written.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
EVAL_RESULTS_FILE = "eval_results.json"

# Transformers' `custom_generate` layout: `custom_generate/generate.py` defines `generate(model, *args, **kwargs)`;
# its relative imports resolve inside `custom_generate/` (locally and on the Hub), so the loop's flat module is copied
# there, and `requirements.txt` is checked before the code runs.
CUSTOM_GENERATE_DIR = "custom_generate"
CUSTOM_GENERATE_MODULE = "generation_phalanx.py"
CUSTOM_GENERATE_WRAPPER = '''"""Phalanx's decode loop as a Transformers `custom_generate` strategy (code: `generation_phalanx.py`)."""

from .generation_phalanx import generate as phalanx_generate


def generate(*args, model, **kwargs):
    """Forward `generate`'s arguments to the loop (which runs the standard `generate` for what it does not cover).

    `model` is keyword-only: Transformers passes it by keyword, also when a folder loaded with trust_remote_code
    gets `model.generate = partial(generate, model=model)`, where `model.generate(input_ids)` passes the prompt first.
    """
    return phalanx_generate(model, *args, **kwargs)
'''
CUSTOM_GENERATE_REQUIREMENTS = "torch>=2.11\ntransformers>=5.17\n"


def read_model_config(model_dir: Path) -> dict[str, Any]:
    """``config.json`` of a Phalanx model folder; errors name what is missing or wrong."""
    if not model_dir.is_dir():
        raise FileNotFoundError(f"model folder not found: {model_dir}")
    config_path = model_dir / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"not a model folder (no config.json): {model_dir}")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"corrupt config.json in {model_dir}: {err}") from err
    if not isinstance(config, dict) or config.get("model_type") != "phalanx":
        found = config.get("model_type") if isinstance(config, dict) else None
        raise ValueError(f"{config_path} is not a Phalanx config (model_type {found!r}, expected 'phalanx')")
    if not any((model_dir / name).is_file() for name in WEIGHT_FILES):
        raise FileNotFoundError(f"no weights in {model_dir} (expected one of {', '.join(WEIGHT_FILES)})")
    if not any((model_dir / name).is_file() for name in TOKENIZER_FILES):
        raise FileNotFoundError(f"no tokenizer in {model_dir} (expected one of {', '.join(TOKENIZER_FILES)})")
    return config


def modeling_files() -> list[Path]:
    """The flat remote-code files: every ``*.py`` of the ``modeling_phalanx`` package but ``__init__.py``."""
    import modeling_phalanx

    folder = Path(modeling_phalanx.__file__).resolve().parent
    return sorted(p for p in folder.glob("*.py") if p.name != "__init__.py")


def write_custom_generate(folder: Path) -> None:
    """Write ``custom_generate/`` (wrapper, the loop's module, requirements) into ``folder``, so that
    ``model.generate(..., custom_generate=folder, trust_remote_code=True)`` runs the loop."""
    import modeling_phalanx

    target = folder / CUSTOM_GENERATE_DIR
    target.mkdir()
    source = Path(modeling_phalanx.__file__).resolve().parent / CUSTOM_GENERATE_MODULE
    shutil.copy2(source, target / CUSTOM_GENERATE_MODULE)
    (target / "generate.py").write_text(CUSTOM_GENERATE_WRAPPER, encoding="utf-8")
    (target / "requirements.txt").write_text(CUSTOM_GENERATE_REQUIREMENTS, encoding="utf-8")


def _write_folder(
    model_dir: Path, tmp: Path, card_kwargs: dict[str, Any], results: dict[str, Any] | None
) -> None:
    """Write every file of the export into the (empty) folder ``tmp``."""
    from transformers import AutoTokenizer, GenerationConfig

    from modeling_phalanx import PhalanxForCausalLM
    from modeling_phalanx.modeling_phalanx import PHALANX_AUTO_MAP
    from phalanx_conversion import CONVERSION_RECORD
    from phalanx_hub.card import load_provenance, render_card
    from phalanx_training.checks import check_finite_weights

    provenance = load_provenance(model_dir)
    try:
        model = PhalanxForCausalLM.from_pretrained(str(model_dir), dtype="auto")
    except Exception as err:  # corrupt weights surface as many exception types (safetensors, OSError, ...)
        raise ValueError(f"cannot load the model in {model_dir}: {type(err).__name__}: {err}") from err
    check_finite_weights(model.state_dict(), model_dir)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    except Exception as err:
        raise ValueError(f"cannot load the tokenizer in {model_dir}: {type(err).__name__}: {err}") from err

    model.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    if not (tmp / "generation_config.json").is_file():
        GenerationConfig.from_model_config(model.config).save_pretrained(str(tmp))
    for source in modeling_files():
        shutil.copy2(source, tmp / source.name)
    write_custom_generate(tmp)
    config_path = tmp / "config.json"
    config_json = json.loads(config_path.read_text(encoding="utf-8"))
    config_json["auto_map"] = dict(PHALANX_AUTO_MAP)
    config_path.write_text(json.dumps(config_json, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    if provenance is not None:
        shutil.copy2(model_dir / CONVERSION_RECORD, tmp / CONVERSION_RECORD)
    if results is not None:
        (tmp / EVAL_RESULTS_FILE).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    card = render_card(model.config, results=results, provenance=provenance, **card_kwargs)
    card.save(tmp / "README.md")


def export(
    model_dir: str | Path,
    out_dir: str | Path,
    *,
    eval_results: str | Path | None = None,
    force: bool = False,
    license: str = "apache-2.0",
    repo_id: str | None = None,
    model_name: str | None = None,
) -> Path:
    """Export ``model_dir`` to ``out_dir`` (see the module docstring); returns ``out_dir``.

    ``repo_id`` only fills the card's usage snippet (default: OUT's folder name); ``model_name``
    titles the card and its model-index (default: the same).
    """
    from phalanx_hub.card import load_results
    from phalanx_training.folders import check_output, output_folder

    model_dir, out_dir = Path(model_dir), Path(out_dir)
    read_model_config(model_dir)
    inputs = [model_dir] + ([eval_results] if eval_results is not None else [])
    check_output(out_dir, inputs=inputs, force=force, create_parents=True)
    results = load_results(eval_results) if eval_results is not None else None
    name = model_name or out_dir.resolve().name
    card_kwargs = {"model_name": name, "repo_id": repo_id or name, "license": license}
    with output_folder(out_dir, inputs=inputs, force=force, create_parents=True) as tmp:
        _write_folder(model_dir, tmp, card_kwargs, results)
    return out_dir


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", type=Path, help="Phalanx model folder (from train, convert, distill or finetune)")
    parser.add_argument("out", type=Path, help="folder to write (must not exist unless --force)")
    parser.add_argument("--eval-results", type=Path, default=None, help="lm-eval results JSON (e.g. from `phalanx eval`)")
    parser.add_argument("--force", action="store_true", help="replace OUT if it exists")
    parser.add_argument(
        "--license", default="apache-2.0",
        help="Hub license id for the card (default: %(default)s; a converted model keeps its source's license)",
    )
    parser.add_argument("--repo-id", default=None, help="Hub repo id for the usage snippet (default: OUT's name)")
    parser.add_argument("--model-name", default=None, help="card title and model-index name (default: OUT's name)")


def run(args: argparse.Namespace) -> int:
    out = export(
        args.model, args.out, eval_results=args.eval_results, force=args.force, license=args.license,
        repo_id=args.repo_id, model_name=args.model_name,
    )
    print(f"exported {args.model} -> {out}")
    return 0
