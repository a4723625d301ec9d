"""The notifier: every notification the line publishes (`shared.bus.publish`) sent to people through
Apprise (Telegram, e-mail, Slack, a webhook...), from its own process so sending never slows trading.
docs/operations.md, "Notifications"."""
