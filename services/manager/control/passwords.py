"""Passwords as salted, deliberately slow scrypt hashes. Pure apart from the salt."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from typing import Final

N: Final = 1 << 14
R: Final = 8
P: Final = 1


def hash_password(password: str) -> str:
    """``scrypt$n$r$p$salt$hash`` (base64 parts)."""
    salt = os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=N, r=R, p=P, dklen=32)
    return "$".join(("scrypt", str(N), str(R), str(P), base64.b64encode(salt).decode(),
                     base64.b64encode(digest).decode()))


def verify_password(password: str, stored: str) -> bool:
    """Whether ``password`` matches a ``hash_password`` value; False for any malformed one."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        got = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r),
                             p=int(p), dklen=32)
    except ValueError:
        return False
    return hmac.compare_digest(got, base64.b64decode(digest))
