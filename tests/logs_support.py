"""What a log line of xatm's text format looks like, for the log tests in process and end to end."""

from __future__ import annotations

import re

#: A line of the text format: time with milliseconds, level, logger name, then the message.
TEXT_LINE = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) [\w.]+: \S"
)
