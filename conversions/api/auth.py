"""Token auth that accepts both `Token <key>` and `Bearer <key>` (DRF tokens)."""

import re

from rest_framework.authentication import TokenAuthentication, get_authorization_header
from rest_framework.exceptions import AuthenticationFailed

# RFC 6750 token68 characters. Anything else (NUL bytes, spaces, non-ASCII) is refused
# before it reaches a database lookup that could choke on it.
_KEY_RE = re.compile(r"[A-Za-z0-9\-._~+/]{1,255}=*")
SCHEMES = (b"token", b"bearer")


class TokenOrBearerAuthentication(TokenAuthentication):
    def authenticate(self, request):
        header = get_authorization_header(request).split()
        if not header or header[0].lower() not in SCHEMES:
            return None  # another scheme or none: unauthenticated -> 401 via permissions
        if len(header) != 2:
            raise AuthenticationFailed("Invalid token header: expected '<scheme> <key>'.")
        try:
            key = header[1].decode("ascii")
        except UnicodeError as exc:
            raise AuthenticationFailed("Invalid token.") from exc
        if not _KEY_RE.fullmatch(key):
            raise AuthenticationFailed("Invalid token.")
        return self.authenticate_credentials(key)

    def authenticate_header(self, request) -> str:
        # Two challenges: either scheme works with the same key.
        return 'Token realm="api", Bearer realm="api"'
