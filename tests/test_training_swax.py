"""SWAX stochastic windows: the per-step schedule, the model seeing the window, and a Trainer run in
which training steps draw windows while evaluation always uses the long one."""

from __future__ import annotations

import pytest
import torch
from transformers import Trainer, TrainingArguments

from modeling_phalanx import PhalanxForCausalLM
from phalanx_training.data import PackedCollator, PackedDataset, pack_documents
from phalanx_training.presets import get_preset
from phalanx_training.swax import SWAXCallback, SWAXSchedule, set_sliding_window


def test_schedule_mixes_windows_then_holds_the_long_one() -> None:
    schedule = SWAXSchedule(short_window=128, long_window=2048, short_prob=0.5, final_long_fraction=0.1, seed=3)
    windows = [schedule.window(s, 1000) for s in range(1000)]
    assert set(windows) == {128, 2048}
    assert windows[900:] == [2048] * 100 and schedule.final_phase_start(1000) == 900
    short = windows[:900].count(128)
    assert 380 < short < 520  # binomial(900, 0.5): mean 450, sd 15
    assert windows == [schedule.window(s, 1000) for s in range(1000)]  # a pure function of (seed, step)
    other_seed = SWAXSchedule(seed=4)
    assert windows != [other_seed.window(s, 1000) for s in range(1000)]
    always_short = SWAXSchedule(short_prob=1.0, final_long_fraction=0.25)
    assert [always_short.window(s, 8) for s in range(8)] == [128] * 6 + [2048] * 2
    assert {SWAXSchedule(short_prob=0.0).window(s, 50) for s in range(50)} == {2048}


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(short_window=2048, long_window=2048), "short_window < long_window"),
        (dict(short_window=0), "short_window"),
        (dict(short_prob=1.5), "short_prob"),
        (dict(final_long_fraction=-0.1), "final_long_fraction"),
    ],
)
def test_schedule_rejects_bad_options(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SWAXSchedule(**kwargs)


def test_model_uses_the_window_set_on_its_config() -> None:
    torch.manual_seed(0)
    model = PhalanxForCausalLM(get_preset("tiny-swa", sliding_window=24)).eval()
    ids = torch.randint(3, 259, (1, 40))
    with torch.no_grad():
        long_logits = model(ids).logits
        set_sliding_window(model, 6)
        short_logits = model(ids).logits
        fresh = PhalanxForCausalLM(get_preset("tiny-swa", sliding_window=6)).eval()
        fresh.load_state_dict(model.state_dict())
        torch.testing.assert_close(short_logits, fresh(ids).logits)
    assert not torch.allclose(short_logits[:, 6:], long_logits[:, 6:], atol=1e-4)
    torch.testing.assert_close(short_logits[:, :6], long_logits[:, :6])  # inside both windows
    sliding = [layer.self_attn.sliding_window for layer in model.model.layers if layer.self_attn is not None]
    assert set(sliding) - {None} == {6}


def test_trainer_draws_windows_per_step_and_evaluates_with_the_long_window(tmp_path) -> None:
    torch.manual_seed(0)
    model = PhalanxForCausalLM(get_preset("tiny-swa", sliding_window=16))
    data = PackedDataset(pack_documents([torch.randint(3, 259, (n,)).tolist() for n in range(5, 60, 3)], 24))
    schedule = SWAXSchedule(short_window=4, long_window=16, short_prob=0.5, final_long_fraction=0.3, seed=7)
    seen: list[tuple[bool, int]] = []
    model.register_forward_pre_hook(lambda module, args: seen.append((module.training, module.config.sliding_window)))
    args = TrainingArguments(
        output_dir=str(tmp_path), max_steps=10, per_device_train_batch_size=2, per_device_eval_batch_size=8,
        eval_strategy="steps", eval_steps=5, logging_steps=5, save_strategy="no", report_to="none",
        seed=7, disable_tqdm=True,
    )
    trainer = Trainer(
        model=model, args=args, train_dataset=data, eval_dataset=PackedDataset({k: v[:8] for k, v in data.packed.items()}),
        data_collator=PackedCollator(), callbacks=[SWAXCallback(schedule)],
    )
    trainer.train()
    train_windows = [w for training, w in seen if training]
    eval_windows = [w for training, w in seen if not training]
    assert train_windows == [schedule.window(s, 10) for s in range(10)]
    assert set(train_windows[:7]) == {4, 16} and train_windows[7:] == [16, 16, 16]
    assert len(eval_windows) == 2 and set(eval_windows) == {16}
    assert model.config.sliding_window == 16


def test_callback_needs_sliding_layers(tmp_path) -> None:
    model = PhalanxForCausalLM(get_preset("tiny-phalanx"))
    data = PackedDataset(pack_documents([list(range(3, 40))], 8))
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=1, report_to="none", save_strategy="no")
    trainer = Trainer(model=model, args=args, train_dataset=data, data_collator=PackedCollator(),
                      callbacks=[SWAXCallback(SWAXSchedule(short_window=4, long_window=8))])
    with pytest.raises(ValueError, match="sliding_attention"):
        trainer.train()
