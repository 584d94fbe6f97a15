"""The broker wing: what an operator runs.

It owns the rules of the chat as the broker keeps them — sessions as leases, rooms and their
gapless ``seq``, stamping, identity (who may be whom under CURVE), rate limits — in the sans-IO
:mod:`~zchat.broker.core`; the poll loop that binds the three sockets and applies the core's
effects after the store commits (:mod:`~zchat.broker.shell`); the history store
(:mod:`~zchat.broker.store`); and the feed relay (:mod:`~zchat.broker.relay`).

It stands on the shared ground (:mod:`zchat.protocol`, :mod:`zchat.errors`,
:mod:`zchat.transport`, :mod:`zchat.keys`) and never imports :mod:`zchat.client` or
:mod:`zchat.term`: a broker must be deployable without the client's or the terminal's code, and
nothing a client does may leak into how the broker decides.
"""
