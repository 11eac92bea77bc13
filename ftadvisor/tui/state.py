"""What the wizard has collected so far; every screen reads and writes this one object."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ftadvisor.schema import HardwareProfile, ModelProfile, NodeSpec

GOALS: dict[str, str] = {
    # The recommender's task families (ftadvisor.recommend.GOALS) with a line each for the picker.
    "chat": "instruction / chat assistant",
    "domain": "adapt to a domain corpus (continued pre-training)",
    "code": "code generation",
    "math": "maths / reasoning",
    "preference": "align to preferences (chosen vs rejected)",
    "rl": "reinforcement learning from a reward",
    "facts": "memorise a fixed set of facts",
}
DATA_KINDS = ("chat", "preference", "feedback", "text", "facts", "prompts")


@dataclass
class WizardState:
    model: ModelProfile | None = None
    model_ref: str | None = None
    """What the user chose, as the launcher takes it: a profile id or a local path."""
    hardware: HardwareProfile | None = None
    hardware_ref: str | None = None
    """The card file typed (``my-card.yaml``), as ``-g`` takes it; None for a shipped profile."""
    gpus_per_node: int = 1
    num_nodes: int = 1
    hourly_price_usd: float | None = None
    """Price per GPU-hour; None = the hardware profile's default."""
    goal: str = "chat"
    data_kind: str | None = None
    """None = the goal's usual data."""
    data_path: str | None = None
    examples: int | None = None
    avg_tokens: float | None = None
    epochs: float = 1.0
    seq_len: int | None = None
    budget_hours: float | None = None
    budget_usd: float | None = None
    framework: str = "hf-trl"
    """The training stack the plans are for (``ftadvisor tui --framework``; each plan's knob can change it)."""
    local_hardware_id: str | None = None
    """The hardware profile GPU detection matched on this machine (``cpu`` without a GPU); None: not detected."""
    host_ram_gib: float | None = None
    """This machine's host RAM as detected (``ftadvisor.detect.host_memory_bytes``), GiB."""
    version: int = 0
    """Bumped on every change, so the plans screen knows when to ask again."""

    def planning_hardware(self) -> HardwareProfile | None:
        """The chosen hardware as planning sees it: when it is this machine's own (the detected
        profile), its node's host RAM is the detected RAM rather than the profile's default. For the
        cpu profile the device memory is host RAM too (``ftadvisor.host.node_for`` reads the cpu
        profile's ``memory_gib`` as host RAM), so both become the detected figure."""
        hw = self.hardware
        if hw is None or self.host_ram_gib is None or hw.id != self.local_hardware_id:
            return hw
        node = (hw.node or NodeSpec()).model_copy(update={"host_ram_gib": self.host_ram_gib})
        update: dict[str, Any] = {"node": node}
        if hw.vendor == "cpu":
            update["memory_gib"] = self.host_ram_gib
        return hw.model_copy(update=update)

    def touch(self) -> None:
        self.version += 1

    @property
    def num_gpus(self) -> int:
        return self.gpus_per_node * self.num_nodes

    @property
    def launch_model(self) -> str | None:
        """The ``--model`` the launcher gets: the local path typed, else the model's Hugging Face id."""
        if self.model is None:
            return None
        if self.model_ref and self.model.id.startswith(("config:", "hub:")):
            return self.model_ref  # a local path, or a Hub id as typed, with its @revision (ftadvisor.hub)
        return self.model.hf_id or self.model.id

    def recommend_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for :func:`ftadvisor.recommend` (model and hardware apart)."""
        kw: dict[str, Any] = dict(num_gpus=self.num_gpus, num_nodes=self.num_nodes, goal=self.goal,
                                  data_kind=self.data_kind, epochs=self.epochs)
        if self.framework != "hf-trl":  # the default is the launcher's own stack
            kw["framework"] = self.framework
        for name in ("examples", "avg_tokens", "budget_hours", "budget_usd", "seq_len"):
            val = getattr(self, name)
            if val is not None:
                kw[name] = val
        price = self.hourly_price_usd
        if price is None and self.hardware is not None:
            price = self.hardware.hourly_price_usd
        if price is not None:
            kw["hourly_price_usd"] = price
        return kw


def initial_state(model: str | None = None, gpu: str | None = None,
                  framework: str | None = None) -> tuple[WizardState, str]:
    """The wizard's state from ``ftadvisor tui -m MODEL -g GPU`` (what ``estimate`` takes: a profile, a Hub id
    ``org/name[@rev]``, a config path; a card id or a card YAML file), and the first step still to answer.
    Raises FtAdvisorError naming the field, before any screen is drawn."""
    from ftadvisor.profiles import resolve_hardware, resolve_model

    state = WizardState()
    if framework:
        from ftadvisor.frameworks import canonical_framework

        state.framework = canonical_framework(framework)
    if model:
        state.model, state.model_ref = resolve_model(model), model
    if gpu:
        state.hardware = resolve_hardware(gpu)
        state.hardware_ref = gpu if gpu.strip().lower().endswith((".yaml", ".yml")) else None
    start = "model" if state.model is None else "hardware" if state.hardware is None else "goal"
    return state, start
