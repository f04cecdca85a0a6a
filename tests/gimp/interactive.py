"""The batch script of the GUI tests that open the plug-in's dialog (Gimp.run_gui in conftest.py)."""

from __future__ import annotations

# The image CONTENT (scaled to SCALE_TO, a width and height, unless None) in a window and the procedure run
# interactively, its dialog starting from ARGUMENTS (files by path); RESULT gets the run's status and the
# image's layers before and after.
INTERACTIVE = """
import json
import gi
gi.require_version("Gimp", "3.0")
from gi.repository import Gimp, Gio
STATUS = {int(Gimp.PDBStatusType.SUCCESS): "success", int(Gimp.PDBStatusType.CANCEL): "cancel",
          int(Gimp.PDBStatusType.EXECUTION_ERROR): "execution-error"}
image = Gimp.file_load(Gimp.RunMode.NONINTERACTIVE, Gio.File.new_for_path(CONTENT))
if SCALE_TO:
    image.scale(*SCALE_TO)
Gimp.Display.new(image)
procedure = Gimp.get_pdb().lookup_procedure("python-fu-impasto")
config = procedure.create_config()
config.set_property("run-mode", Gimp.RunMode.INTERACTIVE)
config.set_property("image", image)
config.set_core_object_array("drawables", [image.get_layers()[-1]])
for name, value in ARGUMENTS.items():
    config.set_property(name, Gio.File.new_for_path(value) if name in ("style-file", "tls-ca") else value)
before = [layer.get_name() for layer in image.get_layers()]
status = int(procedure.run(config).index(0))
out = {"status": STATUS.get(status, status), "before": before, "after": [l.get_name() for l in image.get_layers()]}
with open(RESULT, "w") as f:
    json.dump(out, f)
"""


def interactive_run(content: str, scale_to: tuple[int, int] | None = None, **arguments: object) -> str:
    """The script for Gimp.run_gui that runs the plug-in's dialog on the image `content` (a path in the root;
    scaled to `scale_to`, a width and height, if given), starting from `arguments` (names with _ for -); see
    INTERACTIVE."""
    named = {name.replace("_", "-"): value for name, value in arguments.items()}
    return f"CONTENT = {content!r}\nSCALE_TO = {scale_to!r}\nARGUMENTS = {named!r}\n{INTERACTIVE}"
