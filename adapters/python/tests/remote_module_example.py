"""A module sent whole by test_gateway.test_remote_exec_module."""

if __name__ == "__channelexec__":
    channel.send(__name__)  # noqa: F821 -- the worker provides `channel`
