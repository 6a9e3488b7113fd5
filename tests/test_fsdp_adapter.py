"""FSDP-QLoRA's adapter must survive saving (engine.multi_gpu.save_fsdp_adapter, notebook 04 with distributed fsdp).

On 2 GPUs an FSDP run wrote an adapter file without any LoRA tensor and notebook 05 evaluated the base model: PEFT
0.21 picks the LoRA entries of the gathered state dict by walking the model's modules, whose names carry FSDP's
`_fsdp_wrapped_module.` in the middle once each decoder layer is wrapped. accelerate cannot run FSDP on a CPU, but
torch's FSDP can (2 gloo processes): the model is wrapped as notebook 04 wraps it (PEFT's auto-wrap policy, flat
parameters: use_orig_params false), and the saved adapter must hold every LoRA tensor with its trained values.
"""

import json
import os
import socket
from types import SimpleNamespace

import pytest
import torch


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist
    from peft import LoraConfig, get_peft_model
    from peft.utils import get_peft_model_state_dict
    from peft.utils.other import fsdp_auto_wrap_policy
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    from transformers import MistralConfig, MistralForCausalLM

    from engine.multi_gpu import save_fsdp_adapter

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        cfg = MistralConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                            num_attention_heads=2, num_key_value_heads=1)
        peft_model = get_peft_model(MistralForCausalLM(cfg), LoraConfig(
            r=2, target_modules="all-linear", task_type="CAUSAL_LM", init_lora_weights=False))  # B != 0
        reference = {k: v.clone() for k, v in get_peft_model_state_dict(peft_model).items()}
        wrapped = FSDP(peft_model, auto_wrap_policy=fsdp_auto_wrap_policy(peft_model), use_orig_params=False,
                       device_id=torch.device("cpu"))
        wrapped(input_ids=torch.randint(0, 64, (1, 8))).logits.sum().backward()  # FSDP's lazy init, as in training
        trainer = SimpleNamespace(model_wrapped=wrapped, accelerator=SimpleNamespace(unwrap_model=lambda m: m.module))
        written = save_fsdp_adapter(trainer, out_dir)
        if rank == 0:
            from peft.tuners.tuners_utils import _get_tuner_state_dict_key_prefixes  # what PEFT matches against

            prefixes = sorted(_get_tuner_state_dict_key_prefixes(wrapped.module))
            with open(os.path.join(out_dir, "result.json"), "w") as f:
                json.dump({"written": written, "reference": sorted(reference), "prefix_example": prefixes[0]}, f)
            torch.save(reference, os.path.join(out_dir, "reference.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not built")
def test_fsdp_adapter_holds_every_trained_lora_tensor(tmp_path):
    from safetensors.torch import load_file

    from engine.multi_gpu import check_saved_adapter

    torch.multiprocessing.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2)
    result = json.loads((tmp_path / "result.json").read_text())
    reference = torch.load(tmp_path / "reference.pt")
    assert "_fsdp_wrapped_module." in result["prefix_example"]  # the names PEFT's own save would have matched
    assert result["written"] == len(reference) == 28  # 2 layers x 7 modules x (A, B)
    saved = load_file(tmp_path / "adapter_model.safetensors")
    assert sorted(saved) == result["reference"]
    for key, value in reference.items():
        assert torch.equal(saved[key], value), key
    assert check_saved_adapter(tmp_path, set(reference)) == 28
    assert json.loads((tmp_path / "adapter_config.json").read_text())["r"] == 2
