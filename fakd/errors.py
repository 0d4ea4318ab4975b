"""The one exception type for mistakes a user can fix."""

from __future__ import annotations


class UserError(Exception):
    """A mistake the user can fix (bad value, missing file, unknown name): one line from the CLI, exit 2."""

    def __init__(self, message: str, *, file: str | None = None, key: str | None = None) -> None:
        self.file, self.key, self.message = file, key, message
        super().__init__(self.format())

    def format(self) -> str:
        where = ": ".join(p for p in (self.file, self.key) if p)
        return f"{where}: {self.message}" if where else self.message

    def located(self, file: str | None = None, key_prefix: str | None = None) -> UserError:
        """The same error with the file (and a key prefix) filled in."""
        key = self.key
        if key_prefix:
            key = f"{key_prefix}.{key}" if key else key_prefix
        return UserError(self.message, file=self.file or file, key=key)
