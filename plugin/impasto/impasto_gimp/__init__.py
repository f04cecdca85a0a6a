"""Impasto's GIMP side, one room per thing; impasto.py beside this folder registers the procedure and
runs it. Read in this order:

- job.py: one run, from the procedure's arguments to the new layer
- remote.py: the only module that imports the network client (vendor/impasto/client.py): the
  connection, the style and the job's settings made from the arguments
- local_server.py: the plug-in's own server (impasto-server.json), started when its address is the one
  to use and nothing answers there
- layers.py: the layer's pixels out, the result layer in
- progress.py: a job's progress, in its own window or in GIMP's status bar
- dialog.py: the style dialog; presets.py: its grid of the server's presets; preview.py: its preview
  (OK's own job, only its beginning); cost.py: its cost line (the server's plan of OK's job) and the
  question before a long job; token_field.py: its Token field, bound to no argument (and ../help.html:
  the page its Help button opens)
- store.py: impasto.json, the server last used and a token per server
- pictures.py: pictures for the dialogs (GdkPixbuf)
- hook.py: the GUI tests' door (IMPASTO_TEST_HOOK), unused otherwise

Pure Python, like the client: GIMP's Python on Windows cannot load compiled modules.
"""

import gi

gi.require_version("Gimp", "3.0")
gi.require_version("GimpUi", "3.0")
gi.require_version("Gegl", "0.4")
gi.require_version("Gdk", "3.0")
gi.require_version("GdkPixbuf", "2.0")
gi.require_version("Gtk", "3.0")
