"""The GUI tests' hands in the plug-in: IMPASTO_AUTOPILOT="sleep:3,preview,set:size=64,ok,cancel-progress"
presses its buttons in that order, printing each step on stdout ("impasto-autopilot: STEP").

Not part of the plug-in: the tests copy this file into the GIMP root and name it in IMPASTO_TEST_HOOK,
and the plug-in's hook (impasto_gimp/hook.py) calls `attach` with each window it shows. Steps up to
the "ok" that closes the dialog, or "cancel", are the style dialog's:

- `sleep:SECONDS` waits (for a screenshot),
- `connected` waits until the status line says how connecting ended (connected, or why not, or that the
  Server section changed meanwhile): the plug-in may be starting its own server first,
- `connects-ended` waits until every connect the dialog started has ended, and its news has been handled
  (shown, or dropped),
- `preview` presses Preview and waits until the preview has ended (shown, or an error said),
- `preview-shown` waits until a preview shows (one that started by itself),
- `cost` waits until the cost line is for the choices as they are, and prints it ("cost shown: TEXT"),
- `choose:ID` chooses the preset ID in the grid, as a click does,
- `set:NAME=VALUE` sets an argument (`set:iterations=40`, `set:full-size=true`, `set:style-file=PATH`), or
  types in the Token field (`set:token=VALUE`),
- `connect` presses Connect,
- `save-settings` presses GIMP's Save Settings (it writes the settings file before it returns),
- `open:SECTION`, `close:SECTION` open or close the section `server` or `advanced`,
- `help:PATH` presses Help and waits until the file PATH exists (the test's stand-in browser writes it),
- `measure` prints the dialog window's size as the X server has it ("window: WIDTHxHEIGHT"),
- `shot:NAME` saves the screen, as drawn so far, to $TMPDIR/NAME.png (for a look, and for docs/images/),
- `windows` prints the names of all windows on the screen ("windows: NAME | NAME…"),
- `ok`, `cancel` press the dialog's buttons; after `ok` it prints whether the dialog is still open
  (while the question before a long job is open, it is),
- `answer:cancel`, `answer:paint` press a button of the question before a long job, once it is open.

The steps after the "ok" that closes the dialog are the progress window's: `cancel-progress` presses its
Cancel once the job's first progress shows. Besides the steps it prints "status: TEXT" whenever the
dialog's status line changes, "cost: TEXT" whenever the cost line does, "server section: open" (or
closed), "ok: sensitive" (or insensitive) and "style: ID" as they change, "preview shown: WIDTHxHEIGHT"
when a preview appears, and "question: TEXT | SECONDARY TEXT" when the question before a long job opens.
"""

import os
import re
import subprocess
import threading

import gi

gi.require_version("GdkX11", "3.0")
from gi.repository import GdkX11, Gio, GLib, Gtk  # noqa: E402, F401 - GdkX11: the dialog's X window id
from impasto_gimp.dialog import CONNECTING, StyleDialog  # noqa: E402
from impasto_gimp.progress import ProgressWindow  # noqa: E402

STEPS = [step for step in os.environ.get("IMPASTO_AUTOPILOT", "").split(",") if step]
FILES = ("style-file", "tls-ca")  # the arguments that take a file
QUESTIONS: list[Gtk.MessageDialog] = []  # the questions before a long job, as they opened
POLL_MS = 100  # how often a step looks whether what it waits for has come, where no signal says so


def say(text: str) -> None:
    print(f"impasto-autopilot: {text}", flush=True)


def attach(window: object) -> None:
    if isinstance(window, StyleDialog):
        DialogPilot(window)
    elif isinstance(window, Gtk.MessageDialog):
        QUESTIONS.append(window)
        texts = (window.get_property(name) or "" for name in ("text", "secondary-text"))
        say("question: " + " | ".join(texts))
    elif isinstance(window, ProgressWindow) and STEPS and STEPS[0] == "cancel-progress":
        cancel_on_first_progress(window)


class DialogPilot:
    def __init__(self, dialog: StyleDialog):
        self.dialog = dialog
        ok = dialog.dialog.get_widget_for_response(Gtk.ResponseType.OK)
        section, config = dialog.server_section, dialog.config
        report(dialog.status, "notify::label", lambda: f"status: {dialog.status.get_text()}")
        report(dialog.cost.label, "notify::label", lambda: f"cost: {dialog.cost.label.get_text()}")
        report(
            section,
            "notify::expanded",
            lambda: f"server section: {'open' if section.get_expanded() else 'closed'}",
        )
        report(
            ok,
            "notify::sensitive",
            lambda: f"ok: {'' if ok.get_sensitive() else 'in'}sensitive {ok.get_tooltip_text() or ''}",
        )
        report(config, "notify::style", lambda: f"style: {config.get_property('style')}")
        dialog.preview.image.connect("notify::pixbuf", self._preview_changed)
        GLib.idle_add(self.next_step)

    def next_step(self) -> bool:
        if not STEPS or STEPS[0] == "cancel-progress":
            return False
        step = STEPS.pop(0)
        say(step)
        name, _, argument = step.partition(":")
        if name == "sleep":
            GLib.timeout_add(int(float(argument) * 1000), self.next_step)
            return False
        if name in (
            "connected",
            "connects-ended",
            "preview",
            "preview-shown",
            "cost",
            "help",
            "ok",
            "answer",
            "shot",
        ):
            getattr(self, "_" + name.replace("-", "_"))(argument)
            return False
        if name == "choose":
            assert self.dialog.grid.select(argument), f"no preset {argument!r} in the grid"
        elif name == "set":
            self._set(*argument.split("=", 1))
        elif name == "connect":
            self.dialog.connect_button.clicked()
        elif name == "save-settings":
            self._button("_Save Settings").clicked()
        elif name in ("open", "close"):
            getattr(self.dialog, f"{argument}_section").set_expanded(name == "open")
        elif name == "measure":
            self._measure()
        elif name == "windows":
            tree = subprocess.run(["xwininfo", "-root", "-tree"], capture_output=True, text=True).stdout
            say("windows: " + " | ".join(sorted(set(re.findall(r'^\s+0x[0-9a-f]+ "([^"]+)"', tree, re.M)))))
        elif name == "cancel":
            self.dialog.dialog.response(Gtk.ResponseType.CANCEL)
            return False
        else:
            raise ValueError(f"unknown autopilot step {step!r}")
        GLib.idle_add(self.next_step)
        return False  # once, for GLib.idle_add and timeout_add

    def _set(self, name: str, value: str) -> None:
        config = self.dialog.config
        if name == "token":  # the dialog's own field, bound to no argument
            self.dialog.token_field.entry.set_text(value)
            return
        if name in FILES:
            config.set_property(name, Gio.File.new_for_path(value) if value else None)
            return
        kind = type(config.get_property(name))
        config.set_property(name, value == "true" if kind is bool else kind(value))

    def _button(self, label: str) -> Gtk.Button:
        """The dialog's button labelled `label` (GIMP's own, which the plug-in has no name for)."""
        found = []

        def look(widget: Gtk.Widget) -> None:
            if isinstance(widget, Gtk.Button) and widget.get_label() == label:
                found.append(widget)
            elif isinstance(widget, Gtk.Container):
                widget.foreach(look)

        look(self.dialog.dialog)
        assert found, f"no button {label!r} in the dialog"
        return found[0]

    def _measure(self) -> None:
        """The window's size as the X server has it, once GTK has laid out and drawn what is pending."""
        while Gtk.events_pending():
            Gtk.main_iteration()
        window = self.dialog.dialog.get_window()
        window.get_display().sync()
        info = subprocess.run(["xwininfo", "-id", str(window.get_xid())], capture_output=True, text=True)
        width, height = (re.search(rf"{side}: (\d+)", info.stdout).group(1) for side in ("Width", "Height"))
        say(f"window: {width}x{height}")

    def _shot(self, name: str) -> None:
        """The screen saved once the dialog has painted its next frame (what the steps before changed)."""
        dialog = self.dialog.dialog
        clock = dialog.get_frame_clock()

        def painted(*_) -> None:
            clock.disconnect(handler)
            dialog.get_window().get_display().sync()
            png = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"{name}.png")
            subprocess.run(
                ["sh", "-c", f"xwd -root -silent | xwdtopnm 2>/dev/null | pnmtopng > '{png}'"], check=True
            )
            GLib.idle_add(self.next_step)

        handler = clock.connect("after-paint", painted)
        dialog.queue_draw()

    def _when(self, ready, widget: Gtk.Widget, signal: str) -> None:
        """The next step once `ready()`: at once, or when `widget` emits `signal` and it has become so."""
        if ready():
            GLib.idle_add(self.next_step)
            return

        def changed(*_) -> None:
            if ready():
                widget.disconnect(handler)
                GLib.idle_add(self.next_step)

        handler = widget.connect(signal, changed)

    def _connected(self, _) -> None:
        dialog = self.dialog
        self._when(lambda: dialog.connecting is None, dialog.status, "notify::label")

    def _connects_ended(self, _) -> None:
        """A worker posts its news before it ends: idle callbacks run in order, that news before the next
        step."""
        self._poll(lambda: not any(thread.name == CONNECTING for thread in threading.enumerate()))

    def _preview(self, _) -> None:
        stop = self.dialog.preview.stop
        self.dialog.preview.button.clicked()
        self._when(lambda: not stop.get_sensitive(), stop, "notify::sensitive")  # ended: shown, or why not

    def _preview_shown(self, _) -> None:
        preview = self.dialog.preview
        self._when(lambda: preview.result_shown, preview.image, "notify::pixbuf")

    def _cost(self, _) -> None:
        cost, preview = self.dialog.cost, self.dialog.preview
        line = cost.label

        def shown() -> bool:
            if preview.settling or cost.asked is None or not cost.shows(cost.asked):
                return False
            say(f"cost shown: {line.get_text()}")
            return True

        self._poll(shown)

    def _help(self, opened: str) -> None:
        self.dialog.help_button.clicked()
        self._poll(lambda: os.path.exists(opened))

    def _answer(self, button: str) -> None:
        response = {"cancel": Gtk.ResponseType.CANCEL, "paint": Gtk.ResponseType.OK}[button]

        def answered() -> bool:
            if not QUESTIONS:
                return False
            QUESTIONS.pop(0).response(response)
            return True

        self._poll(answered)

    def _poll(self, done) -> None:
        """The next step once `done()` (which may act) is true, looked at every POLL_MS."""

        def look() -> bool:
            if not done():
                return True  # again, GLib.timeout_add
            GLib.idle_add(self.next_step)
            return False

        if look():
            GLib.timeout_add(POLL_MS, look)

    def _ok(self, _) -> None:
        self.dialog.dialog.response(Gtk.ResponseType.OK)
        GLib.idle_add(self._after_ok)

    def _after_ok(self) -> bool:
        """Runs in the dialog's loop again when it stayed open, else in the progress window's or after."""
        say("dialog closed" if self.dialog.closed else "dialog still open")
        return self.next_step()

    def _preview_changed(self, image: Gtk.Image, _) -> None:
        preview = self.dialog.preview
        if preview.result_shown:
            say("preview shown: {}x{}".format(*preview.result_size))


def report(widget, signal: str, describe) -> None:
    """Says `describe()` now, and again each time `widget` emits `signal`."""
    say(describe())
    widget.connect(signal, lambda *_: say(describe()))


def cancel_on_first_progress(window: ProgressWindow) -> None:
    def progressed(*_) -> None:
        window.bar.disconnect(handler)
        say(STEPS.pop(0))
        GLib.idle_add(window.cancel_button.clicked)

    handler = window.bar.connect("notify::fraction", progressed)
