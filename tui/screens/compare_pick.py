"""Pick the second engine of the compare view: another model, dtype, quantization, device or tp (started
through the launcher like the main engine), or the socket of an engine already running."""

from __future__ import annotations

from dataclasses import dataclass

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import Button, Checkbox, Input, Label, Static

from tui.engine_link import EngineOptions
from tui.screens.dialogs import FormScreen
from tui.widgets.ordered_keys import OrderedInput

CHOICES = {"quant": ("none", "w8a16", "w8a8"), "dtype": ("auto", "float32", "float16", "bfloat16"),
           "device": ("auto", "cpu", "cuda", "npu")}
FIELDS = [  # (key, label)
    ("model", "Model (path or alias)"),
    ("quant", "Quantization"),
    ("dtype", "Dtype"),
    ("device", "Device"),
    ("tp", "Tensor parallel (GPUs)"),
    ("socket", "Or a running engine's socket"),
]
HINT = ("quantization: none, w8a16, w8a8 · dtype: auto, float32, float16, bfloat16 · device: auto, cpu, cuda, "
        "npu. B starts in the background like the main engine; a socket attaches to one already running.")


@dataclass
class CompareChoice:
    options: EngineOptions  # engine B
    greedy: bool = True  # temperature 0 on both (else the chat's own sampling settings)


def read_choice(values: dict[str, str], greedy: bool) -> CompareChoice:
    """The form's values, checked; raises ValueError with a message for the user. What needs no engine
    (files, config, tp, the device) is checked as `qwen-chat --model` checks it."""
    v = {k: (values.get(k) or "").strip() for k, _ in FIELDS}
    for key, allowed in CHOICES.items():
        if v[key] not in allowed:
            raise ValueError(f"{key}: {v[key]!r} is not one of {', '.join(allowed)}")
    try:
        tp = int(v["tp"])
    except ValueError:
        tp = 0
    if tp < 1:
        raise ValueError(f"tp: {v['tp']!r} is not a positive whole number")
    quant = None if v["quant"] == "none" else v["quant"]
    if v["socket"]:
        return CompareChoice(EngineOptions(model=v["model"] or "?", socket=v["socket"]), greedy)
    if not v["model"]:
        raise ValueError("model: give a model directory or alias (or the socket of a running engine)")
    from inference.client.preflight import check_start
    from inference.errors import UserError

    try:
        check_start(v["model"], tp=tp, device=v["device"], dtype=v["dtype"], quant=quant)
    except UserError as e:
        raise ValueError(str(e).replace("\n", " ")) from None
    return CompareChoice(EngineOptions(model=v["model"], tp=tp, dtype=v["dtype"], quant=quant,
                                       device=v["device"]), greedy)


class ComparePickScreen(FormScreen[CompareChoice | str | None]):
    """Dismisses with a CompareChoice, "stop" (end the comparison) or None (Esc)."""

    BINDINGS = [Binding("escape", "cancel", "Cancel"), Binding("ctrl+s", "submit", "Compare")]
    AUTO_FOCUS = "#cmp-model"

    def __init__(self, defaults: EngineOptions, comparing: bool = False):
        super().__init__(id="compare-pick", classes="dialog")
        self.defaults = defaults
        self.comparing = comparing

    def compose(self) -> ComposeResult:
        d = self.defaults
        start = {"model": d.model, "quant": d.quant or "none", "dtype": d.dtype, "device": d.device,
                 "tp": str(d.tp), "socket": d.socket or ""}
        with Vertical(id="settings-box"):
            yield Label("Compare this chat with a second engine", id="settings-title")
            yield Label("Each new message goes to both; two columns stream side by side.", classes="dialog-hint")
            with VerticalScroll(id="settings-fields"):
                for key, label in FIELDS:
                    with Horizontal(classes="setting-row"):
                        yield Label(label, classes="setting-label")
                        yield OrderedInput(start[key], id=f"cmp-{key}", classes="setting-input", compact=True,
                                           submit=lambda _: self.action_submit())
                yield Static(HINT, classes="dialog-hint", markup=False)
                yield Checkbox("Greedy on both (temperature 0): replies comparable token by token", True,
                               id="cmp-greedy")
            yield Label("", id="settings-error")
            with Horizontal(classes="dialog-buttons"):
                yield Button("Compare (ctrl+s)", id="compare", variant="primary")
                if self.comparing:
                    yield Button("Stop comparing", id="stop", variant="warning")
                yield Button("Cancel (Esc)", id="cancel")

    def read(self) -> CompareChoice:
        values = {k: self.query_one(f"#cmp-{k}", Input).value for k, _ in FIELDS}
        return read_choice(values, self.query_one("#cmp-greedy", Checkbox).value)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "compare":
            self.action_submit()
        elif event.button.id == "stop":
            self.dismiss("stop")
        else:
            self.action_cancel()
