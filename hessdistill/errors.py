"""The base class of hessdistill's own errors: input it refuses (a file, a structure, a setting), said in one line.

Every error class of the package derives from ``HessdistillError`` as well as from the builtin it has always been
(``StoreError`` is still a ``ValueError``), so existing ``except ValueError`` keeps working. The commands print such
an error as one ``error: <message>`` line without a traceback (``hessdistill.cli.entry``).
"""


class HessdistillError(Exception):
    """Input hessdistill refuses; the message names the file, structure or setting and what is wrong, in one line."""
