"""Job notifications to a webhook as Slack-compatible JSON (``{"text": ...}``): Slack, Mattermost,
Rocket.Chat and Teams' incoming webhooks, or any endpoint that takes that body.

A notification that cannot be delivered is logged and never fails the job it reports on.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request

from core.settings import Settings

logger = logging.getLogger("customizer.notify")


def notify(settings: Settings, text: str) -> bool:
    """Post ``{"text": text}`` to the configured webhook.

    Returns:
        True if the webhook accepted it; False if none is configured or delivery failed (logged).
    """
    if not settings.notify_webhook_url:
        return False
    request = urllib.request.Request(
        settings.notify_webhook_url, data=json.dumps({"text": text}).encode(), method="POST",
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            response.read()
    except (urllib.error.URLError, OSError) as exc:  # HTTPError is a URLError
        logger.warning("Notification not delivered to %s: %s (%s)", settings.notify_webhook_url, exc, text[:200])
        return False
    return True
