"""The ``herocollector`` command line: one module per command, assembled by :mod:`herocollector.cli.main`.

Every command module (``collect``, ``inspect``, ``cleanup``, ``restore``, ``verify``, ``check_config``,
``remote``, ``demo``) has the same small interface,
described by :class:`herocollector.cli.common.Command`:

``NAME: str``
    The sub-command's name, as typed on the command line.
``register(subparsers) -> None``
    Adds the sub-command's parser (``subparsers.add_parser(NAME, ...)``) with its help and options.
    Argument types shared by several commands (milliseconds, positive integers, ...) and the
    ``--timeout``/``--backoff`` pair are in :mod:`herocollector.cli.common`.
``run(args, out, err) -> int``
    Does the work for the parsed ``args``, printing results to the ``out`` console (stdout) and
    progress and messages to ``err`` (stderr), and returns the exit status (0 ok, 1 error).
    It may raise a :class:`~herocollector.errors.CollectorError` (or ``OSError``, ``ValueError``,
    ``TimeoutError``): :func:`herocollector.cli.main.main` prints it as one line and exits 1.
    ``SIGINT``, ``SIGTERM`` and ``SIGHUP`` arrive as :class:`herocollector.cli.common.Interrupted`
    (a ``KeyboardInterrupt``), so ``finally`` blocks and context managers remove what the command
    was writing; ``main`` then prints one line and exits 130, 143 or 129.

To add a command, write ``herocollector/cli/<name>.py`` with these three names and add the module
to the ``COMMANDS`` tuple in :mod:`herocollector.cli.main`; the order of the tuple is the order of
``herocollector --help``.
"""
