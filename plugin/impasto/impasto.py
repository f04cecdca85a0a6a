#!/usr/bin/env python3
"""Impasto for GIMP 3: Filters ▸ Artistic ▸ Impasto Style Transfer…

Sends the active layer and a style (a preset of the server's, or an image file) to an
impasto-server, shows its progress and previews, and puts the result in a new layer above the
source, limited to the selection, as one undo step.

This file registers the procedure and runs it; the package impasto_gimp/ beside it holds the rest
(its __init__.py lists its rooms), and vendor/ the network client (impasto.client, pure Python), which
knows nothing of GIMP.
"""

import os
import sys

# The vendored client's folder comes first: the package `impasto` there, not this file.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "vendor"))

import gi

gi.require_version("Gimp", "3.0")
from gi.repository import Gimp, GLib, GObject
from impasto_gimp.dialog import StyleDialog
from impasto_gimp.job import paint
from impasto_gimp.remote import DEFAULT_ADDRESS, FAILURES, sentence
from impasto_gimp.store import forget_secrets

PROCEDURE = "python-fu-impasto"
RW = GObject.ParamFlags.READWRITE


class Impasto(Gimp.PlugIn):
    def do_query_procedures(self):
        return [PROCEDURE]

    def do_set_i18n(self, name):
        return False

    def do_create_procedure(self, name):
        procedure = Gimp.ImageProcedure.new(self, name, Gimp.PDBProcType.PLUGIN, run, None)
        procedure.set_image_types("RGB*, GRAY*")
        procedure.set_sensitivity_mask(Gimp.ProcedureSensitivityMask.DRAWABLE)
        procedure.set_menu_label("Impasto Style Transfer…")
        procedure.add_menu_path("<Image>/Filters/Artistic")
        procedure.set_documentation(
            "Repaint the layer in the style of a painting (neural style transfer)",
            "Sends the active layer and a style to an impasto-server, which optimises the picture with "
            "VGG19 features (Gatys et al.); the result lands in a new layer above the source, limited to "
            "the selection.",
            name,
        )
        procedure.set_attribution("Impasto developers", "Impasto developers", "2026")
        # Each nick marks its mnemonic with _ (GIMP 3.2 warns of a field without one), a letter of its own
        # in the dialog: GIMP's buttons take O, C, R, L and S, the dialog's own H, P, T, V and N.
        procedure.add_string_argument(
            "style",
            "Style preset",
            "Id of one of the server's presets; empty when a style file is given",
            "",
            RW,
        )
        procedure.add_file_argument(
            "style-file",
            "Style i_mage",
            "Any image to take the style from",
            Gimp.FileChooserAction.OPEN,
            True,
            None,
            RW,
        )
        procedure.add_double_argument(
            "strength",
            "Stren_gth",
            "Style versus content: 0 keeps the picture, 0.25 paints gently, 2 lets the style take over",
            0.0,
            10.0,
            1.0,
            RW,
        )
        procedure.add_int_argument(
            "iterations", "_Iterations", "At full size; smaller steps run half; 0 = default", 0, 5000, 0, RW
        )
        procedure.add_int_argument(
            "size",
            "_Working size",
            "Long side in px that the style is painted at; 0 = the server's default",
            0,
            16384,
            0,
            RW,
        )
        procedure.add_boolean_argument(
            "full-size",
            "_Full size (the layer's own resolution; slower)",
            "Paint at the layer's own size (with a selection: its bounding box at its own size), in tiles "
            "where the server's memory is short; the working size is then ignored",
            False,
            RW,
        )
        procedure.add_boolean_argument(
            "preserve-colors", "Preserve colo_urs", "Keep the picture's colours", False, RW
        )
        procedure.add_int_argument("seed", "See_d", "Same seed, same result", 0, 2**31 - 1, 0, RW)
        procedure.add_string_argument(
            "server",
            "S_erver",
            "host:port (plaintext) or https://host:port (TLS), or several separated by commas (the "
            "least busy that answers); empty = the last address used, else $IMPASTO_SERVER, else "
            f"{DEFAULT_ADDRESS}, where the plug-in starts its own server when none answers",
            "",
            RW,
        )
        procedure.add_string_argument(
            "token",
            "To_ken",
            "The server's token, if it needs one; in the dialog, empty = the one last used with this server",
            "",
            RW,
        )
        procedure.add_file_argument(
            "tls-ca",
            "TLS certific_ate",
            "The certificate (PEM) of a self-signed https:// server; empty = the system's roots",
            Gimp.FileChooserAction.OPEN,
            True,
            None,
            RW,
        )
        procedure.add_boolean_argument(
            "insecure",
            "Send the token unencr_ypted (only on a network you trust)",
            "Allow the token over plain host:port to another machine; without it that is refused",
            False,
            RW,
        )
        procedure.add_layer_return_value("result-layer", "Result layer", "The new layer", True, RW)
        return procedure


def run(procedure, run_mode, image, drawables, config, data):
    # A selected mask (as Layer ▸ Mask ▸ Add Layer Mask leaves it) stands for its layer: the user sees one
    # layer selected in the Layers dialog.
    drawables = [Gimp.Layer.from_mask(d) if isinstance(d, Gimp.LayerMask) else d for d in drawables]
    if len(drawables) != 1 or not isinstance(drawables[0], Gimp.Layer):
        return failed(procedure, "Select exactly one layer to stylise.")
    layer = drawables[0]
    if image.get_base_type() == Gimp.ImageBaseType.INDEXED:
        return failed(
            procedure,
            "Impasto works on RGB and grayscale images; convert this one with Image ▸ Mode ▸ RGB first.",
        )
    if run_mode == Gimp.RunMode.INTERACTIVE and not StyleDialog(procedure, config, layer).run():
        return cancelled(procedure)
    try:
        result = paint(image, layer, config, run_mode)
    except FAILURES as error:
        return failed(procedure, sentence(error))
    finally:
        forget_secrets(config)  # GIMP saves the arguments as last values: never a token
    if result is None:
        return cancelled(procedure)
    return Gimp.ValueArray.new_from_values(
        [
            GObject.Value(Gimp.PDBStatusType, Gimp.PDBStatusType.SUCCESS),
            GObject.Value(Gimp.Layer, result),
        ]
    )


def failed(procedure, message):
    return procedure.new_return_values(Gimp.PDBStatusType.EXECUTION_ERROR, GLib.Error(message))


def cancelled(procedure):
    return procedure.new_return_values(Gimp.PDBStatusType.CANCEL, GLib.Error())


Gimp.main(Impasto.__gtype__, sys.argv)
