"""`localguard chat`: a guarded chat session in the terminal, or one answer with --prompt.

The session keeps the conversation (rendered through the model's chat template on every turn),
streams each answer as the Guard releases it (held-back streaming: flagged text never shows),
and prints a one-line safety meter after it: the highest response probability of the answer as
a bar, the query probability and the guard's actions. In a terminal a live meter rides after
the cursor while the answer streams: the response probability of the token just decoded (also
of tokens the guard later removes: it is what the guard sees), "!" when it counts as unsafe.
It is drawn with plain VT100 codes (erase to end of line, cursor back) and never wider than
the rest of the line, so the streamed text stays intact; piped output and --prompt get none.
Slash commands change the session:

    /reset              forget the conversation
    /save FILE          write the conversation as JSON; /load FILE reads one back
    /guard on|off|monitor
    /threshold X        flag at probability X (query and response); /threshold head: the file's
    /trace              per-token response probabilities of the last answer
    /help

Ctrl-C stops the current answer (what was shown stays in the conversation); Ctrl-D leaves.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import signal
import sys
import threading
import unicodedata
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from localguard.backends.base import GuardBackend, Sampling
from localguard.errors import InputError
from localguard.files import clean_json
from localguard.guard import MODES, GuardResult, GuardSettings, generate
from localguard.stats import sigmoid

HELP = """commands:
  /reset                 forget the conversation
  /save FILE             write the conversation as JSON
  /load FILE             read a conversation written by /save
  /guard on|off|monitor  intervene, do nothing, or only record
  /threshold X|head      flag at probability X (query and response), or the model's own
  /trace                 per-token response probabilities of the last answer
  /help                  this list
Ctrl-C stops an answer; Ctrl-D leaves."""
BAR_WIDTH = 10


def bar(p: float, width: int = BAR_WIDTH) -> str:
    if math.isnan(p):  # no score (a model without a safety head)
        return "-" * width
    filled = min(width, max(0, round(p * width)))
    return "#" * filled + "." * (width - filled)


def shown_probability(logit: float) -> str:
    """A logit as a probability with two decimals, "-" when there is none (nan)."""
    return "-" if math.isnan(logit) else f"{float(sigmoid(logit)):.2f}"


# --- the live meter ----------------------------------------------------------------------------

ERASE_LINE_END = "\x1b[K"  # VT100: erase from the cursor to the end of the line


def live_meter(p: float, flagged: bool, room: int) -> str:
    """The live meter's text for `room` free columns after the cursor: "  <safety ###.......
    0.31>" (" !>" when the token counts as unsafe), or "  <###.......>" when that does not fit,
    or "" when neither does."""
    mark = " !" if flagged else ""
    for text in (f"  <safety {bar(p)} {p:.2f}{mark}>", f"  <{bar(p)}{mark}>"):
        if len(text) <= room:
            return text
    return ""


def char_columns(ch: str) -> int:
    """Terminal columns one printable character takes: 2 for wide East Asian ones, 0 for
    combining marks and format characters, else 1."""
    if unicodedata.combining(ch) or unicodedata.category(ch) in ("Mn", "Me", "Cf", "Cc"):
        return 0
    return 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1


def advance(column: int | None, text: str, width: int) -> int | None:
    """The cursor's column after writing text from `column` on a terminal `width` columns wide
    with autowrap; `width` itself is the pending wrap after the last column. None: not known
    for sure (a tab or a wide character at the margin, a control character) until the next
    line."""
    for ch in text:
        if ch in "\n\r":
            column = 0
        elif column is None:
            continue
        elif ch == "\t":
            stop = (column // 8 + 1) * 8
            column = stop if stop < width else None
        elif unicodedata.category(ch) == "Cc":
            column = None
        else:
            cells = char_columns(ch)
            if column + cells <= width:
                column += cells
            elif column == width and cells:  # a pending wrap: the character starts a new line
                column = cells
            elif cells:  # a wide character that does not fit: terminals differ
                column = None
    return column


def terminal_columns(out: TextIO) -> int:
    try:
        return os.get_terminal_size(out.fileno()).columns or 80
    except (AttributeError, OSError, ValueError):
        return shutil.get_terminal_size((80, 24)).columns


class LiveMeter:
    """The live safety meter of one streamed answer, kept after the cursor.

    step() (the Guard's on_step) redraws it; text() (its on_text) erases it, writes the text
    and draws it again. Drawn = written after the cursor, then the cursor moved back over it
    (CSI n D), so the next text starts where it should and overwrites nothing of its own; it is
    drawn only where it fits before the line's end (one column spare), so it never wraps. The
    cursor's column is tracked from the text (wraps, tabs, wide and combining characters);
    where it is not known for sure, no meter is drawn until the next line."""

    def __init__(self, out: TextIO, columns: Callable[[], int] | None = None) -> None:
        self.out = out
        self.columns = columns or (lambda: terminal_columns(out))
        self.column: int | None = 0  # the cursor's column on its line (None: not known)
        self.width = 0  # the terminal width the column was counted for
        self.drawn = ""  # the meter on screen now
        self.p = math.nan
        self.flagged = False

    def step(self, score: float, flagged: bool) -> None:
        self.p = math.nan if math.isnan(score) else float(sigmoid(score))
        self.flagged = flagged
        self._redraw()
        self.out.flush()

    def text(self, piece: str) -> None:
        self._erase()
        self.out.write(piece)
        width = self._width()
        self.column = advance(self.column, piece, width)
        self._redraw()
        self.out.flush()

    def close(self) -> None:
        """Erase the meter (before the line ends or a message follows)."""
        self._erase()
        self.out.flush()

    def _width(self) -> int:
        width = max(1, self.columns())
        if width != self.width:  # a resized terminal rewraps: the column is not known
            self.column = self.column if not self.width or self.column == 0 else None
            self.width = width
        return width

    def _erase(self) -> None:
        if self.drawn:
            self.drawn = ""
            self.out.write(ERASE_LINE_END)

    def _redraw(self) -> None:
        width = self._width()
        if math.isnan(self.p) or self.column is None or self.column >= width:
            self._erase()  # no score, or no sure place (a pending wrap included)
            return
        text = live_meter(self.p, self.flagged, width - self.column - 1)
        if text == self.drawn:
            return
        self._erase()
        if text:
            self.drawn = text
            self.out.write(f"{text}\x1b[{len(text)}D")


def read_conversation(path: Path) -> list[dict]:
    """Messages from a JSON file: {"messages": [...]} (as /save writes) or a bare list."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise InputError(f"cannot read {path} ({exc.strerror or exc})") from None
    except ValueError as exc:
        raise InputError(f"{path} is not JSON ({exc})") from None
    messages = data.get("messages") if isinstance(data, dict) else data
    ok = isinstance(messages, list) and all(
        isinstance(m, dict)
        and m.get("role") in ("system", "user", "assistant")
        and isinstance(m.get("content"), str)
        for m in messages
    )
    if not ok:
        raise InputError(f"{path}: expected a list of {{role, content}} chat messages")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


class ChatSession:
    """The conversation, the guard settings and the last answer."""

    def __init__(
        self,
        backend: GuardBackend,
        settings: GuardSettings | None = None,
        sampling: Sampling | None = None,
        system: str | None = None,
    ) -> None:
        self.backend = backend
        self.settings = settings or GuardSettings()
        self.sampling = sampling or Sampling()
        self.settings.resolve(backend.head)  # fail early on bad settings
        self.system = system
        self.history: list[dict] = []
        self.last: GuardResult | None = None
        self.turns = 0

    def messages(self) -> list[dict]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + self.history

    def ask(
        self,
        text: str,
        on_text: Callable[[str], None] | None = None,
        on_step: Callable[[float, bool], None] | None = None,
    ) -> GuardResult:
        """The guarded answer to one user message; both join the conversation. Interrupted
        (KeyboardInterrupt), the text shown so far joins it and the interrupt goes on.
        on_step gets each decoded token's response logit and verdict (guard.generate)."""
        shown: list[str] = []

        def emit(piece: str) -> None:
            shown.append(piece)
            if on_text is not None:
                on_text(piece)

        chat = [*self.messages(), {"role": "user", "content": text}]
        sampling = self.sampling
        if sampling.seed is not None:  # a different, reproducible draw per turn
            sampling = dataclasses.replace(sampling, seed=sampling.seed + self.turns)
        self.turns += 1
        try:
            result = generate(self.backend, chat, self.settings, sampling, emit, on_step=on_step)
        except KeyboardInterrupt:
            self.last = None
            self.history += [chat[-1], {"role": "assistant", "content": "".join(shown)}]
            raise
        self.last = result
        self.history += [chat[-1], {"role": "assistant", "content": result.text}]
        return result

    # --- slash commands ---

    def command(self, line: str) -> str:
        """Run one slash command; the text to print. Bad usage is an InputError."""
        name, _, arg = line.strip().partition(" ")
        arg = arg.strip()
        if name == "/help":
            return HELP
        if name == "/reset":
            self.history, self.last = [], None
            return "conversation cleared"
        if name == "/save":
            if not arg:
                raise InputError("usage: /save FILE")
            data = {"messages": self.messages(), "settings": self.settings_record()}
            try:
                Path(arg).expanduser().write_text(json.dumps(data, indent=2) + "\n", "utf-8")
            except OSError as exc:
                raise InputError(f"cannot write {arg} ({exc.strerror or exc})") from None
            return f"saved {len(self.history)} messages to {arg}"
        if name == "/load":
            if not arg:
                raise InputError("usage: /load FILE")
            messages = read_conversation(Path(arg).expanduser())
            system = [m["content"] for m in messages if m["role"] == "system"]
            self.system = system[0] if system else self.system
            self.history = [m for m in messages if m["role"] != "system"]
            self.last = None
            return f"loaded {len(self.history)} messages from {arg}"
        if name == "/guard":
            if arg not in MODES:
                raise InputError(f"usage: /guard {'|'.join(MODES)}")
            self.settings = dataclasses.replace(self.settings, mode=arg)
            return f"guard {arg}"
        if name == "/threshold":
            return self._threshold(arg)
        if name == "/trace":
            return self.trace()
        raise InputError(f"unknown command {name}; /help lists them")

    def _threshold(self, arg: str) -> str:
        if arg == "head":
            value = None
        else:
            try:
                value = float(arg)
            except ValueError:
                raise InputError("usage: /threshold X (a probability in [0, 1]) or head") from None
            if not 0.0 <= value <= 1.0:
                raise InputError(f"a threshold is a probability in [0, 1], not {value}")
        self.settings = dataclasses.replace(
            self.settings, query_threshold=value, response_threshold=value
        )
        return "threshold from the model" if value is None else f"threshold {value:g}"

    def settings_record(self) -> dict:
        cfg = self.settings.resolve(self.backend.head)
        return {
            "mode": cfg.mode,
            "query_threshold": float(sigmoid(cfg.query_threshold)),
            "response_threshold": float(sigmoid(cfg.response_threshold)),
            "tau": cfg.tau,
            "window": cfg.window,
            "refusal_prefix": cfg.refusal_prefix,
        }

    # --- what the user sees ---

    def trace_rows(self, result: GuardResult | None = None) -> list[dict]:
        result = result or self.last
        if result is None:
            return []
        return [
            {
                "token": int(t),
                "text": self.backend.decode([t]),
                "logit": float(s),
                "probability": float(sigmoid(float(s))),
            }
            for t, s in zip(result.tokens, result.response_logits, strict=True)
        ]

    def trace(self) -> str:
        rows = self.trace_rows()
        if self.last is None:
            return "no answer to trace yet"
        threshold = self.settings.resolve(self.backend.head).response_threshold
        query = self.last.query_logit
        lines = [f"query p={'-' if math.isnan(query) else f'{float(sigmoid(query)):.3f}'}"]
        for i, row in enumerate(rows):
            mark = " !" if row["logit"] >= threshold else ""
            lines.append(
                f"{i:4d} {row['probability']:.3f} {bar(row['probability'])} "
                f"{json.dumps(row['text'])}{mark}"
            )
        for event in self.last.interventions:
            lines.append(
                f"guard: {event.action} on {event.output} at token {event.at} "
                f"(step {event.step}, {event.dropped} dropped)"
            )
        return "\n".join(lines)

    def meter(self, result: GuardResult) -> str:
        """One line: the answer's highest response probability as a bar, and what the guard did."""
        scores = [s for s in result.response_logits if not math.isnan(s)]
        if scores or not result.response_logits:
            p = float(sigmoid(max(scores, default=-math.inf)))  # no tokens: 0
            safety = f"{bar(p)} {p:.2f}"
        else:  # no scores: a model without a safety head
            safety = f"{bar(math.nan)} -"
        actions = [f"{e.action} ({e.output})" for e in result.interventions]
        tail = f" | {', '.join(actions)}" if actions else ""
        return (
            f"[safety {safety} | query {shown_probability(result.query_logit)} | "
            f"guard {self.settings.mode}{tail}]"
        )

    def record(self, result: GuardResult) -> dict:
        """--json: the answer, its trace and the guard's actions."""
        return {
            "text": result.text,
            "finish": result.finish,
            "query_logit": result.query_logit,
            "query_probability": float(sigmoid(result.query_logit)),
            "trace": self.trace_rows(result),
            "actions": [dataclasses.asdict(e) for e in result.interventions],
            "settings": result.settings,
            "prompt_tokens": result.prompt_tokens,
            "steps": result.steps,
        }


def answer_once(session: ChatSession, prompt: str, as_json: bool, out: TextIO, err: TextIO):
    """--prompt: one answer, streamed (or as one JSON object with --json)."""
    if as_json:
        result = session.ask(prompt)
        out.write(json.dumps(clean_json(session.record(result)), indent=2) + "\n")
        return result

    def show(piece: str) -> None:
        out.write(piece)
        out.flush()

    result = session.ask(prompt, show)
    out.write("\n")
    err.write(session.meter(result) + "\n")
    return result


def interactive(
    session: ChatSession,
    read: Callable[[str], str] = input,
    out: TextIO = sys.stdout,
    err: TextIO = sys.stderr,
    live: bool | None = None,
) -> None:
    """The read-answer loop until end of input (Ctrl-D). live: the live safety meter while an
    answer streams; None: when out is a terminal (not TERM=dumb) and the model has a head."""
    if threading.current_thread() is threading.main_thread():
        # a process started in the background by a shell inherits SIGINT ignored, and Python
        # then never raises KeyboardInterrupt: Ctrl-C must stop an answer all the same
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if live is None:
        live = bool(session.backend.head.names) and is_terminal(out)
    err.write("localguard chat: /help lists the commands, Ctrl-D leaves.\n")

    def show(piece: str) -> None:
        out.write(piece)
        out.flush()

    while True:
        try:
            line = read("> ")
        except EOFError:
            out.write("\n")
            return
        except KeyboardInterrupt:  # at the prompt: a fresh line, not an exit
            out.write("\n")
            continue
        if not line.strip():
            continue
        try:
            if line.lstrip().startswith("/"):
                out.write(session.command(line) + "\n")
                continue
            meter = LiveMeter(out) if live else None
            if meter is None:
                result = session.ask(line, show)
            else:
                try:
                    result = session.ask(line, meter.text, meter.step)
                finally:
                    meter.close()
            out.write("\n")
            err.write(session.meter(result) + "\n")
        except KeyboardInterrupt:
            out.write("\n")
            err.write("[answer stopped]\n")
        except InputError as exc:
            err.write(f"error: {exc}\n")
        out.flush()
        err.flush()


def is_terminal(out: TextIO) -> bool:
    """Whether out is a terminal that takes cursor movement (not TERM=dumb)."""
    try:
        tty = out.isatty()
    except (AttributeError, ValueError):
        return False
    return tty and os.environ.get("TERM") != "dumb"
