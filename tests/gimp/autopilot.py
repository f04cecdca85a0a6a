"""The GUI tests' hands in the plug-in: IMPASTO_AUTOPILOT="sleep:3,preview,set:size=64,ok,cancel-progress"
presses its buttons in that order, printing each step on stdout ("impasto-autopilot: STEP").

Not part of the plug-in: the tests copy this file into the GIMP root and name it in IMPASTO_TEST_HOOK,
and the plug-in's hook (impasto_gimp/hook.py) calls `attach` with each window it shows. Steps up to
"ok" or "cancel" are the style dialog's:

- `sleep:SECONDS` waits (for a screenshot),
- `connected` waits until the connection line says how connecting ended (connected, or why not): the
  plug-in may be starting its own server first,
- `preview` presses Preview and waits until the preview has ended (shown, or an error said),
- `set:NAME=VALUE` sets an argument (`set:iterations=40`, `set:full-size=true`),
- `ok`, `cancel` press the dialog's buttons.

The steps after "ok" are the progress window's: `cancel-progress` presses its Cancel once the job's first
progress shows. Besides the steps it prints "status: TEXT" whenever the dialog's connection line changes
and "preview shown" when a preview appears.
"""

import os

from gi.repository import GLib, Gtk
from impasto_gimp.dialog import StyleDialog
from impasto_gimp.local_server import STARTING
from impasto_gimp.progress import ProgressWindow

STEPS = [step for step in os.environ.get("IMPASTO_AUTOPILOT", "").split(",") if step]


def say(text: str) -> None:
    print(f"impasto-autopilot: {text}", flush=True)


def attach(window: object) -> None:
    if isinstance(window, StyleDialog):
        DialogPilot(window)
    elif isinstance(window, ProgressWindow) and STEPS and STEPS[0] == "cancel-progress":
        cancel_on_first_progress(window)


class DialogPilot:
    def __init__(self, dialog: StyleDialog):
        self.dialog = dialog
        say(f"status: {dialog.status.get_text()}")
        dialog.status.connect("notify::label", lambda label, _: say(f"status: {label.get_text()}"))
        dialog.preview_image.connect("notify::pixbuf", self._preview_changed)
        GLib.idle_add(self.next_step)

    def next_step(self) -> bool:
        if not STEPS or STEPS[0] == "cancel-progress":
            return False
        step = STEPS.pop(0)
        say(step)
        config = self.dialog.config
        if step.startswith("sleep:"):
            GLib.timeout_add(int(float(step.split(":", 1)[1]) * 1000), self.next_step)
        elif step == "connected":
            self._when_connected()
        elif step == "preview":
            self._preview()
        elif step.startswith("set:"):
            name, _, value = step[4:].partition("=")
            kind = type(config.get_property(name))
            config.set_property(name, value == "true" if kind is bool else kind(value))
            GLib.idle_add(self.next_step)
        elif step == "ok":
            self.dialog.dialog.response(Gtk.ResponseType.OK)
        elif step == "cancel":
            self.dialog.dialog.response(Gtk.ResponseType.CANCEL)
        else:
            raise ValueError(f"unknown autopilot step {step!r}")
        return False  # once, for GLib.idle_add and timeout_add

    def _when_connected(self) -> None:
        status = self.dialog.status
        if status.get_text() not in ("", STARTING):
            GLib.idle_add(self.next_step)
            return

        def changed(*_) -> None:
            if status.get_text() not in ("", STARTING):
                status.disconnect(handler)
                GLib.idle_add(self.next_step)

        handler = status.connect("notify::label", changed)

    def _preview(self) -> None:
        button = self.dialog.preview_button
        button.clicked()
        if button.get_sensitive():  # ended at once: its line says why
            GLib.idle_add(self.next_step)
            return

        def ended(*_) -> None:
            if button.get_sensitive():
                button.disconnect(handler)
                GLib.idle_add(self.next_step)

        handler = button.connect("notify::sensitive", ended)

    def _preview_changed(self, image: Gtk.Image, _) -> None:
        if image.get_pixbuf() is not None:
            say("preview shown")


def cancel_on_first_progress(window: ProgressWindow) -> None:
    def progressed(*_) -> None:
        window.bar.disconnect(handler)
        say(STEPS.pop(0))
        GLib.idle_add(window.cancel_button.clicked)

    handler = window.bar.connect("notify::fraction", progressed)
