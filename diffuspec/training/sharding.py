"""FSDP2 for the drafter trainers on CPU processes as on GPUs, and ordinary model folders from sharded runs.

``accelerate launch`` with an FSDP config sets ``ACCELERATE_USE_FSDP``, and accelerate turns it into its FSDP plugin
only for accelerator worlds (``MULTI_GPU`` and the like): a world of CPU processes (``--use_cpu``, gloo) stays
plain data parallel. PyTorch's ``fully_shard`` runs on CPU processes too, so ``ShardedTrainingMixin`` hands such a
world the plugin that the launch configured; everything after that (``fsdp2_prepare_model``, the sharded
checkpoints, their loading) is accelerate's and the Trainer's own code, the path a GPU run takes. This is what lets
the FSDP2 recipes be run, not only parsed, on a machine without GPUs (``tests/test_train_fsdp.py``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from accelerate import Accelerator, PartialState
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin
from torch import nn
from torch.distributed.fsdp import FSDPModule, register_fsdp_forward_method
from transformers import Trainer


def fsdp_requested() -> bool:
    """Whether the launch asked for FSDP (``accelerate launch`` with an FSDP config exports this)."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def weights_sharded(trainer: Trainer) -> bool:
    """Whether each process holds only shards of the trained weights (FSDP, DeepSpeed ZeRO-3): then the model in
    memory cannot be merged or saved by one process alone."""
    plugin = getattr(trainer.accelerator.state, "deepspeed_plugin", None)
    return trainer.is_fsdp_enabled or getattr(plugin, "zero_stage", None) == 3


@contextmanager
def whole_weights() -> Iterator[None]:
    """``from_pretrained`` loads whole weights on this process while a ZeRO-3 run is configured, which would
    otherwise partition them at load: right for the trained model, wrong for a frozen verifier read outside the
    engine and for a model one process loads alone (a partitioning load is a collective every process must join)."""
    from transformers.integrations import deepspeed as hf_deepspeed

    ref = hf_deepspeed._hf_deepspeed_config_weak_ref  # set while a DeepSpeed run is configured
    config = ref() if ref is not None else None
    hf_deepspeed.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        if config is not None:
            hf_deepspeed.set_hf_deepspeed_config(config)


def enable_cpu_fsdp(accelerator: Accelerator) -> bool:
    """Give a world of CPU processes launched with an FSDP config accelerate's FSDP plugin (read from the launch's
    ``FSDP_*`` settings, as accelerate reads them for GPUs); returns whether it did. Other worlds are untouched."""
    state = accelerator.state
    if not fsdp_requested() or state.distributed_type != DistributedType.MULTI_CPU:
        return False
    plugin = FullyShardedDataParallelPlugin()
    if plugin.fsdp_version != 2:
        raise ValueError(
            f"FSDP on CPU processes needs fsdp_version: 2 (PyTorch's fully_shard), got {plugin.fsdp_version}"
        )
    if state.mixed_precision != "no":
        plugin.set_mixed_precision(state.mixed_precision)
    state.distributed_type = DistributedType.FSDP
    state.fsdp_plugin = plugin
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP  # as AcceleratorState does on GPUs
    return True


@contextmanager
def owned_embeddings_only(model: nn.Module) -> Iterator[None]:
    """Hide the embeddings a model borrows but does not own while accelerate prepares it: its FSDP2 preparation
    shards ``get_input_embeddings()`` / ``get_output_embeddings()`` as units of their own, and the conditioned
    drafter's are its verifier's (frozen, outside the drafter's modules, read as plain matrices)."""
    owned = set(model.modules())
    hidden = []
    for name in ("get_input_embeddings", "get_output_embeddings"):
        getter = getattr(model, name, None)
        module = getter() if getter is not None else None
        if module is not None and module not in owned:
            setattr(model, name, lambda: None)  # shadows the method on this instance only
            hidden.append(name)
    try:
        yield
    finally:
        for name in hidden:
            delattr(model, name)


def register_forward_methods(model: nn.Module) -> None:
    """Let FSDP2 gather a sharded module's weights around the methods it lists in ``fsdp_forward_methods`` (methods
    besides ``forward`` that read them, e.g. the conditioned drafter's memory keys and values), as around forward."""
    for module in model.modules():
        if isinstance(module, FSDPModule):
            for name in getattr(module, "fsdp_forward_methods", ()):
                register_fsdp_forward_method(module, name)


class ShardedTrainingMixin:
    """For a ``transformers.Trainer`` subclass (before ``Trainer`` in its bases): FSDP on CPU worlds
    (:func:`enable_cpu_fsdp`); only the model's own modules sharded (:func:`owned_embeddings_only`) and its extra
    forward methods hooked (:func:`register_forward_methods`); and with sharded state dicts a ``save_model`` that also
    writes the gathered full weights, because the Trainer saves only the shards there, which ``from_pretrained``
    cannot read."""

    def create_accelerator_and_postprocess(self) -> None:
        super().create_accelerator_and_postprocess()
        if enable_cpu_fsdp(self.accelerator):
            self.is_fsdp_enabled = True

    def _prepare_for_training(self, *args, **kwargs):
        with owned_embeddings_only(self.model):
            model, train_dataloader = super()._prepare_for_training(*args, **kwargs)
        if self.is_fsdp_enabled:
            register_forward_methods(model)
        return model, train_dataloader

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        plugin = getattr(self.accelerator.state, "fsdp_plugin", None)
        if self.is_fsdp_enabled and "FULL_STATE_DICT" not in str(plugin.state_dict_type):
            state_dict = self.accelerator.get_state_dict(self.model)  # a collective: every process takes part
            if self.args.should_save:
                self._save(output_dir, state_dict=state_dict)
        super().save_model(output_dir, _internal_call)
