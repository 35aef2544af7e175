"""The trained model in `output_dir/model`, loadable by transformers; with LoRA, the adapters in
`output_dir/adapter` and the merged model beside them (`lora_merge_on_export`), or the adapters alone."""

from __future__ import annotations

from pathlib import Path

from ..config import TrainConfig
from ..distributed import barrier, is_main
from ..model.loading import load_model, load_tokenizer
from .engine import full_state_dict


def export_model(engine, config: TrainConfig, tokenizer=None, log=print) -> None:
    """Save the causal LM of `engine` (around a `PreferenceModel`); a collective under ZeRO-3."""
    output_dir = Path(config.output_dir)
    state_dict = full_state_dict(engine)
    if is_main():
        lora = config.finetuning_type == "lora"
        target = output_dir / ("adapter" if lora and config.lora_merge_on_export else "model")
        # The PreferenceModel holds the causal LM as `model`: its own state dict's names lose that prefix.
        state_dict = {name.removeprefix("model."): tensor for name, tensor in state_dict.items()}
        engine.module.model.save_pretrained(target, state_dict=state_dict)
        tokenizer = tokenizer or load_tokenizer(config.model_name_or_path)
        tokenizer.save_pretrained(target)
        if lora and config.lora_merge_on_export:
            from peft import PeftModel

            base = load_model(config.model_name_or_path, config.model_dtype)
            merged = PeftModel.from_pretrained(base, target).merge_and_unload()
            merged.save_pretrained(output_dir / "model")
            tokenizer.save_pretrained(output_dir / "model")
        log(f"model saved to {output_dir / 'model'}")
    barrier()
