"""The exception tree: what the user sees apart from what is logged.

Like JupyterHub's ``SpawnException``: every error carries a plain-words
``message`` for the user (one line of cause), an optional ``hint`` (what to
do), a ``log_message`` with details for the operator, a ``status_code`` for
the event stream / HTTP answer and a short ``reason`` label for metrics.
Library code raises these; only the CLI exits and only the web layer turns
them into responses.  Anything that is *not* a :class:`BinderboxError`
reaching the top is a bug: it is logged with its traceback and the user
gets a generic message.
"""

from __future__ import annotations

from .events import Failed


class BinderboxError(Exception):
    """Base of all errors a user can act on."""

    status_code: int = 500
    reason: str = "error"

    def __init__(
        self,
        message: str,
        *,
        hint: str = "",
        log_message: str | None = None,
        status_code: int | None = None,
        reason: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.log_message = log_message or message
        if status_code is not None:
            self.status_code = status_code
        if reason is not None:
            self.reason = reason

    @property
    def user_message(self) -> str:
        """The cause plus the hint, as shown to the user."""
        return f"{self.message} {self.hint}".strip() if self.hint else self.message

    def to_event(self) -> Failed:
        """This error as the ``failed`` event that ends a stream."""
        return Failed(message=self.user_message, status_code=self.status_code, reason=self.reason)


class SpecError(BinderboxError):
    """The spec or URL cannot be parsed."""

    status_code = 400
    reason = "bad_spec"


class UnknownProvider(SpecError):
    """No provider has this prefix."""

    status_code = 404
    reason = "unknown_provider"


class SpecNotAllowed(BinderboxError):
    """The operator's banned/allowed patterns refuse this spec, or a local path/URL."""

    status_code = 403
    reason = "banned"


class RepositoryNotFound(BinderboxError):
    """The repository cannot be reached or does not exist."""

    status_code = 404
    reason = "repo_not_found"


class HostUnreachable(RepositoryNotFound):
    """The repository's server could not be connected to (no name, refused, timed out):
    not a missing repository."""

    status_code = 503
    reason = "host_unreachable"


class RefNotFound(BinderboxError):
    """The repository exists but the ref does not."""

    status_code = 404
    reason = "ref_not_found"


class FetchError(BinderboxError):
    """Fetching the content failed after the ref was resolved."""

    status_code = 500
    reason = "fetch"


class EnvironmentConfigError(BinderboxError):
    """The repository's environment files are contradictory or malformed."""

    status_code = 400
    reason = "bad_config"


class UnsupportedEnvironment(EnvironmentConfigError):
    """The repository asks for an environment kind we do not build yet."""

    reason = "unsupported"


class PythonVersionUnavailable(EnvironmentConfigError):
    """No interpreter for the requested Python version."""

    reason = "python_version"


class BuildError(BinderboxError):
    """The build ran and failed."""

    status_code = 500
    reason = "build"


class RequirementsUnsatisfiable(BuildError):
    """The requirements cannot be resolved or installed."""

    reason = "requirements"


class PostBuildFailed(BuildError):
    """The repository's postBuild script exited non-zero."""

    reason = "postbuild"


class BuildTimeout(BuildError):
    """The build ran longer than the configured limit."""

    status_code = 504
    reason = "build_timeout"


class QuotaExceeded(BinderboxError):
    """Too many sessions for this repository or in total."""

    status_code = 429
    reason = "quota"


class LaunchError(BinderboxError):
    """The session could not be started."""

    status_code = 500
    reason = "launch"


class DataError(BinderboxError):
    """A dataset could not be provisioned."""

    status_code = 500
    reason = "data"


class CondaUnsolvable(RequirementsUnsatisfiable):
    """The conda specs cannot be solved together from their channels."""

    reason = "conda_solve"


class CondaPackageNotFound(CondaUnsolvable):
    """A conda spec names a package that no channel of the environment has."""

    reason = "conda_package"


class CondaChannelError(BuildError):
    """A conda channel is refused by the operator's policy, missing, or unreachable."""

    reason = "conda_channel"


class CondaFetchError(BuildError):
    """A conda package could not be downloaded, or did not match its hash."""

    reason = "conda_fetch"
