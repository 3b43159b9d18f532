"""Credentials out of everything edgecnn shows or stores: messages, JSON, recordings' metadata, bundle printouts.

One function, `mask_credentials`, used wherever a source URL or a pipeline can reach a person or a file. It hides:
- the user info of a URL, everything up to the LAST `@` of its authority (`rtsp://admin:p@ss@host/` keeps no part of
  a password holding an unencoded `@`),
- secret query values (`?password=`, `&token=`, `&sig=`, ...),
- GStreamer authentication properties (`user-pw=`, `user-id=`, `proxy-pw=`, ...).
No imports beyond `re`: floor 0, usable by the CLI's error path before anything else loads.
"""

from __future__ import annotations

import re

# scheme://AUTHORITY: the authority ends at the first '/', '?', '#' or blank; greedy, so it runs to its last '@'
_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/\s?#]*@")
_SECRET_QUERY = re.compile(
    r"(?i)(?P<key>[?&;](?:pass|password|passwd|pwd|token|access_token|key|apikey|api_key|auth|secret|sig|signature)=)[^&#\s]*"
)
_SECRET_PROP = re.compile(
    r"(?i)(?P<key>(?<![?&;\w-])(?:user-pw|user-id|proxy-pw|proxy-id|password)\s*=\s*)(\"[^\"]*\"|'[^']*'|\S+)"
)


def mask_credentials(text: str) -> str:
    """`text` with credentials replaced by `***`: URL user info, secret query values, GStreamer auth properties."""
    text = _USERINFO.sub(lambda m: m.group("scheme") + "***@", str(text))
    text = _SECRET_QUERY.sub(lambda m: m.group("key") + "***", text)
    return _SECRET_PROP.sub(lambda m: m.group("key") + "***", text)
