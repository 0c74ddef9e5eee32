"""Token auth that accepts both `Token <key>` and `Bearer <key>`."""

from rest_framework.authentication import TokenAuthentication, get_authorization_header
from rest_framework.exceptions import AuthenticationFailed


class TokenOrBearerAuthentication(TokenAuthentication):
    def authenticate(self, request):
        header = get_authorization_header(request).split()
        if not header:
            return None
        scheme = header[0].lower()
        if scheme not in (b"token", b"bearer"):
            return None
        if len(header) != 2:
            raise AuthenticationFailed("Invalid token header: expected '<scheme> <key>'.")
        try:
            key = header[1].decode()
        except UnicodeError as exc:
            raise AuthenticationFailed("Invalid token header: not valid text.") from exc
        return self.authenticate_credentials(key)

    def authenticate_header(self, request) -> str:
        return "Token"
