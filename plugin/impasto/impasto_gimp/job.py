"""One run of the procedure, once its arguments are chosen: the layer and the style go to the server,
the job's progress shows, and the result comes back as a new layer."""

from gi.repository import Gimp

from .layers import add_result_layer, check_still_there, painted_box, read_layer
from .local_server import start_if_needed
from .progress import ProgressWindow, follow_in_status_bar
from .remote import Tls, chosen_style, connect, job_settings, style_title
from .store import remember, server_address, token_for


def paint(
    image: Gimp.Image, layer: Gimp.Layer, config: Gimp.ProcedureConfig, run_mode: Gimp.RunMode
) -> Gimp.Layer | None:
    """Paints `layer` in the chosen style: the new layer, or None when the user cancelled. Raises one of
    remote.FAILURES, with a sentence for the user; the image is then left as it was.

    When the server to use is the plug-in's own and nothing answers there, it is started first.
    Scripts (non-interactive runs) pass their own token; the dialog and Filters ▸ Repeat fall back on
    the token remembered for the server, and remember the one that worked."""
    interactive = run_mode == Gimp.RunMode.INTERACTIVE
    remembers = run_mode != Gimp.RunMode.NONINTERACTIVE
    address = server_address(config)
    typed = config.get_property("token")
    token = token_for(address, typed) if remembers else typed
    style = chosen_style(config)
    full_size = config.get_property("full-size")
    box = painted_box(image, layer, full_size)
    content = read_layer(layer, box)
    start_if_needed(address, Gimp.progress_init)  # its progress text says so while it starts
    with connect(Tls.of(config), address, token) as client:
        if full_size:
            client.require_full_size()  # an older server would paint at its working size without a word
        title = style_title(client, style)
        job = style.start(client, content, job_settings(config))
        finished = ProgressWindow(job, title).run() if interactive else follow_in_status_bar(job, title)
    if not finished:
        return None
    remember(address, token if remembers else None)
    check_still_there(image, layer)
    return add_result_layer(image, layer, box, job.result, title)
