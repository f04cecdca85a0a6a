"""The dialog's cost line: what OK will cost on the server for the current choices, from the server's own
plan of the job (working size, tiles, time, device), and the question OK asks before a long job.

The plan is asked for by the preview's worker thread just before it starts the preview's job (preview.py),
so that the server never counts the dialog's own preview among the jobs ahead; the answer reaches GTK
through GLib.idle_add, and one for choices changed meanwhile is dropped."""

import dataclasses
from collections.abc import Callable

from gi.repository import Gimp, GLib, Gtk

from . import hook
from .layers import Box, painted_box
from .pictures import file_image_size
from .remote import (
    FAILURES,
    Client,
    ImageHeader,
    ImpastoError,
    JobPlan,
    Kind,
    Settings,
    Style,
    Tls,
    chosen_style,
    connect,
    job_settings,
    sentence,
    style_file_path,
)
from .store import server_address, token_for

LONG_JOB_SECONDS = 300  # OK asks before a job longer than this, and on a CPU suggests a GPU server
PLAN_TIMEOUT = 5.0  # s: a plan is a short call


@dataclasses.dataclass(frozen=True)
class Question:
    """OK's job as the dialog's choices make it now, in sizes: what a plan is asked for."""

    address: str
    token: str | None
    tls: Tls
    box: Box  # the part of the layer OK paints (x, y, width, height)
    style: Style
    upload_size: tuple[int, int]  # a style image's width and height; (0, 0): none, or unknown
    settings: Settings

    @property
    def content(self) -> ImageHeader:
        width, height = self.box[2:]
        return ImageHeader("rgba8", width * height * 4, width, height)


Answer = tuple[JobPlan | None, Exception | None]  # the plan, or why there is none


def refuses(error: Exception | None) -> bool:
    """Whether the server would refuse the job as it is: OK cannot go on."""
    return isinstance(error, ImpastoError) and (error.refused or error.kind is Kind.OUT_OF_MEMORY)


def duration(seconds: float) -> str:
    """ "25 s", "12 min", "1 h 50 min": an estimate, said as roughly as it is known."""
    if seconds < 59.5:
        return f"{max(1, round(seconds))} s"
    hours, minutes = divmod(round(seconds / 60), 60)
    if not hours:
        return f"{minutes} min"
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"


def describe(plan: JobPlan) -> tuple[str, str]:
    """(how long and on what: "about 25 s on cpu (AMD EPYC)"; the rest: the working size and its tiles,
    a GPU server's promise for a long job on a CPU, the jobs ahead)."""
    device = plan.device
    name = f" ({device.name})" if device.name else ""
    how_long = f"about {duration(plan.estimated_seconds)} on {device.kind}{name}"
    tiles = f" in {plan.tiles} tiles" if plan.tiles else ""
    rest = f"at {plan.working_width}×{plan.working_height} px{tiles}"
    if device.kind == "cpu" and plan.estimated_seconds > LONG_JOB_SECONDS:
        rest += " — a GPU server would be much faster"
    if plan.jobs_ahead:
        rest += f"; {plan.jobs_ahead} job{'s' if plan.jobs_ahead > 1 else ''} ahead of it now"
    return how_long, rest


class CostLine:
    """`label` is the line, hidden while it has nothing to say (not connected, no style), greyed out while
    it says what the choices before the latest change cost. The preview's pane shows it under its own line,
    beside the picture, where a few lines of text (a refusal's sentence) make the dialog no taller."""

    def __init__(self, config: Gimp.ProcedureConfig, layer: Gimp.Layer, typed_token: Callable[[], str]):
        self.config = config
        self.layer = layer
        self.typed_token = typed_token  # the dialog's token field, which is no argument of the config
        # Wrapped, asking for little width and using all there is: its text never widens the dialog.
        self.label = Gtk.Label(xalign=0, yalign=0, wrap=True, max_width_chars=36, no_show_all=True)
        self.asked: Question | None = None  # the latest question: answers to others are late
        self.answered: tuple[Question, Answer] | None = None
        self.closed = False

    def question(self) -> Question:
        """OK's job for the choices as they are (on GTK's thread: it reads the config and the image).
        Raises one of FAILURES for choices that cannot make a job (a style file that cannot be read)."""
        address = server_address(self.config)
        box = painted_box(self.layer.get_image(), self.layer, self.config.get_property("full-size"))
        style = chosen_style(self.config)
        path = style_file_path(self.config)
        upload_size = file_image_size(path) if path is not None else (0, 0)
        token = token_for(address, self.typed_token())
        question = Question(
            address, token, Tls.of(self.config), box, style, upload_size, job_settings(self.config)
        )
        self.asked = question
        return question

    def answer(self, client: Client, question: Question) -> Exception | None:
        """On a worker thread: asks `client`'s server for the plan of `question`'s job and shows it (through
        GLib.idle_add). Returns the server's refusal, if it refuses the job."""
        answer = plan(client, question)
        GLib.idle_add(self._answered, question, answer)
        return answer[1] if refuses(answer[1]) else None

    def outdated(self) -> None:
        """A choice changed: the line, greyed out, waits for the plan of the new choices."""
        self.label.set_sensitive(False)

    def forget(self) -> None:
        """Nothing to say: not connected, or no style chosen."""
        self.asked = self.answered = None
        self.label.hide()

    def close(self) -> None:
        self.closed = True

    def shows(self, question: Question) -> bool:
        """Whether the line shows the answer for `question`."""
        return self.answered is not None and self.answered[0] == question

    def approve(self, parent: Gtk.Window) -> bool:
        """OK was pressed: True when the job may go. A job the server refuses stays (the line says why);
        one that takes longer than LONG_JOB_SECONDS goes only if the user says so. Asks the server now (a
        short call) where the line is not yet for the choices as they are. Raises one of FAILURES for
        choices that cannot make a job (a selection beside the layer at full size)."""
        question = self.question()
        if not self.shows(question):
            try:
                with connect(question.tls, question.address, question.token, timeout=PLAN_TIMEOUT) as client:
                    self._answered(question, plan(client, question))
            except FAILURES as error:
                self._answered(question, (None, error))
        _, (job_plan, error) = self.answered
        if job_plan is None or job_plan.estimated_seconds <= LONG_JOB_SECONDS:
            return not refuses(error)
        return self._confirmed(parent, job_plan)

    def _confirmed(self, parent: Gtk.Window, job_plan: JobPlan) -> bool:
        how_long, rest = describe(job_plan)
        confirmation = Gtk.MessageDialog(
            transient_for=parent,
            modal=True,
            message_type=Gtk.MessageType.QUESTION,
            buttons=Gtk.ButtonsType.NONE,
            text=f"This will take {how_long}. Paint anyway?",
            title="Impasto: a long job",
        )
        confirmation.format_secondary_text(rest[:1].upper() + rest[1:] + ".")
        confirmation.add_buttons("_Cancel", Gtk.ResponseType.CANCEL, "_Paint", Gtk.ResponseType.OK)
        confirmation.set_default_response(Gtk.ResponseType.OK)
        hook.attach(confirmation)
        response = confirmation.run()
        confirmation.destroy()
        return response == Gtk.ResponseType.OK

    def _answered(self, question: Question, answer: Answer) -> bool:
        if self.closed or question != self.asked:
            return False  # the choices changed meanwhile
        self.answered = question, answer
        self.label.set_sensitive(True)
        job_plan, error = answer
        if job_plan is not None:
            how_long, rest = describe(job_plan)
            self.label.set_text(f"OK takes {how_long}, {rest}.")
        elif refuses(error):
            self.label.set_markup(f"<b>{GLib.markup_escape_text(sentence(error).rstrip('.'))}.</b>")
        elif isinstance(error, ImpastoError) and error.kind is Kind.INCOMPATIBLE:
            self.label.set_text("This server cannot tell what OK will cost (an older impasto-server).")
        else:
            self.label.set_text(f"What OK will cost is not known: {sentence(error).rstrip('.')}.")
        self.label.show()
        return False  # once, for GLib.idle_add


def plan(client: Client, question: Question) -> Answer:
    """The server's plan of `question`'s job, or why there is none."""
    try:
        return question.style.plan(client, question.content, question.settings, question.upload_size), None
    except ImpastoError as error:
        return None, error
