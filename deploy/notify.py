"""Job notifications through Apprise: Slack, Teams (workflows://), e-mail, any JSON webhook, and every
other service Apprise speaks, routed by the job's namespace.

``CUSTOMIZER_NOTIFY_URLS`` maps a namespace, or ``"*"`` for every namespace, to a list of Apprise URLs;
the deprecated ``CUSTOMIZER_NOTIFY_WEBHOOK_URL`` is one more ``"*"`` target that keeps receiving
Slack-compatible ``{"text": ...}``. Core settings check both at start-up.

A notification is retried a few times on failure, then logged; it never fails the job it reports on.
Notification URLs are secrets (a Slack webhook's path is its token): customizer logs a service's name
and its redacted URL only, and the secret parts of the configured URLs are masked in the lines that
Apprise and urllib3 log themselves.
"""

from __future__ import annotations

import logging
import time
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

from core.settings import Settings

logger = logging.getLogger("customizer.notify")

ATTEMPTS = 3  # per target: a first try and two retries
BACKOFF_S = 0.5  # waited before the second attempt, doubled before each further one
GIVE_UP_AFTER_S = 15.0  # no further attempt once a target has taken this long (Apprise's timeouts are 4 s + 4 s)

# The Apprise JSON body remapped to Slack's: "message" is sent as "text", Apprise's other fields dropped.
_SLACK_BODY = {":version": "", ":title": "", ":attachments": "", ":type": "", ":message": "text"}


def notify(settings: Settings, text: str, namespace: str | None = None) -> bool:
    """Send ``text`` to every target of ``namespace`` and of ``"*"``, each retried on failure.

    Args:
        settings: where the targets are configured (``notify_urls``, ``notify_webhook_url``).
        text: the message.
        namespace: the job's namespace (its output model's first part); None: only the ``"*"`` targets.

    Returns:
        True if every target accepted it; False if none is configured or one was not delivered (logged).
    """
    urls = targets(settings, namespace)
    if not urls:
        return False
    # delayed: apprise loads its ~150 service plugins (~0.2 s); only processes that notify pay for it
    import apprise

    _install_redaction()
    delivered = True
    for url in urls:
        _REDACTION.hide(url, _secret_parts(url))  # before Apprise parses it: it logs what it loads
        plugin = apprise.Apprise.instantiate(url)
        if plugin is None:  # the settings refuse such URLs; a plugin that stopped loading since is still logged
            logger.warning("Notification not delivered: Apprise no longer reads a %s:// URL (%s)",
                           url.partition("://")[0], text[:200])
            delivered = False
            continue
        _REDACTION.hide(url, _secret_parts(url, shown=plugin.url(privacy=True)))
        delivered = _deliver(plugin, text) and delivered
    return delivered


def targets(settings: Settings, namespace: str | None) -> list[str]:
    """The Apprise URLs a notification of ``namespace`` goes to: ``"*"``'s, then the namespace's own,
    then the deprecated webhook; each once."""
    routes = settings.notify_routes
    urls = routes.get("*", []) + (routes.get(namespace, []) if namespace and namespace != "*" else [])
    if settings.notify_webhook_url:
        urls.append(webhook_as_apprise(settings.notify_webhook_url.get_secret_value()))
    return list(dict.fromkeys(urls))


def webhook_as_apprise(url: str) -> str:
    """The Apprise URL that posts Slack-compatible ``{"text": ...}`` to an http(s) webhook, as
    ``CUSTOMIZER_NOTIFY_WEBHOOK_URL`` always did; its query goes through unchanged.

    >>> webhook_as_apprise("https://hooks.example.com/services/T0/B0/X0?team=a")
    'jsons://hooks.example.com/services/T0/B0/X0?-team=a&%3Aversion=&%3Atitle=&%3Aattachments=&%3Atype=&%3Amessage=text'
    >>> webhook_as_apprise("http://127.0.0.1:8080/hook").split("?")[0]
    'json://127.0.0.1:8080/hook'
    """
    parts = urlsplit(url.strip())
    query = [(f"-{key}", value) for key, value in parse_qsl(parts.query, keep_blank_values=True)]
    scheme = "jsons" if parts.scheme == "https" else "json"
    return f"{scheme}://{parts.netloc}{parts.path}?{urlencode(query + list(_SLACK_BODY.items()))}"


def describe(plugin) -> str:
    """A target as logs may name it: the service and its redacted URL without path or query.

    Apprise's privacy URL masks passwords and tokens but shows a webhook's path, which may be its token.
    """
    parts = urlsplit(plugin.url(privacy=True))
    return f"{plugin.service_name} ({parts.scheme}://{parts.netloc}{'/…' if parts.path.strip('/') else ''})"


def _deliver(plugin, text: str) -> bool:
    """Send to one target, retrying with backoff: a webhook that answers 503 or drops the connection
    now usually takes the same message a second later."""
    started = time.monotonic()
    for attempt in range(1, ATTEMPTS + 1):
        if plugin.notify(body=text, title=""):
            return True
        if attempt == ATTEMPTS or time.monotonic() - started > GIVE_UP_AFTER_S:
            break
        logger.info("Notification to %s failed (attempt %d of %d); retrying", describe(plugin), attempt, ATTEMPTS)
        time.sleep(BACKOFF_S * 2 ** (attempt - 1))
    logger.warning("Notification not delivered to %s after %d attempts: %s", describe(plugin), attempt, text[:200])
    return False


_MIN_SECRET = 4  # shorter pieces are no credential, and masking them would garble every message


def _secret_parts(url: str, shown: str | None = None) -> set[str]:
    """The pieces of ``url`` that may be credentials: the whole URL, its password, path segments, query
    values and fragment, and its user and host unless Apprise's privacy URL ``shown`` shows them (an
    e-mail server's host is public; a slack:// URL's host is a token).

    >>> sorted(_secret_parts("json://bob:hunter22@127.0.0.1:8080/hooks/tok3n?key=v4lue", shown="json://bob:****@127.0.0.1:8080"))
    ['hooks', 'hunter22', 'json://bob:hunter22@127.0.0.1:8080/hooks/tok3n?key=v4lue', 'tok3n', 'v4lue']
    """
    parts = urlsplit(url)
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    host = hostport.rsplit(":", 1)[0] if hostport.count(":") == 1 else hostport
    visible = urlsplit(shown).netloc if shown else ""
    pieces = {url, password, parts.fragment, *parts.path.split("/"), *(v for _, v in parse_qsl(parts.query))}
    pieces |= {piece for piece in (user, host) if piece not in visible.replace("****", "")}
    pieces |= {unquote(piece) for piece in pieces}
    return {piece for piece in pieces if len(piece) >= _MIN_SECRET}


class _Redaction(logging.Filter):
    """Masks the secret parts of the configured notification URLs in a logger's records.

    Apprise logs a webhook's full address at debug level and repeats a URL it cannot load at error
    level; urllib3 logs each request's path. Kept per URL, so a piece one URL shows (its host) stays
    masked where another URL holds it as a secret.
    """

    def __init__(self) -> None:
        super().__init__()
        self._by_url: dict[str, frozenset[str]] = {}
        self._ordered: tuple[str, ...] = ()

    def hide(self, url: str, pieces: set[str]) -> None:
        self._by_url[url] = frozenset(pieces)
        self._ordered = tuple(sorted(set().union(*self._by_url.values()), key=len, reverse=True))

    def filter(self, record: logging.LogRecord) -> bool:
        ordered = self._ordered  # longest first: a URL is masked whole before its parts
        message = record.getMessage()
        if any(piece in message for piece in ordered):
            for piece in ordered:
                message = message.replace(piece, "****")
            record.msg, record.args = message, None
        return True


_REDACTION = _Redaction()
# A filter acts only on its own logger's records (not its children's), so each logger that writes a URL is named.
_REDACTED_LOGGERS = ("apprise", "urllib3.connectionpool", "urllib3.poolmanager", "urllib3.util.retry")


def _install_redaction() -> None:
    for name in _REDACTED_LOGGERS:
        named = logging.getLogger(name)
        if _REDACTION not in named.filters:
            named.addFilter(_REDACTION)
