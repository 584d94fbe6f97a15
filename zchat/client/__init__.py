"""The client wing: what bots, tools and the terminal use to talk to a broker.

It owns one session with a broker — joining, heartbeats, noticing a lost broker and rejoining,
the outbox of unconfirmed messages, per-room ordering and gap repair — as the sans-IO
:mod:`~zchat.client.session` and :mod:`~zchat.client.sequencer`; the I/O around them as
:mod:`~zchat.client.shell` (:class:`~zchat.client.shell.Client`: the blocking API and the
polling that feeds the session), :mod:`~zchat.client.links` (the sockets to the brokers of the
chat: which one is used, opening, failing over, closing) and :mod:`~zchat.client.feed` (the feed
socket and proving its subscriptions live); and :mod:`~zchat.client.bot`, a small framework on top.

It stands on the shared ground (:mod:`zchat.protocol`, :mod:`zchat.errors`,
:mod:`zchat.transport`, :mod:`zchat.keys`) and never imports :mod:`zchat.broker` (a client
learns the broker only from the wire, as a bot in another language would) or :mod:`zchat.term`
(rendering is the caller's business).
"""
