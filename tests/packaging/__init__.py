"""Tests of what the package installs around the daemon: the systemd unit and the D-Bus policy."""
