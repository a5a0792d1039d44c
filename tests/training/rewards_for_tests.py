"""A user reward, imported by name (``module:function``) like a team's own reward would be."""


def shorter_is_better(completions, **_):
    """Rewards short completions: varies from the first step on, even for a random model."""
    return [1.0 / (1.0 + len(c)) for c in completions]
