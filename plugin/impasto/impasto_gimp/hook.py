"""The GUI tests' one door into the plug-in; users never open it.

When the environment variable IMPASTO_TEST_HOOK names a Python file, that file is loaded once and its
`attach(window)` is called with each window the plug-in shows (the StyleDialog once it has connected,
the Gtk.MessageDialog that asks before a long job, then the ProgressWindow), so that it can press their
buttons: tests/gimp/autopilot.py does. Without the variable nothing is loaded, and the plug-in's zip
ships no such file.
"""

import functools
import importlib.util
import os


@functools.cache
def _loaded():
    path = os.environ.get("IMPASTO_TEST_HOOK")
    if not path:
        return None
    spec = importlib.util.spec_from_file_location("impasto_test_hook", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def attach(window: object) -> None:
    module = _loaded()
    if module is not None:
        module.attach(window)
