"""Errors of the config generator: every problem found is collected, then raised together."""


class ConfigError(Exception):
    """Bad manifests, pillar or host facts. ``messages``: one line per problem, each naming the
    file (``manifest <path>`` or ``pillar envoy:<section>``), the field path and what is allowed."""

    def __init__(self, messages):
        self.messages = list(messages)
        super().__init__("\n".join(self.messages))


class Problems:
    """Collects messages (``schema.Where`` formats them) so one run reports every problem."""

    def __init__(self):
        self.messages = []

    def raise_if_any(self):
        if self.messages:
            raise ConfigError(self.messages)

    def __bool__(self):
        return bool(self.messages)
