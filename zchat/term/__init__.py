"""The terminal wing: the chat as people see it.

It owns how events read on a screen (:mod:`~zchat.term.render`, :mod:`~zchat.term.ui`), the
full-screen client (:mod:`~zchat.term.tui`) and its command language
(:mod:`~zchat.term.commands`), the plain line mode and the threads that join input to the
network (:mod:`~zchat.term.plain`), and transcripts (:mod:`~zchat.term.transcript`).

It uses :mod:`zchat.client` for everything that touches the broker and the shared ground
(:mod:`zchat.protocol`, :mod:`zchat.errors`); it never imports :mod:`zchat.broker`: the terminal
is one client among others and may know no more of the broker than the protocol says.
"""
