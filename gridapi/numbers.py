"""Numbers written as text (query strings, Open311 forms): plain ASCII decimals only.

``float()`` and ``int()`` also read "1_20" (120), "３１.３", "nan", "inf" and text padded with
any whitespace; none of them is a number a client means to send, and a malformed coordinate
read that way becomes another coordinate.
"""

from __future__ import annotations

import re

#: A sign, ASCII digits, a fraction, an exponent.
PLAIN_DECIMAL = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
#: A sign and ASCII digits.
PLAIN_WHOLE = re.compile(r"[+-]?[0-9]+")
#: The largest whole number every JSON reader holds exactly (JavaScript's
#: Number.MAX_SAFE_INTEGER): a number attribute beyond it was a 500 past 64 bits.
MAX_EXACT = 2**53 - 1
