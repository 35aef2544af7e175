"""The policy's optimizer: AdamW with fp32 states (PyTorch's) or 8-bit states (torchao's `AdamW8bit`),
stepped after the backward by the DeepSpeed engine, or inside the backward (`OptimizerInBackward`).

torchao's optimizers step whole tensors: 8-bit states run without DeepSpeed's ZeRO and bf16 optimizers,
which would hand them flat partitions (see `TrainConfig._check_optimizer_settings`).

Bytes per parameter of a bf16 model, besides the activations (8-bit states: 2 bytes; the embedding and
the LM head keep fp32 states, see `parameter_groups`):

    DeepSpeed's bf16 optimizer, AdamW           2 weights + 2 gradient + 4 fp32 master + 4 fp32 gradient + 8 states
    pure bf16, 8-bit states, after the backward 2 + 2 + 2
    in the backward, fp32 master, 8-bit states  2 + 4 + 2, and one parameter's gradient at a time
    in the backward, pure bf16, 8-bit states    2 + 2, and one parameter's gradient at a time

Pure bf16 (`pure_bf16`) updates the bf16 weights in place with stochastic rounding (torchao): rounded to the
nearest bf16, an update below half a bf16 step would vanish; rounded up or down with the probabilities that
make the rounding exact on average, it is kept in expectation.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import nn

from ..config import TrainConfig

_FP32_STATES = "fp32_states"  # a parameter group's flag: its states stay in fp32 under 8-bit optimizers


def parameter_groups(model: nn.Module, config: TrainConfig) -> list[dict]:
    """The trainable parameters of `model` (a causal LM, or a module holding one as `.model`) in the
    optimizer's groups: one, or with 8-bit states two, the input embedding and the LM head keeping fp32 ones.

    Blockwise 8-bit states lose a value below about 1e-7 of its block's largest: a second moment that
    rounds to zero beside a first moment that does not makes an update of m / eps, hundreds of learning
    rates. The rows of these two matrices, some tokens' rare and others' frequent, meet that in their first
    steps; bitsandbytes and Hugging Face's Trainer keep the embeddings' states in 32 bits for it too.
    """
    trainable = [param for param in model.parameters() if param.requires_grad]
    if config.optim != "adamw_torch_8bit":
        return [{"params": trainable}]
    language_model = model if hasattr(model, "get_input_embeddings") else model.model
    embeddings = {id(module.weight) for module in (language_model.get_input_embeddings(),
                                                   language_model.get_output_embeddings()) if module is not None}
    groups = [{"params": [p for p in trainable if id(p) not in embeddings]},
              {"params": [p for p in trainable if id(p) in embeddings], _FP32_STATES: True}]
    return [group for group in groups if group["params"]]


def adamw(param_groups: list[dict], config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW over `param_groups` with the config's learning rate, weight decay and `optim`; bf16 parameters
    are updated with stochastic rounding under `pure_bf16`."""
    settings = {"lr": config.learning_rate, "weight_decay": config.weight_decay}
    if config.optim == "adamw_torch" and not config.pure_bf16:
        return torch.optim.AdamW(param_groups, **settings, fused=torch.cuda.is_available())
    import torchao.optim as torchao_optim  # an extra: iopo-fast[torchao]

    # torchao's AdamW (fp32 states here) for its stochastic rounding, or its AdamW8bit.
    optimizer = torchao_optim.AdamW8bit if config.optim == "adamw_torch_8bit" else torchao_optim._AdamW
    return _torchao_optimizer(optimizer)(param_groups, **settings, bf16_stochastic_round=config.pure_bf16)


class NonFiniteGradientError(RuntimeError):
    """A non-finite gradient was applied inside the backward, which cannot skip a step."""


class OptimizerInBackward(torch.optim.Optimizer):
    """Steps each parameter inside the backward, as soon as its gradient is accumulated, then frees that
    gradient: no gradient of the whole model is ever held.

    Each parameter has its own optimizer (`make_optimizer(groups)`, given its group with the parameter's
    tensor alone), over an fp32 master copy when the parameter is in a lower precision and `master_weights`
    is set, else over the parameter itself. The learning rate is that of the parameter's group here, which
    the schedule sets. `step()` applies nothing (the backward did) and checks the gradient's norm, which
    `grad_norm()` reports. `state_dict()` holds every parameter's states and the masters; DeepSpeed saves it
    with its checkpoints.
    """

    def __init__(self, param_groups: list[dict], make_optimizer, *, master_weights: bool, lr: float):
        super().__init__(param_groups, {"lr": lr})
        self._steppers = []  # (group index, parameter, master, the parameter's optimizer)
        for group_index, group in enumerate(self.param_groups):
            options = {key: value for key, value in group.items() if key != "params"}
            for param in group["params"]:
                master = param.detach().float() if master_weights and param.dtype != torch.float32 else param
                self._steppers.append((group_index, param, master, make_optimizer([{**options, "params": [master]}])))
        self._squared_norm = torch.zeros((), dtype=torch.float32, device=self._steppers[0][1].device)
        for index, (_, param, _, _) in enumerate(self._steppers):
            param.register_post_accumulate_grad_hook(functools.partial(self._step_parameter, index))

    def _step_parameter(self, index: int, param: torch.Tensor) -> None:
        group_index, _, master, optimizer = self._steppers[index]
        self._squared_norm += torch.linalg.vector_norm(param.grad, dtype=torch.float32).square()
        # By index: loading a state dict replaces the group dicts, which the schedule then updates.
        _set_learning_rate(optimizer.param_groups[0], self.param_groups[group_index]["lr"])
        with torch.no_grad():
            master.grad = param.grad if master is param else param.grad.float()
            optimizer.step()
            master.grad = None
            param.grad = None
            if master is not param:
                param.copy_(master)

    def grad_norm(self) -> float:
        """The norm of the gradient of the last backward."""
        return float(self._squared_norm.sqrt())

    @torch.no_grad()
    def step(self, closure=None):
        norm = self.grad_norm()
        self._squared_norm.zero_()
        if not math.isfinite(norm):
            raise NonFiniteGradientError(
                f"a non-finite gradient (norm {norm}) was applied inside the backward (optimizer_in_backward), which "
                "cannot skip a step: resume from the last checkpoint with a lower learning_rate, or train without "
                "optimizer_in_backward")

    def _own_masters(self) -> list[torch.Tensor]:
        """The fp32 master copies (of the parameters in a lower precision, with master weights)."""
        return [master for _, param, master, _ in self._steppers if master is not param]

    def state_dict(self) -> dict:
        return {**super().state_dict(), "optimizers": [optimizer.state_dict() for *_, optimizer in self._steppers],
                "masters": self._own_masters()}

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict({key: state_dict[key] for key in ("state", "param_groups")})
        for (*_, optimizer), state in zip(self._steppers, state_dict["optimizers"], strict=True):
            optimizer.load_state_dict(state)
        for master, saved in zip(self._own_masters(), state_dict["masters"], strict=True):
            master.copy_(saved)


def _set_learning_rate(group: dict, lr: float) -> None:
    """torchao keeps the learning rate as a tensor (updated in place), PyTorch as a float."""
    if isinstance(group["lr"], torch.Tensor):
        group["lr"].fill_(lr)
    else:
        group["lr"] = lr


class _TorchaoStates:
    """Mixed into torchao's optimizers: every state that is not 8-bit is fp32 (torchao would keep a bf16
    tensor's in bf16, where Adam's second moment cannot decay by 0.1% a step), the groups flagged
    `fp32_states` have no 8-bit states, and 8-bit states are saved as their plain tensors (DeepSpeed loads
    its checkpoints with a callable `map_location`, which cannot rebuild a tensor subclass)."""

    def _new_buffer(self, param: torch.Tensor, signed: bool) -> torch.Tensor:
        in_fp32_group = any(param is other for group in self.param_groups if group.get(_FP32_STATES)
                            for other in group["params"])
        buffer = None if in_fp32_group else super()._new_buffer(param, signed)
        if buffer is None or type(buffer) is torch.Tensor:
            return torch.zeros_like(param, dtype=torch.float32)
        return buffer

    def state_dict(self) -> dict:
        state_dict = super().state_dict()
        state_dict["state"] = {index: {key: _plain_state(value) for key, value in state.items()}
                               for index, state in state_dict["state"].items()}
        return state_dict

    def load_state_dict(self, state_dict: dict) -> None:
        state = {index: {key: _quantized_state(value) for key, value in values.items()}
                 for index, values in state_dict["state"].items()}
        super().load_state_dict({**state_dict, "state": state})
        # PyTorch casts a floating state to its parameter's dtype: the fp32 states of bf16 parameters are put back.
        params = [param for group in self.param_groups for param in group["params"]]
        for index, values in state.items():
            param = params[int(index)]
            for key, value in values.items():
                if type(value) is torch.Tensor and value.dtype == torch.float32 and key != "step":
                    self.state[param][key] = value.to(param.device)


_SAVED_8BIT = "optim_state_8bit"  # marks the plain form of an 8-bit state in a saved state dict


def _plain_state(value):
    from torchao.optim.subclass_8bit import OptimState8bit

    if not isinstance(value, OptimState8bit):
        return value
    return {_SAVED_8BIT: True, "codes": value.codes, "scale": value.scale, "qmap": value.qmap, "signed": value.signed,
            "dtype": value.dtype}


def _quantized_state(value):
    from torchao.optim.subclass_8bit import OptimState8bit

    if not (isinstance(value, dict) and value.get(_SAVED_8BIT)):
        return value
    return OptimState8bit(value["codes"], value["scale"], value["qmap"], value["signed"], dtype=value["dtype"])


@functools.cache
def _torchao_optimizer(torchao_optimizer: type) -> type:
    """`torchao_optimizer` with `_TorchaoStates`."""
    return type(torchao_optimizer.__name__, (_TorchaoStates, torchao_optimizer), {})
